"""Tokenized examples and length-sorted, dynamically padded batches.

Every engine call tokenizes once, sorts examples by length (so a batch wastes little padding) and puts
results back in the caller's order. Results do not depend on the batch size or on padding: padded
positions are masked out of every statistic.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from influence_core.errors import DataError


@dataclass(frozen=True)
class Encoded:
    """Tokenized examples.

    Attributes:
        input_ids: One tuple of token ids per example (already truncated).
        labels: Integer labels, shape [n] (-1 where unknown).
        token_type_ids: Per-example segment ids, or None if the tokenizer gives none.
    """

    input_ids: tuple[tuple[int, ...], ...]
    labels: np.ndarray
    token_type_ids: tuple[tuple[int, ...], ...] | None = None
    pad_id: int = 0

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(ids) for ids in self.input_ids), dtype=np.int64, count=len(self))

    def with_labels(self, labels: Sequence[int] | np.ndarray) -> Encoded:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (len(self),):
            raise DataError(f"expected {len(self)} labels, got {labels.shape[0] if labels.ndim else 0}")
        return Encoded(self.input_ids, labels, self.token_type_ids, self.pad_id)

    def subset(self, indices: Sequence[int] | np.ndarray) -> Encoded:
        idx = [int(i) for i in indices]
        types = tuple(self.token_type_ids[i] for i in idx) if self.token_type_ids is not None else None
        return Encoded(tuple(self.input_ids[i] for i in idx), self.labels[idx], types, self.pad_id)


_TOKENIZER_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_TOKENIZER_LOCKS_GUARD = threading.Lock()


def tokenizer_lock(tokenizer) -> threading.RLock:
    """The one lock of ``tokenizer``. A fast tokenizer keeps its truncation and padding settings as state that
    each call sets, so two threads calling it with different settings (an engine truncating, ``check_texts``
    counting every token) get each other's; hold this lock around every call of a shared tokenizer."""
    with _TOKENIZER_LOCKS_GUARD:
        lock = _TOKENIZER_LOCKS.get(tokenizer)
        if lock is None:
            lock = _TOKENIZER_LOCKS[tokenizer] = threading.RLock()
        return lock


def encode(tokenizer, texts: Sequence[str], labels: Sequence[int] | np.ndarray | None, max_length: int) -> Encoded:
    """Tokenize ``texts`` (truncated to ``max_length`` tokens) and attach integer ``labels``."""
    texts = list(texts)
    if not texts:
        raise DataError("no examples: the selection is empty")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise DataError(f"text must be strings; row {bad[0]} is {type(texts[bad[0]]).__name__}")
    with tokenizer_lock(tokenizer):  # the truncation setting is the tokenizer's state, shared by every caller
        out = tokenizer(texts, truncation=True, max_length=max_length, padding=False)
    ids = tuple(tuple(int(t) for t in row) for row in out["input_ids"])
    types = None
    if "token_type_ids" in out and out["token_type_ids"] is not None:
        types = tuple(tuple(int(t) for t in row) for row in out["token_type_ids"])
    if labels is None:
        label_array = np.full(len(texts), -1, dtype=np.int64)
    else:
        label_array = np.asarray(labels, dtype=np.int64)
        if label_array.shape != (len(texts),):
            raise DataError(f"{len(texts)} texts but {label_array.size} labels")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return Encoded(ids, label_array, types, int(pad))


@dataclass
class Batch:
    """One padded batch. ``index`` are positions in the Encoded the batch came from."""

    index: np.ndarray
    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor

    @property
    def attention_mask(self) -> torch.Tensor:
        return self.inputs["attention_mask"]

    def __len__(self) -> int:
        return len(self.index)


def batches(encoded: Encoded, batch_size: int, device: torch.device | str = "cpu") -> Iterator[Batch]:
    """Yield padded batches in order of decreasing length (stable, so deterministic)."""
    order = np.argsort(-encoded.lengths, kind="stable")
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield make_batch(encoded, index, device)


def make_batch(encoded: Encoded, index: np.ndarray, device: torch.device | str = "cpu") -> Batch:
    width = max(len(encoded.input_ids[i]) for i in index)
    ids = torch.full((len(index), width), encoded.pad_id, dtype=torch.long)
    mask = torch.zeros((len(index), width), dtype=torch.long)
    types = torch.zeros((len(index), width), dtype=torch.long) if encoded.token_type_ids is not None else None
    for row, i in enumerate(index):
        n = len(encoded.input_ids[i])
        ids[row, :n] = torch.tensor(encoded.input_ids[i], dtype=torch.long)
        mask[row, :n] = 1
        if types is not None:
            types[row, :n] = torch.tensor(encoded.token_type_ids[i], dtype=torch.long)
    inputs = {"input_ids": ids.to(device), "attention_mask": mask.to(device)}
    if types is not None:
        inputs["token_type_ids"] = types.to(device)
    labels = torch.as_tensor(encoded.labels[index], dtype=torch.long, device=device)
    return Batch(np.asarray(index), inputs, labels)


def num_batches(n: int, batch_size: int) -> int:
    return (n + batch_size - 1) // batch_size


__all__ = ["Encoded", "Batch", "encode", "batches", "make_batch", "num_batches", "tokenizer_lock"]
