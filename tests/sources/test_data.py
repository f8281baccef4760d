"""Data sources, file formats, label alignment and text checks (offline, tiny)."""

from __future__ import annotations

import io
import time

import numpy as np
import pandas as pd
import pytest

from influence_core.errors import DataError
from influence_core.sources.data import (
    PRESET_DATASETS,
    DataSource,
    align_labels,
    check_texts,
    load_table,
    read_table,
    select_columns,
)
from tests.data_fixtures import isolated_cache, minilm_tokenizer, tiny_corpus  # noqa: F401

NAMES = ["negative", "positive"]


def _write(table: pd.DataFrame, path, fmt: str) -> None:
    if fmt == "csv":
        table.to_csv(path, index=False)
    elif fmt == "tsv":
        table.to_csv(path, sep="\t", index=False)
    elif fmt == "parquet":
        table.to_parquet(path)
    else:
        table.to_json(path, orient="records", lines=True)


@pytest.mark.parametrize("fmt", ["csv", "tsv", "parquet", "jsonl"])
def test_every_file_format_loads_with_column_mapping(tmp_path, fmt):
    table = tiny_corpus().rename(columns={"text": "review", "label": "sentiment"})
    path = tmp_path / f"reviews.{fmt}"
    _write(table, path, fmt)
    loaded = load_table(DataSource("file", str(path), text_col="review", label_col="sentiment"))
    assert list(loaded.columns[:2]) == ["text", "label"]
    assert {"id", "split", "planted_error"} <= set(loaded.columns)
    assert loaded["text"].tolist() == table["review"].tolist()
    assert loaded["label"].tolist() == table["sentiment"].tolist()


def test_read_table_from_an_uploaded_buffer_and_gzip(tmp_path):
    table = tiny_corpus()
    buffer = io.BytesIO(table.to_csv(index=False).encode("utf-8"))
    assert read_table(buffer, filename="upload.CSV")["text"].tolist() == table["text"].tolist()
    path = tmp_path / "reviews.csv.gz"
    table.to_csv(path, index=False)
    assert len(read_table(path)) == len(table)


def test_text_cells_like_na_stay_text(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("text,label\nNA,0\nnull,1\n")
    assert read_table(path)["text"].tolist() == ["NA", "null"]


def test_read_table_errors_are_clear(tmp_path):
    with pytest.raises(DataError, match="unsupported file type"):
        read_table(tmp_path / "reviews.xlsx")
    with pytest.raises(DataError, match="no such file"):
        read_table(tmp_path / "missing.csv")
    bad = tmp_path / "latin.csv"
    bad.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_table(bad)


def test_missing_column_lists_the_columns():
    table = pd.DataFrame({"sentence": ["good"], "label": [1]})
    with pytest.raises(DataError, match="no text column 'text'.*sentence, label. Choose the text column in the column "
                                         "mapping"):
        select_columns(table, "text", "label")
    with pytest.raises(DataError, match="no label column 'y'.*Name the label column with --label-col.$"):
        select_columns(table, "sentence", "y", options={"text": "--text-col", "label": "--label-col"})


def test_select_columns_keeps_a_clashing_column():
    table = pd.DataFrame({"text": ["meta"], "review": ["good"], "y": [1]})
    out = select_columns(table, "review", "y")
    assert out["text"].tolist() == ["good"] and out["text_original"].tolist() == ["meta"]


def test_demo_source(isolated_cache):  # noqa: F811
    train = load_table(DataSource("demo", split="train"))
    test = load_table(DataSource("demo", split="test"))
    assert len(train) == 48 and len(test) == 16
    assert train["planted_error"].sum() == 2
    with pytest.raises(DataError, match="splits test, train"):
        load_table(DataSource("demo", split="validation"))


def test_hub_dataset_refused_quickly_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.perf_counter()
    with pytest.raises(DataError, match="unreachable.*built-in demo"):
        load_table(PRESET_DATASETS["imdb"])
    assert time.perf_counter() - started < 10


def test_presets_include_the_usual_datasets():
    assert {"demo", "imdb", "sst2", "rotten_tomatoes"} <= set(PRESET_DATASETS)
    assert PRESET_DATASETS["sst2"].text_col == "sentence"


# --- labels -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        [0, 1, 1],
        ["0", "1", "1"],
        [0.0, 1.0, 1.0],
        [False, True, True],
        ["NEGATIVE", "Positive", "positive"],
        ["neg", "pos", "pos"],
        ["LABEL_0", "label_1", "LABEL_1"],
    ],
)
def test_align_labels_accepts_ids_and_names(raw):
    out = align_labels(pd.DataFrame({"text": ["a", "b", "c"], "label": raw}), NAMES)
    assert out["label"].tolist() == [0, 1, 1]
    assert out["label"].dtype == np.int64
    assert out["label_name"].tolist() == ["negative", "positive", "positive"]
    assert out["label_raw"].tolist() == raw


def test_align_labels_matches_names_to_upper_case_model_labels():
    out = align_labels(pd.DataFrame({"text": ["a", "b"], "label": ["positive", "negative"]}), ["NEGATIVE", "POSITIVE"])
    assert out["label"].tolist() == [1, 0]


def test_align_labels_uses_the_sources_class_names_for_ids():
    table = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    table.attrs["label_names"] = ["pos", "neg"]
    assert align_labels(table, ["NEGATIVE", "POSITIVE"])["label"].tolist() == [1, 0]


def test_three_classes_against_a_binary_model_is_explained():
    table = pd.DataFrame({"text": list("abc"), "label": ["negative", "neutral", "positive"]})
    with pytest.raises(DataError, match="'neutral'.*data has 3 classes, the model 2.*label filter"):
        align_labels(table, ["NEGATIVE", "POSITIVE"])
    with pytest.raises(DataError, match="3 classes"):
        align_labels(pd.DataFrame({"text": list("abc"), "label": [0, 1, 2]}), NAMES)


def test_label_id_mismatches_are_explained():
    with pytest.raises(DataError, match="start at 1"):
        align_labels(pd.DataFrame({"text": ["a", "b"], "label": [1, 2]}), NAMES)
    with pytest.raises(DataError, match="unlabelled"):
        align_labels(pd.DataFrame({"text": ["a", "b"], "label": [-1, -1]}), NAMES)
    with pytest.raises(DataError, match="generic names"):
        align_labels(pd.DataFrame({"text": ["a"], "label": ["positive"]}), ["LABEL_0", "LABEL_1"])
    with pytest.raises(DataError, match="1 of 2 rows have no label"):
        align_labels(pd.DataFrame({"text": ["a", "b"], "label": [1, None]}), NAMES)


# --- texts ------------------------------------------------------------------------------------------------


def test_check_texts_refuses_what_a_model_cannot_read(minilm_tokenizer):  # noqa: F811
    with pytest.raises(DataError, match="empty"):
        check_texts(pd.DataFrame({"text": [], "label": []}), minilm_tokenizer, 128)
    with pytest.raises(DataError, match="no text.*row 1"):
        check_texts(pd.DataFrame({"text": ["fine", "  "], "label": [0, 1]}), minilm_tokenizer, 128)
    with pytest.raises(DataError, match="no text"):
        check_texts(pd.DataFrame({"text": ["fine", None], "label": [0, 1]}), minilm_tokenizer, 128)
    with pytest.raises(DataError, match="not text but int"):
        check_texts(pd.DataFrame({"text": ["fine", 42], "label": [0, 1]}), minilm_tokenizer, 128)


def test_check_texts_notes_truncation_and_duplicates(minilm_tokenizer):  # noqa: F811
    huge = "what a film " * 50_000
    table = pd.DataFrame(
        {
            "text": ["great", huge, "dull plot", "dull plot", "great"],
            "label": [1, 1, 0, 1, 1],
            "row_id": [10, 11, 12, 13, 14],
        }
    )
    started = time.perf_counter()
    notes = check_texts(table, minilm_tokenizer, 64)
    assert time.perf_counter() - started < 5
    assert any("1 of 5 texts are longer than 64 tokens" in n and "row 11" in n for n in notes)
    assert any("2 duplicate rows: 2 texts appear more than once" in n for n in notes)
    assert any("1 duplicated text carries conflicting labels" in n and "row 12" in n for n in notes)
    assert check_texts(table.iloc[:1], minilm_tokenizer, 64) == []
