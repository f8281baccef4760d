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
    job = runner.start(_steps(4, sleep=0.02), key="a", name="Four steps")
    assert job.wait(5)
    assert job.status == DONE and job.result == "ok"
    assert job.fraction == 1.0
    assert job.message == "step (4/4)"
    # four steps of 20 ms: at least 80 ms, measured from start to finish and frozen once finished
    assert job.elapsed == job.finished_at - job.started_at
    assert 0.08 <= job.elapsed < 5
    frozen = job.elapsed
    time.sleep(0.02)
    assert job.elapsed == frozen


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


def test_finished_jobs_are_bounded_latest_kept_running_never_forgotten():
    gate = threading.Event()
    runner = JobRunner(max_finished=3)
    running = runner.start(_steps(1, gate), key="running")
    for i in range(6):
        runner.start(_steps(1), key=f"done-{i}").wait(5)
        time.sleep(0.01)  # distinct finish times
    runner.start(_steps(1), key="last").wait(5)
    assert runner.get("running") is running and running.running
    kept = [key for key in ("done-0", "done-1", "done-2", "done-3", "done-4", "done-5", "last") if runner.get(key)]
    assert kept == ["done-4", "done-5", "last"]
    assert len(runner) == 4
    gate.set()
    assert running.wait(5)


def test_finished_jobs_older_than_max_age_are_forgotten():
    gate = threading.Event()
    runner = JobRunner(max_age_s=3600)
    old = runner.start(_steps(1), key="old")
    old.wait(5)
    still = runner.start(_steps(1, gate), key="still")  # started long ago, still running
    still.started_at -= 7200
    old.finished_at -= 7200  # finished two hours ago
    fresh = runner.start(_steps(1), key="fresh")
    fresh.wait(5)
    assert runner.get("old") is None
    assert runner.get("fresh") is fresh
    assert runner.get("still") is still
    gate.set()
    assert still.wait(5)
    assert runner.get("still") is still  # just finished: kept


def test_latest_is_the_most_recently_started_job_with_the_prefix():
    runner = JobRunner()
    first = runner.start(lambda progress: 1, key="cf-a")
    second = runner.start(lambda progress: 2, key="cf-b")
    runner.start(lambda progress: 3, key="other")
    assert runner.latest("cf-") is second and runner.latest("nope") is None
    first.wait(5)
    again = runner.start(lambda progress: 4, key="cf-a")  # restarting a finished key makes it the latest
    assert runner.latest("cf-") is again and again is not first
