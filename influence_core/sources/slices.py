"""Which rows of a table to analyse: a small frozen selection with a stable hash.

Influence scores cost time per training and per test example, so one usually looks at a slice: the first
rows, a seeded random sample (optionally balanced across labels), one label, texts containing a keyword or
texts up to a length. Train and test slices are chosen independently, each a :class:`SliceSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from influence_core.cache import stable_hash
from influence_core.errors import DataError


@dataclass(frozen=True)
class SliceSpec:
    """A selection of rows, applied in this order: range, filters, sample.

    Attributes:
        start: first row of the range, inclusive: a position in the table given to :meth:`apply`.
        stop: end of the range, exclusive; ``None`` for the end of the table.
        sample: keep this many rows drawn at random (after the filters); ``None`` keeps all.
        seed: seed of the random sample: the same spec on the same table always gives the same rows.
        balanced: draw the sample as evenly as possible across labels (a label with too few rows gives all it
            has and the others make up the difference).
        labels: keep only rows whose label is one of these. Compared as text with the ``label`` column (ids
            ``0``/``"0"``) and, case-insensitively, with ``label_name`` when :func:`~influence_core.sources.data.align_labels`
            added it (``"positive"``). Empty keeps every label.
        keyword: keep only texts containing this string, case-insensitively (plain text, not a pattern).
        max_chars: keep only texts of at most this many characters.
    """

    start: int = 0
    stop: int | None = None
    sample: int | None = None
    seed: int = 0
    balanced: bool = False
    labels: tuple = ()
    keyword: str = ""
    max_chars: int | None = None

    def __post_init__(self) -> None:
        # Lists from a UI widget would make the spec unhashable; store them as a tuple of strings.
        if isinstance(self.labels, (str, int)):
            object.__setattr__(self, "labels", (self.labels,))
        object.__setattr__(self, "labels", tuple(str(label) for label in self.labels))
        object.__setattr__(self, "keyword", str(self.keyword or ""))
        if int(self.start) < 0:
            raise DataError(f"the slice start must be >= 0, not {self.start}")
        if self.stop is not None and int(self.stop) < int(self.start):
            raise DataError(f"the slice stop ({self.stop}) is before its start ({self.start})")
        if self.sample is not None and int(self.sample) < 1:
            raise DataError(f"the sample size must be at least 1, not {self.sample}")
        if self.max_chars is not None and int(self.max_chars) < 1:
            raise DataError(f"the maximum text length must be at least 1 character, not {self.max_chars}")

    def key(self) -> str:
        """A short hash, the same in every process: a cache key for scores computed on this slice."""
        return stable_hash(self)

    def replace(self, **changes: object) -> SliceSpec:
        """A copy with some fields changed."""
        return replace(self, **changes)

    def describe(self) -> str:
        """One line for the UI, e.g. ``rows 0-500, label positive, 'plot', <= 300 chars, 100 at random (seed 0)``."""
        parts = []
        if self.start or self.stop is not None:
            parts.append(f"rows {self.start}-{'end' if self.stop is None else self.stop}")
        if self.labels:
            parts.append(f"label {' or '.join(self.labels)}")
        if self.keyword:
            parts.append(f"containing {self.keyword!r}")
        if self.max_chars is not None:
            parts.append(f"<= {self.max_chars} chars")
        if self.sample is not None:
            parts.append(f"{self.sample} at random{' balanced' if self.balanced else ''} (seed {self.seed})")
        return ", ".join(parts) or "all rows"

    def apply(self, df: pd.DataFrame) -> pd.DataFrame:
        """The selected rows of ``df`` in table order, with a fresh 0..n-1 index.

        Adds ``row_id`` (position in ``df``) unless ``df`` already has one, so scores on a slice can always be
        traced back to the full table. Raises :class:`DataError` when a step leaves no rows, naming the step.
        """
        table = df if "row_id" in df.columns else df.assign(row_id=np.arange(len(df), dtype=np.int64))
        if len(table) == 0:
            raise DataError("the data is empty: there are no rows to slice")
        stop = len(table) if self.stop is None else min(int(self.stop), len(table))
        table = table.iloc[int(self.start) : stop]
        _require_rows(
            table,
            f"rows {self.start}-{'end' if self.stop is None else self.stop} are outside the table's {len(df)} rows",
        )
        if self.labels:
            table = table[self._label_mask(table)]
            _require_rows(table, f"no row has label {' or '.join(self.labels)}")
        if self.keyword:
            needle = self.keyword.casefold()
            table = table[table["text"].astype(str).str.casefold().str.contains(needle, regex=False).to_numpy()]
            _require_rows(table, f"no text contains {self.keyword!r}")
        if self.max_chars is not None:
            table = table[(table["text"].astype(str).str.len() <= int(self.max_chars)).to_numpy()]
            _require_rows(table, f"no text is at most {self.max_chars} characters long")
        if self.sample is not None and (self.balanced or int(self.sample) < len(table)):
            table = table.iloc[np.sort(self._sample_positions(table))]
        return table.reset_index(drop=True)

    def _label_mask(self, table: pd.DataFrame) -> np.ndarray:
        wanted = set(self.labels)
        mask = np.asarray(table["label"].astype(str).isin(wanted), dtype=bool)
        if "label_name" in table.columns:
            folded = {label.casefold() for label in wanted}
            mask = mask | np.asarray(table["label_name"].astype(str).str.casefold().isin(folded), dtype=bool)
        return mask

    def _sample_positions(self, table: pd.DataFrame) -> np.ndarray:
        """Positions in ``table`` of the sample; shape ``[min(sample, len(table))]``, unsorted."""
        rng = np.random.default_rng(int(self.seed))
        size = min(int(self.sample), len(table))
        if not self.balanced:
            return rng.choice(len(table), size=size, replace=False)
        labels = table["label"].astype(str).to_numpy()
        classes = sorted(set(labels.tolist()))
        members = {c: rng.permutation(np.flatnonzero(labels == c)) for c in classes}
        quotas = _fair_quotas([len(members[c]) for c in classes], size)
        return np.concatenate([members[c][:q] for c, q in zip(classes, quotas, strict=True)])


def _fair_quotas(available: list[int], total: int) -> list[int]:
    """Split ``total`` as evenly as possible over groups of the given sizes, never taking more than a group has."""
    quotas = [0] * len(available)
    remaining = total
    open_groups = [i for i, n in enumerate(available) if n > 0]
    while remaining > 0 and open_groups:
        share, extra = divmod(remaining, len(open_groups))
        for rank, i in enumerate(list(open_groups)):
            take = min(share + (1 if rank < extra else 0), available[i] - quotas[i])
            quotas[i] += take
            remaining -= take
        open_groups = [i for i in open_groups if quotas[i] < available[i]]
    return quotas


def _require_rows(table: pd.DataFrame, message: str) -> None:
    if len(table) == 0:
        raise DataError(f"the slice selects no rows: {message}")


__all__ = ["SliceSpec"]
