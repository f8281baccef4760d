"""The Mislabel finder's tables and exports: ranks, grading against known mislabels, the datasets zip."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pandas as pd
import pytest

from explorer import mislabels
from explorer.marks import cleaned_dataset, flag_list
from influence_core.training.retrain import read_flags


@pytest.fixture
def train():
    return pd.DataFrame({"row_id": [10, 11, 12, 13, 14], "text": ["a", "b good", "c", "d ünï", "e"],
                         "label": [0, 1, 1, 0, 1], "planted_error": [0, 1, 0, "true", "False"]})


def test_ranks_put_the_highest_score_first_ties_in_row_order_and_nan_last():
    scores = np.array([0.5, np.nan, 2.0, 0.5, -1.0])
    assert mislabels.suspicion_order(scores).tolist() == [2, 0, 3, 4, 1]
    ranks = mislabels.signal_ranks({"s": scores, "t": -np.arange(5.0)})
    assert ranks["s"].tolist() == [2, 5, 1, 3, 4]
    assert ranks["t"].tolist() == [1, 2, 3, 4, 5]


def test_known_mislabels_from_a_column_or_from_the_marks(train):
    assert mislabels.known_mislabels(train, "planted_error").tolist() == [False, True, False, True, False]
    marks = {11: {"state": "fine"}, 12: {"state": "mislabeled"}, 14: {"state": "relabel", "new_label": 0},
             99: {"state": "mislabeled"}}
    assert mislabels.known_mislabels(train, "(my marks)", marks).tolist() == [False, False, True, False, True]
    assert mislabels.mark_counts(train, marks) == (1, 1)  # row 99 is not in this slice


def test_ranking_quality_summary_matches_the_curves():
    truth = np.array([1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)  # 3 of 12; top 10% is 2 rows
    perfect = truth.astype(float) + np.linspace(0, 0.1, 12)
    backwards = -perfect
    curves, summary = mislabels.ranking_quality({"perfect_one": perfect, "backwards": backwards}, truth)
    assert summary["ranking"].tolist() == ["perfect one", "backwards"]
    assert summary["precision at 3"].tolist() == [1.0, 0.0]
    assert summary["recall at 2 (top 10%)"].tolist() == pytest.approx([2 / 3, 0.0])
    assert summary["reviews to inspect for half of them"].tolist() == [2, 11]
    assert len(curves) == 24
    with pytest.raises(ValueError):
        mislabels.ranking_quality({"perfect": perfect}, np.zeros(12, dtype=bool))


def test_datasets_zip_loads_back_as_the_same_tables(train, tmp_path):
    from datasets import load_from_disk

    marks = {11: {"state": "mislabeled"}, 13: {"state": "relabel", "new_label": 1}}
    names = ["negative", "positive"]
    scores = {"combined": np.array([0.1, 0.9, 0.2, 0.8, np.nan]), "oof_loss": np.arange(5.0)}
    tables = {"cleaned": cleaned_dataset(train, marks, names), "flags": flag_list(train, marks, names),
              "scores": mislabels.signal_table(train, scores, ["w"] * 5)}
    zipfile.ZipFile(io.BytesIO(mislabels.datasets_zip(tables))).extractall(tmp_path)
    for name, table in tables.items():
        loaded = load_from_disk(str(tmp_path / name)).to_pandas()
        assert list(loaded.columns) == list(table.columns)
        assert len(loaded) == len(table)
        for column in table.columns:
            pd.testing.assert_series_equal(loaded[column].astype(table[column].dtype), table[column], check_names=False,
                                           check_index=False)
    flags = load_from_disk(str(tmp_path / "flags")).to_pandas()
    assert flags["mark"].tolist() == ["mislabeled", "relabel"] and flags["new_label"].isna().tolist() == [True, False]
    # the CSV download keeps a blank new_label, which the CLI's --flags reads back
    csv = tables["flags"].to_csv(index=False)
    assert csv.splitlines()[1:] == ["11,b good,1,positive,mislabeled,,", "13,d ünï,0,negative,relabel,1,positive"]
    assert read_flags(pd.read_csv(io.StringIO(csv))) == {11: "mislabeled", 13: {"state": "relabel", "new_label": 1}}
    cleaned = load_from_disk(str(tmp_path / "cleaned")).to_pandas()
    assert cleaned["row_id"].tolist() == [10, 12, 13, 14] and cleaned["label"].tolist() == [0, 1, 1, 1]


def test_the_fingerprint_changes_with_any_value_and_only_then(train):
    first = {"cleaned": train, "scores": train.assign(score=[0.1, 0.2, np.nan, 0.4, 0.5])}
    same = {"cleaned": train.copy(), "scores": train.assign(score=[0.1, 0.2, np.nan, 0.4, 0.5])}
    assert mislabels.tables_fingerprint(first) == mislabels.tables_fingerprint(same)
    changed = {"cleaned": train.assign(label=[0, 1, 1, 0, 0]), "scores": first["scores"]}
    assert mislabels.tables_fingerprint(changed) != mislabels.tables_fingerprint(first)
    renamed = {"cleaned": train, "other": first["scores"]}
    assert mislabels.tables_fingerprint(renamed) != mislabels.tables_fingerprint(first)
