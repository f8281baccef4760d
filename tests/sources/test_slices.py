"""Slices: deterministic, hashable, explained when empty."""

from __future__ import annotations

import pandas as pd
import pytest

from influence_core.errors import DataError
from influence_core.sources.data import align_labels
from influence_core.sources.slices import SliceSpec
from tests.data_fixtures import tiny_corpus


@pytest.fixture
def table() -> pd.DataFrame:
    return align_labels(tiny_corpus(n_train=90, n_test=10), ["negative", "positive"])


def test_default_slice_keeps_everything_and_adds_row_id(table):
    out = SliceSpec().apply(table)
    assert len(out) == len(table) and out["row_id"].tolist() == list(range(len(table)))


def test_index_range(table):
    out = SliceSpec(start=10, stop=20).apply(table)
    assert out["row_id"].tolist() == list(range(10, 20))
    assert out.index.tolist() == list(range(10))
    assert len(SliceSpec(start=95, stop=1000).apply(table)) == 5


def test_random_sample_is_deterministic_and_seeded(table):
    first = SliceSpec(sample=20, seed=3).apply(table)["row_id"].tolist()
    assert first == SliceSpec(sample=20, seed=3).apply(table)["row_id"].tolist()
    assert first != SliceSpec(sample=20, seed=4).apply(table)["row_id"].tolist()
    assert first == sorted(first) and len(set(first)) == 20


def test_balanced_sample_evens_out_labels(table):
    skewed = pd.concat([table[table["label"] == 1], table[table["label"] == 0].iloc[:5]])
    out = SliceSpec(sample=20, balanced=True).apply(skewed)
    counts = out["label"].value_counts().to_dict()
    assert counts == {0: 5, 1: 15}  # the small class gives all it has, the other makes up the rest
    even = SliceSpec(sample=21, balanced=True, seed=1).apply(table)["label"].value_counts().to_dict()
    assert sorted(even.values()) == [10, 11]


def test_label_filter_by_id_or_name(table):
    by_id = SliceSpec(labels=(1,)).apply(table)
    by_name = SliceSpec(labels=["Positive"]).apply(table)
    assert by_id["row_id"].tolist() == by_name["row_id"].tolist()
    assert set(by_id["label"]) == {1}


def test_keyword_and_length_filters(table):
    out = SliceSpec(keyword="FILM").apply(table)
    expected = [i for i, text in enumerate(table["text"]) if "film" in text.lower()]  # case-insensitive, by hand
    assert out["row_id"].tolist() == expected and len(expected) == 17
    short = SliceSpec(max_chars=34).apply(table)
    assert all(len(t) <= 34 for t in short["text"]) and len(short) < len(table)


def test_filters_then_sample_keeps_row_ids_of_the_full_table(table):
    spec = SliceSpec(start=20, labels=["negative"], sample=5, seed=7)
    out = spec.apply(table)
    assert len(out) == 5 and all(row >= 20 and table.loc[row, "label"] == 0 for row in out["row_id"])
    again = SliceSpec(sample=3).apply(out)  # an existing row_id column is kept, not renumbered
    assert set(again["row_id"]) <= set(out["row_id"])


def test_spec_is_a_frozen_hashable_value_with_a_stable_key():
    spec = SliceSpec(sample=10, labels=["positive"])
    assert spec == SliceSpec(sample=10, labels=("positive",))
    assert hash(spec) == hash(SliceSpec(sample=10, labels=("positive",)))
    assert spec.key() == SliceSpec(sample=10, labels=("positive",)).key()
    assert spec.key() != spec.replace(seed=1).key()
    assert len(spec.key()) == 16
    with pytest.raises(AttributeError):
        spec.seed = 2  # type: ignore[misc]
    assert "10 at random" in spec.describe() and SliceSpec().describe() == "all rows"


def test_empty_results_and_bad_specs_are_explained(table):
    with pytest.raises(DataError, match="no text contains 'zebra'"):
        SliceSpec(keyword="zebra").apply(table)
    with pytest.raises(DataError, match="no row has label neutral"):
        SliceSpec(labels=["neutral"]).apply(table)
    with pytest.raises(DataError, match="stop"):
        SliceSpec(start=5, stop=2)
    with pytest.raises(DataError, match="sample size"):
        SliceSpec(sample=0)
