"""One engine: the client, the pause switch and the pipeline that `run` and a lone `upload` both work with,
built here and nowhere else (`build_client` for the commands that only talk to Studio: `check`, `import-url`).
`LoneUpload` is `studio-watch upload` working alone; it imports none of the daemon's other parts (watcher,
settler, alerts, status page), which keeps a one-shot upload's start short."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable, Sequence

from studio_watch import config as cfg
from studio_watch.daemon.activity import NullObserver, Observer
from studio_watch.daemon.pause import PauseSwitch
from studio_watch.daemon.pipeline import Pipeline
from studio_watch.daemon.snapshot import PauseRecord
from studio_watch.daemon.storage import StorageGuard
from studio_watch.daemon.turns import TurnTaking
from studio_watch.daemon.workers import Worker, finished
from studio_watch.files.rules import rule_for
from studio_watch.queue import Job, JobQueue, State
from studio_watch.schedule import RateLimiter
from studio_watch.studio.auth import make_tokens
from studio_watch.studio.client import StudioClient, TokenSource

STOP_WAIT = 30.0  # the longest a stop waits for threads; an abandoned step is resumed at the next start


def build_client(config: cfg.Config, stop: threading.Event | None = None, limiter: RateLimiter | None = None,
                 tokens: TokenSource | None = None, retry: cfg.RetryConfig | None = None,
                 queue: JobQueue | None = None) -> StudioClient:
    """The API client every command and the daemon use (raises ConfigError for a missing or loose secret).
    Closing the client closes the token source built here. `queue`: a cluster's, where the nodes share their
    OAuth token pair."""
    return StudioClient(config.studio, retry or config.retry, tokens or make_tokens(config, queue), stop, limiter)


def recover(queue: JobQueue) -> list[Job]:
    """At the start of whoever works on the queue: release claims left by a dead process (a cluster node: its
    own); no pause carries over on a single machine (a cluster's pause is the cluster's: a node joining it does
    not lift it)."""
    recovered = queue.recover()
    if not queue.shared:
        PauseRecord.clear(queue)
    return recovered


class Engine:
    """What `run` and a lone `upload` both work with: the client, the pause switch and the pipeline."""

    def __init__(self, config: cfg.Config, queue: JobQueue, stop: threading.Event, observer: Observer,
                 limiter: RateLimiter | None = None, tokens: TokenSource | None = None,
                 heartbeat: Callable[[], None] = lambda: None,
                 hold_after_upload: Callable[[Job], tuple[float, str] | None] = lambda job: None) -> None:
        self.config, self.queue, self.stop = config, queue, stop
        self.client = build_client(config, stop, limiter, tokens, queue=queue)
        self.pause = PauseSwitch(queue, self.client, config.retry, stop)
        self.pipeline = Pipeline(queue, self.client, config.retry, self.pause, stop, observer,
                                 processed_timeout=self._processed_timeout, heartbeat=heartbeat,
                                 hold_after_upload=hold_after_upload)

    def _processed_timeout(self, job: Job) -> float:
        rule = rule_for(self.config.folders, job.path) if job.path else None
        return (rule or cfg.FolderRule(path=Path("/"))).processed_timeout_seconds

    def worker(self, name: str, turns: TurnTaking, claim: Callable[[str], list[Job]],
               next_due: Callable[[], float | None], closed_for: Callable[[], float] = lambda: 0.0,
               wake: threading.Event | None = None, beats: dict[str, float] | None = None,
               busy: dict[str, int | None] | None = None, storage: StorageGuard | None = None,
               ran: Callable[[], None] = lambda: None) -> Worker:
        return Worker(name, self.queue, self.pipeline, self.pause, self.stop, wake or threading.Event(), turns,
                      claim=claim, next_due=next_due, closed_for=closed_for, beats=beats, busy=busy, storage=storage,
                      ran=ran)

    def close(self) -> None:
        self.client.close()


class LoneUpload:
    """`studio-watch upload` when no daemon holds the database: the same engine and worker loop as `run`, with
    the pause prober, for the jobs of one command (`upload FILE...`: one after the other, on one engine and so one
    HTTP connection). Use as a context manager around following the jobs' rows."""

    def __init__(self, config: cfg.Config, queue: JobQueue, job_ids: int | Sequence[int], stop: threading.Event,
                 tokens: TokenSource | None = None, observer: Observer | None = None) -> None:
        self.queue, self.stop = queue, stop
        self.job_ids = [job_ids] if isinstance(job_ids, int) else list(job_ids)
        if not queue.shared:  # the lock says nobody else works on this queue: claims left behind are stale
            recover(queue)
        self.engine = Engine(config, queue, stop, observer or NullObserver(), tokens=tokens)
        self.pause = self.engine.pause
        self.changed = threading.Event()  # set each time a job's row has moved on: its follower looks again now
        self.worker = worker = self.engine.worker("upload", TurnTaking(), self._claim, self._next_due,
                                                  ran=self.changed.set)
        self.threads = [threading.Thread(target=worker.loop, name="upload", daemon=True),
                        threading.Thread(target=self.pause.probe_loop, name="prober", daemon=True)]

    def _open(self) -> list[Job]:
        """The jobs still to do here, in the order given (a changed file waits to settle: not here)."""
        jobs = (self.queue.get(i) for i in self.job_ids)
        return [j for j in jobs if j is not None and not finished(j) and j.state is not State.SETTLING]

    def _claim(self, owner: str) -> list[Job]:
        """The first job still to do, once it is due: one at a time, in the order given."""
        todo = self._open()
        if not todo or todo[0].next_attempt_at > self.queue.now():
            return []
        claimed = self.queue.claim_id(todo[0].id, owner)
        return [claimed] if claimed is not None else []

    def _next_due(self) -> float | None:
        todo = self._open()
        return todo[0].next_attempt_at if todo else None

    def __enter__(self) -> LoneUpload:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.pause.wake()  # both idle waits end now, not within a second (every one-shot `upload` paid it)
        self.worker.wake.set()
        for thread in self.threads:
            thread.join(timeout=STOP_WAIT)
        self.engine.close()
