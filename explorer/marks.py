"""A reviewer's verdicts on training reviews, kept on disk, and the cleaned dataset they give."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence

import pandas as pd

from influence_core.cache import cache_dir, stable_hash
from influence_core.errors import DataError
from influence_core.sources.data import DataSource

# ------------------------------------------------------------------------------------------- marks
MARK_STATES = ("mislabeled", "fine", "relabel")


class MarkStore:
    """A reviewer's verdicts on training reviews, persisted as JSON (survives reruns and restarts).

    Stored under ``cache_dir("marks", key)/marks.json`` where ``key`` names the training data source, and
    indexed by ``row_id`` (the review's position in the full table): marks stay valid when the slice, the
    method or the damping change, since they judge a review's label, not a score.
    """

    def __init__(self, key: str) -> None:
        self.path = cache_dir("marks", key) / "marks.json"
        self._lock = threading.Lock()

    @classmethod
    def for_data(cls, source: DataSource) -> MarkStore:
        return cls(stable_hash({"marks": 1, "data": source}))

    def load(self) -> dict[int, dict]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {int(k): v for k, v in raw.items() if isinstance(v, dict) and v.get("state") in MARK_STATES}

    def set(self, row_id: int, state: str, new_label: int | None = None) -> None:
        if state not in MARK_STATES:
            raise DataError(f"unknown mark {state!r}: use {', '.join(MARK_STATES)}")
        if state == "relabel" and new_label is None:
            raise DataError("choose the new label for a relabelled review")
        with self._lock:
            marks = self.load()
            marks[int(row_id)] = {"state": state, "new_label": None if new_label is None else int(new_label), "time": time.time()}
            self._write(marks)

    def clear(self, row_id: int | None = None) -> None:
        """Forget the mark of ``row_id``, or every mark when ``row_id`` is None."""
        with self._lock:
            marks = {}
            if row_id is not None:
                marks = self.load()
                marks.pop(int(row_id), None)
            self._write(marks)

    def _write(self, marks: dict[int, dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in sorted(marks.items())}, indent=1), encoding="utf-8")
        tmp.replace(self.path)


def cleaned_dataset(train: pd.DataFrame, marks: Mapping[int, dict], label_names: Sequence[str]) -> pd.DataFrame:
    """The training reviews after review: ``mislabeled`` rows dropped, ``relabel`` rows given their new label.

    Columns ``row_id``, ``text``, ``label`` (int), ``label_name``, ``original_label``, ``review``.
    """
    rows = []
    for row in train.itertuples(index=False):
        mark = marks.get(int(row.row_id))
        state = mark["state"] if mark else ""
        if state == "mislabeled":
            continue
        label = int(mark["new_label"]) if state == "relabel" and mark.get("new_label") is not None else int(row.label)
        rows.append(
            {
                "row_id": int(row.row_id),
                "text": row.text,
                "label": label,
                "label_name": label_names[label] if 0 <= label < len(label_names) else str(label),
                "original_label": int(row.label),
                "review": state,
            }
        )
    return pd.DataFrame(rows, columns=["row_id", "text", "label", "label_name", "original_label", "review"])


def flag_list(train: pd.DataFrame, marks: Mapping[int, dict], label_names: Sequence[str]) -> pd.DataFrame:
    """Every marked review: ``row_id``, ``text``, ``label``, ``label_name``, ``mark``, ``new_label``, ``new_label_name``."""
    by_id = train.set_index("row_id")
    rows = []
    for row_id, mark in sorted(marks.items()):
        if row_id not in by_id.index:
            continue
        label = int(by_id.at[row_id, "label"])
        new = mark.get("new_label")
        rows.append(
            {
                "row_id": row_id,
                "text": by_id.at[row_id, "text"],
                "label": label,
                "label_name": label_names[label] if 0 <= label < len(label_names) else str(label),
                "mark": mark["state"],
                "new_label": "" if new is None else int(new),
                "new_label_name": "" if new is None else label_names[int(new)],
            }
        )
    return pd.DataFrame(rows, columns=["row_id", "text", "label", "label_name", "mark", "new_label", "new_label_name"])
