"""A reviewer's verdicts on training reviews, kept on disk, and the cleaned dataset they give."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pandas as pd

from influence_core.cache import cache_dir, stable_hash
from influence_core.errors import DataError
from influence_core.sources.data import DataSource

try:  # POSIX: one writer at a time across processes too (two servers on one cache, a CLI run)
    import fcntl
except ImportError:  # pragma: no cover - Windows: threads of this process are still serialised
    fcntl = None

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------- marks
MARK_STATES = ("mislabeled", "fine", "relabel")

# one lock per marks file for the whole process: a MarkStore is rebuilt on every rerun of every session
_PATH_LOCKS: dict[str, threading.Lock] = {}
_PATH_LOCKS_GUARD = threading.Lock()


def _path_lock(path: Path) -> threading.Lock:
    key = os.path.abspath(path)
    with _PATH_LOCKS_GUARD:
        return _PATH_LOCKS.setdefault(key, threading.Lock())


class MarksFileError(DataError):
    """The marks file could not be read. It was moved aside to ``kept`` (never overwritten); marking starts afresh."""

    def __init__(self, message: str, kept: Path | None = None) -> None:
        super().__init__(message)
        self.kept = kept


class MarkStore:
    """A reviewer's verdicts on training reviews, persisted as JSON (survives reruns and restarts).

    Stored under ``cache_dir("marks", key)/marks.json`` where ``key`` names the training data source, and
    indexed by ``row_id`` (the review's position in the full table): marks stay valid when the slice, the
    method or the damping change, since they judge a review's label, not a score.

    Safe with several sessions and processes: every read-modify-write holds a per-file lock of the process and
    an ``flock`` on ``marks.json.lock``; writes are atomic (a unique temporary file, fsync, ``os.replace``). A
    file that cannot be parsed is moved aside to ``marks.json.corrupt-<time>`` and reported with
    :class:`MarksFileError`, never overwritten.
    """

    def __init__(self, key: str) -> None:
        self.path = cache_dir("marks", key) / "marks.json"
        self._lock = _path_lock(self.path)

    @classmethod
    def for_data(cls, source: DataSource) -> MarkStore:
        return cls(stable_hash({"marks": 1, "data": source}))

    def load(self) -> dict[int, dict]:
        """The marks by ``row_id`` (empty when none were saved).

        Raises MarksFileError when the file is unreadable; it has then been moved aside, so the next call
        returns the marks made since (none).
        """
        with self._locked():
            return self._read()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._lock:
            if fcntl is None:
                yield
                return
            with open(self.path.with_name(self.path.name + ".lock"), "a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self) -> dict[int, dict]:
        """The marks on disk (call with the lock held)."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as err:
            raise DataError(f"the saved marks cannot be read ({err.strerror or err}): {self.path}") from None
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError(f"expected an object, found {type(raw).__name__}")
            return {int(k): v for k, v in raw.items() if isinstance(v, dict) and v.get("state") in MARK_STATES}
        except (ValueError, TypeError) as err:
            kept = self._set_aside()
            log.warning("unreadable marks file %s (%s) moved to %s", self.path, err, kept)
            raise MarksFileError(
                f"The saved review marks could not be read ({type(err).__name__}: {err}). The file was kept as "
                f"{kept} and marking starts afresh; nothing in it was overwritten.", kept,
            ) from None

    def _set_aside(self) -> Path:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        count = 1
        while kept.exists():
            count += 1
            kept = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{count}")
        os.replace(self.path, kept)
        return kept

    def set(self, row_id: int, state: str, new_label: int | None = None) -> None:
        if state not in MARK_STATES:
            raise DataError(f"unknown mark {state!r}: use {', '.join(MARK_STATES)}")
        if state == "relabel" and new_label is None:
            raise DataError("choose the new label for a relabelled review")
        with self._locked():
            marks = self._read()
            marks[int(row_id)] = {"state": state, "new_label": None if new_label is None else int(new_label), "time": time.time()}
            self._write(marks)

    def clear(self, row_id: int | None = None) -> None:
        """Forget the mark of ``row_id``, or every mark when ``row_id`` is None."""
        with self._locked():
            marks = {}
            if row_id is not None:
                marks = self._read()
                marks.pop(int(row_id), None)
            self._write(marks)

    def _write(self, marks: dict[int, dict]) -> None:
        """Replace the file atomically (call with the lock held): readers see the old or the new marks, whole."""
        text = json.dumps({str(k): v for k, v in sorted(marks.items())}, indent=1)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}-{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
            folder = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)


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
    """Every marked review: ``row_id``, ``text``, ``label``, ``label_name``, ``mark``, ``new_label`` (nullable int,
    missing unless relabelled), ``new_label_name``."""
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
                "new_label": None if new is None else int(new),
                "new_label_name": "" if new is None else label_names[int(new)],
            }
        )
    frame = pd.DataFrame(rows, columns=["row_id", "text", "label", "label_name", "mark", "new_label", "new_label_name"])
    # nullable integers: blank in the CSV, null in a datasets/Arrow table (a mix of "" and ints cannot be converted)
    return frame.astype({"new_label": "Int64"})
