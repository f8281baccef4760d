"""A small thread-based runner for long computations (fine-tuning, factor fitting, scoring).

A :class:`Job` runs one function in a background thread and exposes what a progress bar needs:
``status``, ``fraction`` in [0, 1], ``message``, then ``result`` or ``error``. The function receives a
:class:`Progress` callback with the engine's signature ``progress(done, total, stage)``; cancelling a job
sets an event that the callback checks, so the next progress report raises :class:`JobCancelled` and the
computation unwinds cleanly (the engine's callbacks "may raise to cancel").

A :class:`JobRunner` keeps jobs by key, so a page that reruns (or a second browser tab) finds the job
already running for the same analysis instead of starting another one. Nothing here imports Streamlit:
the app keeps one runner per process (``st.cache_resource``) and polls it.

Example::

    runner = JobRunner()
    job = runner.start(lambda progress: fit(..., progress=progress), key="factors-1a2b", name="Fit factors")
    job.wait(); job.result
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from influence_core.errors import InfluenceError

log = logging.getLogger(__name__)

PENDING, RUNNING, DONE, ERROR, CANCELLED = "pending", "running", "done", "error", "cancelled"
FINISHED = frozenset({DONE, ERROR, CANCELLED})
#: Finished jobs a runner remembers (the latest ones), and for how long at most (seconds).
MAX_FINISHED = 32
MAX_AGE_S = 6 * 3600.0


class JobCancelled(Exception):
    """Raised inside a job's progress callback once the job has been asked to stop."""


class Progress:
    """The callback a job function receives: ``progress(done, total, stage)``.

    Each call updates the job's fraction and message and raises :class:`JobCancelled` if the job was
    cancelled. ``progress.span(start, end)`` returns a callback that maps its own ``done / total`` into
    ``[start, end]`` of the whole job, so a job made of several stages (fine-tune, fit, score) reports
    one monotonic fraction.
    """

    def __init__(self, job: Job, start: float = 0.0, end: float = 1.0) -> None:
        self._job = job
        self._start = start
        self._end = end

    def __call__(self, done: int, total: int, stage: str = "") -> None:
        job = self._job
        if job.cancel_requested:
            raise JobCancelled(f"{job.name or 'job'} cancelled")
        share = min(max(done / total, 0.0), 1.0) if total else 0.0
        fraction = self._start + (self._end - self._start) * share
        with job._lock:
            job.fraction = max(job.fraction, min(fraction, 1.0))
            if stage:
                job.message = f"{stage} ({done}/{total})" if total else stage

    def span(self, start: float, end: float) -> Progress:
        """A callback for a sub-stage that covers ``[start, end]`` of this callback's range."""
        width = self._end - self._start
        return Progress(self._job, self._start + width * start, self._start + width * end)

    def check(self) -> None:
        """Raise :class:`JobCancelled` if the job was cancelled (for loops with no progress to report)."""
        if self._job.cancel_requested:
            raise JobCancelled(f"{self._job.name or 'job'} cancelled")


def cancel_check(progress) -> Callable[[], bool]:
    """``cancel()`` for library code that polls (fine-tunes, retrains): True once the job behind ``progress`` was
    cancelled. Only :class:`JobCancelled` means cancelled; any other failure of the check propagates."""
    check = getattr(progress, "check", None)

    def cancelled() -> bool:
        try:
            if check is not None:
                check()
        except JobCancelled:
            return True
        return False

    return cancelled


@dataclass(eq=False)
class Job:
    """One background computation. Read its fields from any thread; only the worker writes them.

    Attributes:
        key: the runner's key for this job (e.g. a hash of model, data and configuration).
        name: a short human title ("Fit factors and score").
        status: ``pending``, ``running``, ``done``, ``error`` or ``cancelled``.
        fraction: progress in [0, 1], monotonic.
        message: the current stage, e.g. ``"factors (12/40)"``.
        result: what the function returned (``status == "done"``).
        error: a message for the user (``status == "error"``): the text of an InfluenceError, or a
            generic line for unexpected exceptions whose traceback goes to the log and ``details``.
    """

    key: str
    name: str = ""
    status: str = PENDING
    fraction: float = 0.0
    message: str = ""
    result: Any = None
    error: str | None = None
    details: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def running(self) -> bool:
        return self.status in (PENDING, RUNNING)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    @property
    def elapsed(self) -> float:
        """Seconds since the job started (until it finished)."""
        return (self.finished_at or time.time()) - self.started_at

    def cancel(self) -> None:
        """Ask the job to stop at its next progress report. Does nothing once it has finished."""
        if not self.finished:
            self._cancel.set()
            with self._lock:
                self.message = "cancelling..."

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job finishes; True if it did within ``timeout`` seconds."""
        if self._thread is None:
            return self.finished
        self._thread.join(timeout)
        return self.finished

    def _run(self, fn: Callable[[Progress], Any]) -> None:
        self.status = RUNNING
        try:
            result = fn(Progress(self))
        except JobCancelled:
            self.status, self.message = CANCELLED, "cancelled"
        except InfluenceError as err:
            self.error, self.status = str(err), ERROR
        except Exception as err:  # noqa: BLE001 - a worker thread must never die silently
            log.exception("job %s (%s) failed", self.key, self.name)
            self.details = traceback.format_exc()
            self.error = f"{self.name or 'The job'} failed unexpectedly ({type(err).__name__}). See the server log."
            self.status = ERROR
        else:
            self.result = result
            self.fraction = 1.0
            self.status = DONE
        finally:
            self.finished_at = time.time()


class JobRunner:
    """Starts jobs in daemon threads and remembers them by key (thread-safe).

    ``start`` with the key of a job that is still running returns that job instead of starting a second
    one; with the key of a finished job it starts afresh. Keep one runner per process.

    Finished jobs (and the results they hold) are remembered for a bounded time: at most ``max_finished`` of
    them, the most recently finished, and none that finished more than ``max_age_s`` seconds ago. Running jobs
    are never forgotten.
    """

    def __init__(self, max_finished: int = MAX_FINISHED, max_age_s: float = MAX_AGE_S) -> None:
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.max_finished = max_finished
        self.max_age_s = max_age_s

    def start(self, fn: Callable[[Progress], Any], *, key: str, name: str = "") -> Job:
        """Run ``fn(progress)`` in the background; ``fn`` should call ``progress`` often enough to cancel."""
        with self._lock:
            current = self._jobs.get(key)
            if current is not None and current.running:
                return current
            job = Job(key=key, name=name)
            job._thread = threading.Thread(target=job._run, args=(fn,), name=f"job-{key}", daemon=True)
            self._jobs.pop(key, None)  # a restarted key becomes the latest
            self._jobs[key] = job
            self._prune()
        job._thread.start()
        return job

    def get(self, key: str) -> Job | None:
        """The latest job started with ``key`` (running or finished), or None."""
        with self._lock:
            self._prune()
            return self._jobs.get(key)

    def latest(self, prefix: str) -> Job | None:
        """The most recently started remembered job whose key starts with ``prefix``, or None."""
        with self._lock:
            self._prune()
            matches = [job for key, job in self._jobs.items() if key.startswith(prefix)]
            return matches[-1] if matches else None

    def __len__(self) -> int:
        """How many jobs are remembered (running and finished)."""
        with self._lock:
            return len(self._jobs)

    def _prune(self, now: float | None = None) -> None:
        """Forget finished jobs past ``max_age_s`` and all but the ``max_finished`` latest (hold the lock)."""
        now = time.time() if now is None else now
        finished = sorted(
            ((job.finished_at, key) for key, job in self._jobs.items() if job.finished and job.finished_at is not None),
            reverse=True,
        )
        for rank, (finished_at, key) in enumerate(finished):
            if rank >= self.max_finished or now - finished_at > self.max_age_s:
                del self._jobs[key]

    def running(self) -> list[Job]:
        """Jobs that have not finished, oldest first."""
        with self._lock:
            return [job for job in self._jobs.values() if job.running]

    def forget(self, key: str) -> None:
        """Drop a finished job so its result can be garbage-collected (a running job is kept)."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and job.finished:
                del self._jobs[key]


__all__ = [
    "Job",
    "JobCancelled",
    "JobRunner",
    "Progress",
    "PENDING",
    "RUNNING",
    "DONE",
    "ERROR",
    "CANCELLED",
]
