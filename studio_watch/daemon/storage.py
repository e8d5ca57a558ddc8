"""The state database's disk as an outage: when a commit fails because the disk is full (or failing), the queue
pauses with the reason, nothing is claimed, a small write is retried on a growing backoff, and work resumes once
it succeeds. The process stays up: dying would only have systemd restart it into the same full disk until its
start limit leaves the unit failed.

A job whose commit failed stays claimed by its worker; it is "stranded" here and released (back in the state
it was committed in, so its step is repeated, as after a crash) before the queue resumes.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from studio_watch.logs import get_logger
from studio_watch import config as cfg
from studio_watch.daemon.pause import Prober
from studio_watch.errors import StorageFull
from studio_watch.queue import JobQueue

log = get_logger(__name__)


class StorageGuard(Prober):
    """Paused while the state database cannot be written; `probe_loop` resumes it."""

    PROBE_CAP = 30.0  # a disk freed is noticed within half a minute

    def __init__(self, queue: JobQueue, retry: cfg.RetryConfig, stop: threading.Event,
                 on_change: Callable[[], None] = lambda: None) -> None:
        self.queue, self.retry, self.stop, self.on_change = queue, retry, stop, on_change
        self._lock = threading.Lock()
        self._tripped = threading.Event()
        self._stranded: set[int] = set()
        self.reason: str | None = None
        self.since: float | None = None

    @property
    def paused(self) -> bool:
        return self.reason is not None

    def trip(self, exc: StorageFull, job_id: int | None = None) -> None:
        """A write failed for lack of space: pause (once), and remember a job left claimed by the failure."""
        with self._lock:
            if job_id is not None:
                self._stranded.add(job_id)
            if self.reason is not None:
                return
            self.reason, self.since = str(exc), time.time()
        log.error("queue_paused", reason=self.reason, cause="state_db_full")
        self._tripped.set()
        self.on_change()

    def _probe(self, tries: int) -> None:
        """While paused: try a small write and release the stranded jobs; resume when it works."""
        try:
            self.queue.probe_write()
            with self._lock:
                stranded = sorted(self._stranded)
            mine = self.queue.owner("")  # this process's claims (another node may have taken one over)
            for job_id in stranded:
                job = self.queue.get(job_id)
                if job is not None and (job.claimed_by or "").startswith(mine):
                    self.queue.release(job)
                with self._lock:
                    self._stranded.discard(job_id)
        except StorageFull as exc:
            log.info("queue_still_paused", reason=str(exc), probes=tries)
            return
        with self._lock:
            paused_for = time.time() - (self.since or time.time())
            self.reason = self.since = None
        log.info("queue_resumed", cause="state_db_writable", paused_seconds=round(paused_for, 1),
                 released=len(stranded))
        self.on_change()
