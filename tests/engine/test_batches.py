"""Tokenization and length-sorted, padded batches, checked against the tokenizer and explicit lists."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from influence_core.engine.batches import Encoded, batches, encode, make_batch, num_batches
from influence_core.errors import DataError
from tests.conftest import LABELS, TEXTS


class WordTokenizer:
    """A whitespace tokenizer (word -> len(word)), no pad token and no token_type_ids, like some tokenizers."""

    pad_token_id = None

    def __call__(self, texts, truncation, max_length, padding):
        assert truncation and padding is False
        return {"input_ids": [[len(word) for word in text.split()][:max_length] for text in texts]}


def _expected_ids(tokenizer, text, max_length):
    """BERT-style truncation written out: keep [CLS] and the first tokens, then [SEP]."""
    full = tokenizer([text])["input_ids"][0]
    if len(full) <= max_length:
        return tuple(full)
    return tuple(full[: max_length - 1]) + (full[-1],)


@pytest.mark.parametrize("max_length", [4, 6, 64])
def test_encode_truncates_to_max_length(tokenizer, max_length):
    encoded = encode(tokenizer, TEXTS, LABELS, max_length)
    expected = [_expected_ids(tokenizer, text, max_length) for text in TEXTS]
    assert encoded.input_ids == tuple(expected)
    np.testing.assert_array_equal(encoded.lengths, [len(ids) for ids in expected])
    full_lengths = [len(tokenizer([text])["input_ids"][0]) for text in TEXTS]
    np.testing.assert_array_equal(encoded.lengths, np.minimum(full_lengths, max_length))
    assert encoded.lengths.dtype == np.int64
    assert len(encoded) == len(TEXTS)
    np.testing.assert_array_equal(encoded.labels, LABELS)
    assert encoded.labels.dtype == np.int64
    assert encoded.pad_id == tokenizer.pad_token_id == 0
    # MiniLM gives segment ids: one 0 per token.
    assert encoded.token_type_ids == tuple(tuple(0 for _ in ids) for ids in expected)


def test_encode_without_labels_marks_them_unknown(tokenizer):
    encoded = encode(tokenizer, TEXTS[:3], None, 16)
    np.testing.assert_array_equal(encoded.labels, [-1, -1, -1])


def test_encode_with_a_tokenizer_without_pad_or_segments():
    encoded = encode(WordTokenizer(), ["aa bbb c", "dddd"], [1, 0], max_length=2)
    assert encoded.input_ids == ((2, 3), (4,))
    assert encoded.token_type_ids is None
    assert encoded.pad_id == 0
    batch = make_batch(encoded, np.array([0, 1]))
    assert set(batch.inputs) == {"input_ids", "attention_mask"}


@pytest.mark.parametrize(
    ("texts", "labels", "message"),
    [
        ([], None, "no examples"),
        (["fine", 3], None, "row 1 is int"),
        (["fine", None], [0, 1], "row 1 is NoneType"),
        (["one", "two"], [0], "2 texts but 1 labels"),
        (["one", "two"], [0, 1, 1], "2 texts but 3 labels"),
    ],
)
def test_encode_rejects_bad_input(tokenizer, texts, labels, message):
    with pytest.raises(DataError, match=message):
        encode(tokenizer, texts, labels, 16)


def _encoded():
    """Hand-made examples of lengths 3, 5, 1, 5, 2, 4, 2 (ties on purpose)."""
    lengths = [3, 5, 1, 5, 2, 4, 2]
    ids = tuple(tuple(100 * (i + 1) + t for t in range(n)) for i, n in enumerate(lengths))
    types = tuple(tuple(t % 2 for t in range(n)) for n in lengths)
    return Encoded(ids, np.array([0, 1, 2, 0, 1, 2, 0]), types, pad_id=7), lengths


@pytest.mark.parametrize("batch_size", [1, 2, 3, 7, 10])
def test_batches_are_length_sorted_and_cover_every_index_once(batch_size):
    encoded, lengths = _encoded()
    result = list(batches(encoded, batch_size))
    assert len(result) == num_batches(len(lengths), batch_size)
    order = np.concatenate([b.index for b in result])
    # Decreasing length, ties in original order (stable sort): lengths 5, 5, 4, 3, 2, 2, 1.
    np.testing.assert_array_equal(order, [1, 3, 5, 0, 4, 6, 2])
    assert sorted(order.tolist()) == list(range(len(lengths)))
    assert [len(b) for b in result] == [min(batch_size, 7 - s) for s in range(0, 7, batch_size)]
    for batch in result:
        width = max(lengths[i] for i in batch.index)
        assert tuple(batch.inputs["input_ids"].shape) == (len(batch), width)
        np.testing.assert_array_equal(batch.labels.numpy(), encoded.labels[batch.index])


def test_make_batch_pads_with_pad_id_and_masks_padding():
    encoded, _ = _encoded()
    batch = make_batch(encoded, np.array([2, 1, 4]))
    expected_ids = [
        [300, 7, 7, 7, 7],
        [200, 201, 202, 203, 204],
        [500, 501, 7, 7, 7],
    ]
    expected_mask = [[1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    expected_types = [[0, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 1, 0, 0, 0]]
    assert batch.inputs["input_ids"].tolist() == expected_ids
    assert batch.attention_mask.tolist() == expected_mask
    assert batch.inputs["token_type_ids"].tolist() == expected_types
    assert batch.labels.tolist() == [2, 1, 1]
    assert batch.labels.dtype == torch.long
    assert batch.index.tolist() == [2, 1, 4]


def test_batches_of_encoded_text_reproduce_token_ids(tokenizer):
    encoded = encode(tokenizer, TEXTS, LABELS, 8)
    for batch in batches(encoded, 3):
        for row, i in enumerate(batch.index):
            n = int(batch.attention_mask[row].sum())
            assert n == encoded.lengths[i]
            assert tuple(batch.inputs["input_ids"][row, :n].tolist()) == encoded.input_ids[i]
            assert batch.inputs["input_ids"][row, n:].tolist() == [0] * (batch.attention_mask.shape[1] - n)


def test_subset_picks_rows_in_the_given_order():
    encoded, _ = _encoded()
    part = encoded.subset(np.array([4, 0, 4]))
    assert part.input_ids == (encoded.input_ids[4], encoded.input_ids[0], encoded.input_ids[4])
    assert part.token_type_ids == (encoded.token_type_ids[4], encoded.token_type_ids[0], encoded.token_type_ids[4])
    np.testing.assert_array_equal(part.labels, [1, 0, 1])
    np.testing.assert_array_equal(part.lengths, [2, 3, 2])
    assert part.pad_id == 7
    assert len(encoded.subset([])) == 0
    no_types = Encoded(encoded.input_ids, encoded.labels).subset([1])
    assert no_types.token_type_ids is None


def test_with_labels_replaces_labels_only():
    encoded, _ = _encoded()
    relabelled = encoded.with_labels([2, 2, 1, 1, 0, 0, 2])
    np.testing.assert_array_equal(relabelled.labels, [2, 2, 1, 1, 0, 0, 2])
    assert relabelled.labels.dtype == np.int64
    assert relabelled.input_ids == encoded.input_ids
    assert relabelled.token_type_ids == encoded.token_type_ids
    assert relabelled.pad_id == encoded.pad_id
    np.testing.assert_array_equal(encoded.labels, [0, 1, 2, 0, 1, 2, 0])  # the original is unchanged


@pytest.mark.parametrize("labels", [[0, 1], [0] * 8, 3])
def test_with_labels_rejects_a_wrong_count(labels):
    encoded, _ = _encoded()
    with pytest.raises(DataError, match="expected 7 labels"):
        encoded.with_labels(labels)


@pytest.mark.parametrize(("n", "size", "expected"), [(0, 4, 0), (1, 4, 1), (4, 4, 1), (5, 4, 2), (7, 1, 7), (9, 3, 3)])
def test_num_batches(n, size, expected):
    assert num_batches(n, size) == expected
    assert num_batches(n, size) == len(range(0, n, size))
