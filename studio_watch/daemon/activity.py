"""Live activity: what the pipeline reports (the Observer protocol), and the daemon's record of it for status
lines, metrics and alerts (current transfers, bytes sent, failures)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from studio_watch.logs import get_logger
from studio_watch.queue import Job

log = get_logger(__name__)


class Observer(Protocol):
    """What the pipeline reports for metrics and live progress (the daemon supplies one)."""

    def put_done(self, nbytes: int, seconds: float) -> None: ...

    def failure(self, reason: str) -> None: ...

    def job_failed(self, job: Job, error: str) -> None: ...

    def progress(self, job_id: int, sent: int, total: int) -> None: ...

    def transfer_ended(self, job_id: int) -> None: ...


class NullObserver:
    def put_done(self, nbytes: int, seconds: float) -> None:
        pass

    def failure(self, reason: str) -> None:
        pass

    def job_failed(self, job: Job, error: str) -> None:
        pass

    def progress(self, job_id: int, sent: int, total: int) -> None:
        pass

    def transfer_ended(self, job_id: int) -> None:
        pass


@dataclass(frozen=True)
class PutDone:
    """A PUT finished: `bytes` sent in `seconds`."""

    bytes: int
    seconds: float


@dataclass(frozen=True)
class Failure:
    """Something failed, transient ones included; `reason` is a short bounded label (for the failures metric)."""

    reason: str


@dataclass(frozen=True)
class RecordingMissing:
    """A lecture of `folder`'s timetable brought no recording."""

    folder: str


@dataclass(frozen=True)
class JobFailed:
    """A job ended `failed`: its summary, with the error as `last_error`."""

    job: dict[str, Any]


Event = PutDone | Failure | JobFailed | RecordingMissing


@dataclass
class Transfer:
    job_id: int
    sent: int
    total: int
    started: float
    last: float


class Activity(Observer):
    """Live facts for status lines, metrics and alerts: current transfers, bytes sent, failures.

    Listeners receive the events above (PutDone, Failure, JobFailed, RecordingMissing).
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transfers: dict[int, Transfer] = {}
        self.uploaded_bytes = 0
        self.listeners: list[Callable[[Event], None]] = []

    def put_done(self, nbytes: int, seconds: float) -> None:
        with self.lock:
            self.uploaded_bytes += nbytes
        self._emit(PutDone(nbytes, seconds))

    def failure(self, reason: str) -> None:
        self._emit(Failure(reason))

    def recording_missing(self, folder: str) -> None:
        self._emit(RecordingMissing(folder))

    def job_failed(self, job: Job, error: str) -> None:
        """`job` as it was when it failed: the alert says its state now (failed) and the step it failed at."""
        self._emit(JobFailed({**job.summary(), "state": "failed", "failed_state": job.state.value,
                              "last_error": error, "reason": error}))

    def progress(self, job_id: int, sent: int, total: int) -> None:
        now = time.monotonic()
        with self.lock:
            transfer = self.transfers.setdefault(job_id, Transfer(job_id, 0, total, now, now))
            transfer.sent, transfer.last = sent, now

    def transfer_ended(self, job_id: int) -> None:
        with self.lock:
            self.transfers.pop(job_id, None)

    def _emit(self, event: Event) -> None:
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a metrics or alert bug must not fail an upload
                log.exception("activity_listener_failed", kind=type(event).__name__)
