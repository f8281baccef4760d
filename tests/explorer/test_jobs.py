import threading
import time

import pytest

from explorer.jobs import CANCELLED, DONE, ERROR, JobRunner
from influence_core.errors import DataError


def _steps(n, gate=None, sleep=0.0):
    def fn(progress):
        for i in range(n):
            if gate is not None:
                gate.wait(5)
            time.sleep(sleep)
            progress(i + 1, n, "step")
        return "ok"

    return fn


def test_job_runs_to_completion_with_progress():
    runner = JobRunner()
    job = runner.start(_steps(4), key="a", name="Four steps")
    assert job.wait(5)
    assert job.status == DONE and job.result == "ok"
    assert job.fraction == 1.0
    assert job.message == "step (4/4)"
    assert job.elapsed >= 0


def test_same_key_while_running_returns_the_same_job():
    gate = threading.Event()
    runner = JobRunner()
    first = runner.start(_steps(2, gate), key="k")
    second = runner.start(_steps(2), key="k")
    assert first is second
    assert [j.key for j in runner.running()] == ["k"]
    gate.set()
    assert first.wait(5)
    third = runner.start(_steps(1), key="k")
    assert third is not first
    assert third.wait(5) and runner.get("k") is third


def test_cancel_stops_at_next_progress_report():
    gate = threading.Event()
    runner = JobRunner()
    job = runner.start(_steps(100, gate), key="c")
    job.cancel()
    gate.set()
    assert job.wait(5)
    assert job.status == CANCELLED
    assert job.result is None


def test_influence_error_message_is_kept_and_other_errors_are_generic():
    runner = JobRunner()

    def bad_data(progress):
        raise DataError("The test slice is empty: widen it in the sidebar.")

    def bug(progress):
        raise KeyError("secret internals")

    job = runner.start(bad_data, key="d", name="Score")
    job.wait(5)
    assert job.status == ERROR and job.error == "The test slice is empty: widen it in the sidebar."
    job = runner.start(bug, key="e", name="Score")
    job.wait(5)
    assert job.status == ERROR
    assert "secret" not in job.error and "KeyError" in job.error
    assert "secret internals" in job.details


def test_spans_map_stages_into_one_monotonic_fraction():
    seen = []
    runner = JobRunner()

    def staged(progress):
        first, second = progress.span(0.0, 0.25), progress.span(0.25, 1.0)
        first(1, 1, "fine-tune")
        seen.append(runner.get("s").fraction)
        second(1, 2, "score")
        seen.append(runner.get("s").fraction)
        first(0, 1, "late report")  # never moves the bar backwards
        seen.append(runner.get("s").fraction)
        return 1

    job = runner.start(staged, key="s")
    job.wait(5)
    assert seen == pytest.approx([0.25, 0.625, 0.625])


def test_forget_keeps_running_jobs():
    gate = threading.Event()
    runner = JobRunner()
    job = runner.start(_steps(1, gate), key="f")
    runner.forget("f")
    assert runner.get("f") is job
    gate.set()
    job.wait(5)
    runner.forget("f")
    assert runner.get("f") is None
