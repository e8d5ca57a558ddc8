"""The worker loop, the same for `run` (any due job) and for `upload` working alone (its one job): wait for a
turn, claim, carry the job through the pipeline, and wait when there is nothing to do, the queue is paused or
the upload hours are closed."""

from __future__ import annotations

import threading
import time
from typing import Callable

from studio_watch.logs import get_logger
from studio_watch.daemon.pause import PauseSwitch
from studio_watch.daemon.pipeline import Pipeline
from studio_watch.daemon.storage import StorageGuard
from studio_watch.daemon.turns import TurnTaking
from studio_watch.errors import DatabaseUnavailable, StorageFull
from studio_watch.queue import Job, JobQueue, Step

log = get_logger(__name__)


def finished(job: Job) -> bool:
    """Nothing is left to do for this job (a completed job whose after-upload step is pending is not finished)."""
    return job.step in (Step.DONE, Step.FAILED, Step.SKIPPED)


class Worker:
    """One worker thread. `claim(owner)` takes its next jobs, `next_due()` says when one may be due, and
    `closed_for()` how long no job may start (upload hours, start jitter). `beats` and `busy` are shared with
    the daemon's health check and status line."""

    def __init__(self, name: str, queue: JobQueue, pipeline: Pipeline, pause: PauseSwitch, stop: threading.Event,
                 wake: threading.Event, turns: TurnTaking, *, claim: Callable[[str], list[Job]],
                 next_due: Callable[[], float | None], closed_for: Callable[[], float] = lambda: 0.0,
                 beats: dict[str, float] | None = None, busy: dict[str, int | None] | None = None,
                 storage: StorageGuard | None = None, ran: Callable[[], None] = lambda: None) -> None:
        self.name, self.queue, self.pipeline, self.pause = name, queue, pipeline, pause
        self.stop, self.wake, self.turns = stop, wake, turns
        self.claim, self.next_due, self.closed_for = claim, next_due, closed_for
        self.beats = {} if beats is None else beats
        self.busy = {} if busy is None else busy
        self.storage = storage  # the disk-full pause (daemon/storage.py), when the daemon runs one
        self.ran = ran  # called each time the pipeline has carried a job as far as it goes now
        self.owner = queue.owner(name)  # a cluster's owner names the node too

    def beat(self) -> None:
        self.beats[self.name] = time.monotonic()

    def loop(self) -> None:
        while not self.stop.is_set():
            self.beats[self.name], self.busy[self.name] = time.monotonic(), None
            try:
                self.once()
            except DatabaseUnavailable as exc:  # PostgreSQL down or restarting: wait for it, quietly
                log.warning("database_unavailable", worker=self.name, error=str(exc))
                self.stop.wait(1.0)
            except StorageFull as exc:  # the job stays claimed: released when the disk has room again
                if self.storage is not None:
                    self.storage.trip(exc, self.busy.get(self.name))
                else:
                    log.error("state_db_full", worker=self.name, error=str(exc))
                    self.stop.wait(1.0)
            except Exception:  # the database or a bug: log, breathe, go on; the job stays claimed until restart
                log.exception("worker_error", worker=self.name)
                self.stop.wait(1.0)

    def once(self) -> None:
        if not self.turns.begin(self.name, self.stop, self.beat):
            return
        jobs: list[Job] = []
        try:
            # Looked at with the turn in hand: waiting for one can take a while, and a pause or the end of the
            # upload hours may have come meanwhile.
            paused = self.pause.paused or (self.storage is not None and self.storage.paused)
            closed_for = self.closed_for()
            if not paused and closed_for <= 0:
                jobs = self.claim(self.owner)
                for job in jobs:
                    self.busy[self.name] = job.id
                    try:
                        self.pipeline.run(job)
                    finally:
                        self.ran()
        finally:
            self.turns.end(self.name)
        if paused and self.pause.paused:
            self.pause.wait_resumed(1.0)
        elif paused:  # the disk-full pause: its prober sets `wake` when a write succeeds again
            self.wake.wait(1.0)
            self.wake.clear()
        elif closed_for > 0:
            self.stop.wait(min(closed_for, 10.0))
        elif not jobs:
            due = self.next_due()
            self.wake.wait(1.0 if due is None else min(1.0, max(0.01, due - self.queue.now())))
            self.wake.clear()
