"""MarkStore: marks from many sessions (threads) and processes are all kept; an unreadable file is kept aside."""

from __future__ import annotations

import json
import multiprocessing
import threading

import pytest

from explorer.marks import MarksFileError, MarkStore
from influence_core.errors import DataError


def test_many_threads_marking_different_rows_all_kept():
    rows = range(40)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def session(offset):
        try:
            barrier.wait(10)
            for row in rows[offset::8]:
                # a fresh store per mark, as a page rerun builds one
                MarkStore("threads").set(row, "relabel" if row % 3 == 0 else "mislabeled", 1 if row % 3 == 0 else None)
                MarkStore("threads").load()
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=session, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    marks = MarkStore("threads").load()
    assert sorted(marks) == list(rows)
    assert marks[3] == {"state": "relabel", "new_label": 1, "time": marks[3]["time"]}
    assert marks[4]["state"] == "mislabeled"
    store = MarkStore("threads")
    assert not list(store.path.parent.glob("*.tmp")), "temporary files left behind"


def _mark_in_process(cache: str, start: int) -> None:
    import os

    os.environ["INFLUENCE_EXPLORER_CACHE"] = cache
    for row in range(start, start + 15):
        MarkStore("processes").set(row, "fine")


def test_processes_marking_at_once_all_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("INFLUENCE_EXPLORER_CACHE", str(tmp_path))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_mark_in_process, args=(str(tmp_path), start)) for start in (0, 15, 30)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert sorted(MarkStore("processes").load()) == list(range(45))


def test_clear_one_and_all():
    store = MarkStore("clear")
    store.set(1, "fine")
    store.set(2, "mislabeled")
    store.clear(1)
    assert list(store.load()) == [2]
    store.clear()
    assert store.load() == {}


def test_unknown_state_and_relabel_without_label_are_refused():
    store = MarkStore("refused")
    with pytest.raises(DataError):
        store.set(1, "maybe")
    with pytest.raises(DataError):
        store.set(1, "relabel")


@pytest.mark.parametrize("content", ['{"1": {"state": "fine", ', "[1, 2, 3]", "\x00\x01garbage"])
def test_a_corrupt_file_is_kept_aside_not_overwritten_and_reported(content):
    store = MarkStore(f"corrupt-{abs(hash(content))}")
    store.path.write_text(content, encoding="utf-8")
    with pytest.raises(MarksFileError) as caught:
        store.load()
    kept = caught.value.kept
    assert kept is not None and kept.name.startswith("marks.json.corrupt-")
    assert str(kept) in str(caught.value)
    assert kept.read_text(encoding="utf-8") == content  # kept as it was
    assert not store.path.exists()
    # marking starts afresh, and the kept copy is never touched
    assert store.load() == {}
    store.set(5, "fine")
    assert list(store.load()) == [5]
    assert kept.read_text(encoding="utf-8") == content


def test_a_mark_on_a_corrupt_file_does_not_overwrite_it():
    store = MarkStore("corrupt-on-set")
    store.set(1, "fine")
    store.path.write_text("{not json", encoding="utf-8")
    with pytest.raises(MarksFileError) as caught:
        store.set(2, "mislabeled")
    assert caught.value.kept.read_text(encoding="utf-8") == "{not json"
    store.set(2, "mislabeled")
    assert list(store.load()) == [2]
    assert json.loads(store.path.read_text(encoding="utf-8"))["2"]["state"] == "mislabeled"
    assert len(list(store.path.parent.glob("marks.json.corrupt-*"))) == 1
