"""The composition root: builds the queue, the client, the watcher and the workers, and runs them.

Threads: the watcher's observers and rescanner report files; the settler promotes settled files to `ready`;
`workers` threads claim and run jobs; the prober probes Studio while the queue is paused; the main thread
sleeps on the stop event, reloads the config on SIGHUP and keeps systemd informed. Signal handlers only set
events. Teardown runs in `finally`, in reverse order of construction. What it says about itself is in
daemon/reports.py, taking a new config in daemon/reloading.py (both mixins of `Daemon`); the engine that `run`
and `upload` share in daemon/engine.py.
"""

from __future__ import annotations

import os
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

from studio_watch.logs import get_logger
from studio_watch import config as cfg
from studio_watch.daemon.alerts import Alerts
from studio_watch.daemon.activity import Activity
from studio_watch.files import sources
from studio_watch.daemon.lock import DaemonLock
from studio_watch.daemon import paging
from studio_watch.daemon.housekeeping import prune_now_and_then
from studio_watch.daemon.folder_locks import BEAT_SECONDS, FolderLocks
from studio_watch.daemon.settle import Settler, changed, to_seen
from studio_watch.daemon.storage import StorageGuard
from studio_watch.daemon.statedb import queue_for
from studio_watch.daemon.snapshot import DaemonSnapshot
from studio_watch.daemon.systemd import sd_notify, watchdog_interval
from studio_watch.daemon.engine import STOP_WAIT, Engine, recover
from studio_watch.daemon.reloading import ConfigReload, schedule_of
from studio_watch.daemon.reports import DaemonReports
from studio_watch.daemon.turns import TurnTaking
from studio_watch.errors import (DatabaseLocked, DatabaseReplaced, DatabaseUnavailable, StorageFull,
                                 StudioWatchError)
from studio_watch.queue import Job, JobQueue, State, show_path
from studio_watch.schedule import RateLimiter
from studio_watch.studio.client import TokenSource
from studio_watch.files.rules import Found, rule_for
from studio_watch.files.writers import after_upload_quiet

log = get_logger(__name__)

PUBLISH_EVERY = 5.0  # seconds between two snapshots of the daemon's state for `status`
IDENTITY_EVERY = 2.0  # seconds between two looks at whether the database file is still the one opened
CLAMP_EVERY = 60.0  # seconds between two corrections of times written under a wrong clock
PRUNE_EVERY = 3600.0  # seconds between two automatic prunes (prune_after)


class Daemon(DaemonReports, ConfigReload):
    """`studio-watch run`."""

    def __init__(self, config: cfg.Config, stop: threading.Event | None = None,
                 tokens: TokenSource | None = None, new_database: bool = False, once: bool = False) -> None:
        self.config = config
        self.new_database = new_database
        self.once = once  # `run --once`: stop when nothing is left to do
        self.failed_meanwhile = False  # a job failed while this daemon ran (`run --once` then exits 1)
        self._failed_at_start: int | None = None
        self.stop = stop or threading.Event()
        self.reload_requested = threading.Event()
        self.tokens = tokens
        self.activity = Activity()
        self.turns = TurnTaking()
        self.wake = threading.Event()
        self.ready = threading.Event()
        self.threads: list[threading.Thread] = []
        self.beats: dict[str, float] = {}
        self.busy: dict[str, int | None] = {}
        self.schedule = schedule_of(config)
        self.limiter = RateLimiter(self.schedule.rate(), self.stop)
        self.alerts = Alerts(config.notify.command, config.notify.webhook, config.studio)
        self.queue: JobQueue | None = None
        self.expectations: Any = None  # daemon.expectations.Expectations when a folder has a timetable
        self.settler: Settler | None = None
        self.storage: StorageGuard | None = None
        self.folder_locks: FolderLocks | None = None
        self.failure: StudioWatchError | None = None  # why the daemon stopped by itself (exit 1)
        self._not_before = 0.0  # time.monotonic(): a clock step must not move it

    # -- lifecycle -------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until the stop event is set. Raises DatabaseLocked, DatabaseUnusable (DatabaseReplaced when the
        database file was deleted or replaced while running), DatabaseUnavailable, ConfigError."""
        # The file is checked before its lock file is made: a lock file beside a blank database is a trace of a
        # lost one (integrity.prepare).
        queue = self._open_queue()
        if queue is None:
            return
        self.queue = queue
        # A cluster's node takes its name in the database instead (register_node); a file lock is per machine.
        lock = None if queue.shared else DaemonLock(Path(self.config.state_db))
        client = watcher = server = None
        try:
            if lock is not None and not self._acquire(lock):
                return
            queue.register_node(self.config.node_name, os.getpid(), socket.gethostname())
            queue.on_work(self.wake.set)  # another node made a job ready: claim it now, not at the next poll
            engine = Engine(self.config, queue, self.stop, self.activity, self.limiter, self.tokens, self._beat,
                            self._hold_after_upload)
            client, self.pause, self.pipeline = engine.client, engine.pause, engine.pipeline
            if not self._until_written(lambda: self._recover(queue), "startup recovery"):
                return
            self._failed_at_start = queue.counts()["failed"]  # before any worker can fail a job
            self.storage = StorageGuard(queue, self.config.retry, self.stop, on_change=self._storage_changed)
            self.alerts.bind(queue)
            self.alerts.start()
            self.activity.listeners.append(lambda event: paging.on_activity(self.alerts, event))
            server = self._start_metrics(queue)
            if not queue.shared:  # a shared queue makes each file one job by itself
                self.folder_locks = FolderLocks(self.config.state_db)
            locks = self.folder_locks
            from studio_watch.files.watcher import Watcher  # here: `upload` builds its engine from this module

            self.watcher = watcher = Watcher(self.config.folders, self.config.observer, self.config.rescan_seconds,
                                             self._on_found, self.stop,
                                             claim=locks.claim if locks else None,
                                             release=(lambda rule: locks.release(rule.path)) if locks else None)
            watcher.start()
            self._start_expectations(queue)  # after the startup scan: lectures of a downtime are judged from it
            self.settler = Settler(queue, lambda: self.config.folders, self.activity, self.stop, self.wake,
                                   writing=watcher.writing, storage_full=self._storage_full)
            self._start_thread("settler", self.settler.loop)
            self._start_thread("prober", self.pause.probe_loop)
            self._start_thread("storage-prober", self.storage.probe_loop)
            self._start_thread("housekeeper", self._housekeeping_loop)
            jitter = self.config.schedule.start_jitter_seconds
            self._not_before = time.monotonic() + (random.uniform(0, jitter) if jitter else 0.0)
            for n in range(self.config.workers):
                worker = engine.worker(f"worker-{n + 1}", self.turns, queue.claim, queue.next_due, self._closed_for,
                                       self.wake, self.beats, self.busy, storage=self.storage)
                self._start_thread(worker.name, worker.loop)
            self.ready.set()
            self._safely(self._publish)
            sd_notify(f"READY=1\nSTATUS={self.status_line()}")
            log.info("daemon_ready", start_delay=round(max(0.0, self._not_before - time.monotonic()), 1),
                     degraded=watcher.degraded() or None)
            self._main_loop()
        finally:
            self.stop.set()
            sd_notify("STOPPING=1")
            self.wake.set()
            if self.settler is not None:
                self.settler.kick.set()
            if getattr(self, "pause", None) is not None:  # the prober's idle wait would add up to 1 s
                self.pause.wake()
            deadline = time.monotonic() + STOP_WAIT  # a PUT may still be waiting for its response: bounded
            for thread in reversed(self.threads):
                thread.join(timeout=max(0.1, deadline - time.monotonic()))
            if watcher is not None:
                watcher.close()
            if server is not None:
                server.stop()
            self.alerts.close()
            if client is not None:
                client.close()
            ours = lock is None or lock.fd is not None  # a daemon refused the lock must not clear the holder's
            if ours and not isinstance(self.failure, DatabaseReplaced):
                self._safely(lambda: DaemonSnapshot.clear(queue, self._node))
            queue.close()
            if lock is not None:
                lock.release()
            log.info("daemon_stopped", error=str(self.failure) if self.failure else None)
        if self.failure is not None:
            raise self.failure

    def _open_queue(self) -> JobQueue | None:
        """Open the state database, checked; a full disk is waited out (None: stopped meanwhile)."""
        tries = 0
        while True:
            try:
                return queue_for(self.config, new_database=self.new_database, verify=True)
            except StorageFull as exc:
                tries += 1
                log.error("state_db_full", error=str(exc), retry_in=min(30.0, 2.0 * tries))
                sd_notify(f"EXTEND_TIMEOUT_USEC={int(40e6)}\nSTATUS=waiting for space: {exc}")
                if self.stop.wait(min(30.0, 2.0 * tries)):
                    return None

    def _until_written(self, step: Callable[[], None], what: str) -> bool:
        """Run a step that writes, waiting out a full disk (False: stopped meanwhile)."""
        tries = 0
        while True:
            try:
                step()
                return True
            except StorageFull as exc:
                tries += 1
                log.error("state_db_full", error=str(exc), step=what, retry_in=min(30.0, 2.0 * tries))
                sd_notify(f"EXTEND_TIMEOUT_USEC={int(40e6)}\nSTATUS=waiting for space: {exc}")
                if self.stop.wait(min(30.0, 2.0 * tries)):
                    return False

    def _safely(self, step: Callable[[], None]) -> None:
        """A step of the main loop (status publishing, meta writes) that must never stop the daemon."""
        try:
            step()
        except StorageFull as exc:
            if self.storage is not None:
                self.storage.trip(exc)
        except DatabaseUnavailable as exc:  # PostgreSQL down or restarting: the daemon waits for it
            log.warning("database_unavailable", step=getattr(step, "__name__", "step"), error=str(exc))
            sd_notify("STATUS=waiting for the state database")
        except (StudioWatchError, OSError, sqlite3.Error) as exc:
            log.warning("main_loop_step_failed", step=getattr(step, "__name__", "step"), error=str(exc))

    def _acquire(self, lock: DaemonLock) -> bool:
        """Take the database (False: stopped first). While a lone `studio-watch upload` works on it, wait for it
        to finish: exiting would have systemd restart the daemon until its start limit leaves it failed."""
        waiting = False
        while True:
            try:
                lock.acquire()
                return True
            except DatabaseLocked as exc:
                if exc.role != "upload":
                    raise
                if not waiting:
                    waiting = True
                    log.warning("waiting_for_upload", pid=exc.pid, message=str(exc))
                sd_notify(f"EXTEND_TIMEOUT_USEC={int(5e6)}\nSTATUS=waiting for studio-watch upload (pid {exc.pid})")
            if self.stop.wait(1.0):
                return False

    def _recover(self, queue: JobQueue) -> None:
        recovered = recover(queue)
        clamped = queue.clamp_times(queue.now(), self._max_wait())
        if clamped:
            log.warning("clock_times_clamped", jobs=clamped,
                        reason="times in the database lay in the future (the clock was wrong when they were written)")
        log.info("daemon_started", pid=os.getpid(), state_db=queue.where, node=self.config.node_name,
                 folders=len(self.config.folders), workers=self.config.workers, recovered=len(recovered),
                 **{f"recovered_{s.value}": sum(1 for j in recovered if j.state is s)
                    for s in (State.URL_ISSUED, State.UPLOADED, State.COMPLETED)})

    def _start_metrics(self, queue: JobQueue) -> Any:
        if not self.config.metrics.listen:
            return None
        from studio_watch.daemon.metrics import Metrics, MetricsServer  # start-up cost: prometheus_client, when asked

        metrics = Metrics(queue, self._paused, [str(f.path) for f in self.config.folders if f.expect is not None],
                          node=self.config.node_name if queue.shared else None, folders=self._folder_states)
        self.activity.listeners.append(metrics.on_event)
        server = MetricsServer(self.config.metrics.listen, metrics, self.healthy,
                               lambda: self.ready.is_set() and not self._paused(),
                               detail=self._degraded, page=self.page_data)
        server.start()
        log.info("metrics_listening", listen=self.config.metrics.listen)
        return server

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _main_loop(self) -> None:
        interval = watchdog_interval()
        last_status, last_publish, last_identity, last_clamp, last_beat = "", 0.0, 0.0, time.monotonic(), 0.0
        wall_minus_mono = time.time() - time.monotonic()
        while not self.stop.wait(min(interval or 1.0, 1.0)):
            now = time.monotonic()
            if now - last_identity >= IDENTITY_EVERY:
                last_identity = now
                try:
                    self.queue.check_same_file()  # type: ignore[union-attr]
                except DatabaseReplaced as exc:
                    log.error("state_db_replaced", error=str(exc))
                    self.failure = exc
                    self.stop.set()
                    break
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            self.watcher.restart_dead()
            self.watcher.check_folders()
            self.watcher.check_watches()
            if self.folder_locks is not None and now - last_beat >= BEAT_SECONDS:
                last_beat = now
                for folder in self.folder_locks.beat():
                    log.error("folder_lock_lost", folder=str(folder))
            if interval and self.healthy():
                sd_notify("WATCHDOG=1")
            step = time.time() - now - wall_minus_mono  # the wall clock moved against the monotonic one
            if abs(step) > 5.0 or now - last_clamp >= CLAMP_EVERY:
                if abs(step) > 5.0:
                    log.warning("clock_stepped", seconds=round(step, 1))
                wall_minus_mono, last_clamp = time.time() - now, now
                self._safely(self._clamp)
            if self.queue is not None and self.queue.shared:
                self._safely(self.pause.follow_shared)
            if now - last_publish >= PUBLISH_EVERY:  # counting jobs is not free: not every tick
                self._safely(self._publish)
                self._safely(lambda: paging.review(self.alerts, self.queue))  # type: ignore[arg-type]
                last_publish = now
                try:
                    status = self.status_line()
                except DatabaseUnavailable:
                    status = "waiting for the state database"
                except (StudioWatchError, sqlite3.Error) as exc:
                    status = f"state database unreadable: {exc}"
                if status != last_status:
                    sd_notify(f"STATUS={status}")
                    last_status = status
            self._safely(lambda: paging.watch_pause(self.alerts, self.pause, self.config.notify.paused_after_seconds))
            self._safely(lambda: paging.watch_folders(self.alerts, self.watcher.unavailable, self.config.folders,
                                                      self.config.notify.folder_missing_after_seconds))
            self.limiter.rate = self.schedule.rate()  # the timetable's rate for this minute
            if self.once and self._finished():
                log.info("run_once_finished", failed=self.failed_meanwhile)
                self.stop.set()

    def _clamp(self) -> None:
        if self.queue is not None and self.queue.clamp_times(self.queue.now(), self._max_wait()):
            self.wake.set()
            if self.settler is not None:
                self.settler.kick.set()

    def _max_wait(self) -> float:
        """The longest wait a job may be given (a Retry-After is capped at retry.max_seconds)."""
        return self.config.retry.max_seconds + 60.0

    def _storage_changed(self) -> None:
        """The state database's disk filled or has room again; once it has, look for the files found meanwhile
        (they could not be recorded)."""
        self.wake.set()
        if self.storage is not None and not self.storage.paused and getattr(self, "watcher", None) is not None:
            self.watcher.scan_all()

    def _storage_full(self, exc: StorageFull) -> None:
        """A write failed for want of space: pause the queue until one succeeds again."""
        if self.storage is not None:
            self.storage.trip(exc)

    def _paused(self) -> bool:
        return self.pause.paused or (self.storage is not None and self.storage.paused)

    def _housekeeping_loop(self) -> None:
        assert self.queue is not None
        prune_now_and_then(self.queue, lambda: self.config.prune_after, self.stop, PRUNE_EVERY)

    def _finished(self) -> bool:
        """`run --once`: nothing settling, waiting, in flight or left to do after an upload."""
        assert self.queue is not None
        if self.queue.pending() or any(job is not None for job in self.busy.values()):
            return False
        self.failed_meanwhile = self.queue.counts()["failed"] > (self._failed_at_start or 0)
        return True

    # -- finding and settling ----------------------------------------------------------------------------------

    def _on_found(self, found: list[Found], is_scan: bool) -> None:
        try:
            self._record_found(found, is_scan)
        except DatabaseUnavailable as exc:  # the next rescan hands these files over again
            log.warning("database_unavailable", during="found", files=len(found), error=str(exc))

    def _record_found(self, found: list[Found], is_scan: bool) -> None:
        assert self.queue is not None
        if is_scan:  # a rescan sees every file: only hand over the new and the changed
            known = self.queue.latest_by_path(f.path for f in found)  # O(files present), not O(history)
            found = [f for f in found if changed(known.get(os.fsencode(f.path)), f.stat)]
        if not found:
            return
        try:
            created = self.queue.observe([to_seen(f, self.watcher.local_clock(f.rule)) for f in found])
        except StorageFull as exc:  # the next rescan finds them again
            if self.storage is not None:
                self.storage.trip(exc)
            return
        for job_id, seen in created:
            log.info("file_found", job_id=job_id, path=show_path(seen.path), kind=seen.kind, bytes=seen.size)
        if self.settler is not None:
            self.settler.kick.set()

    def _hold_after_upload(self, job: Job) -> tuple[float, str] | None:
        """Seconds to wait before deleting or moving an uploaded file across filesystems, and why (None: go).

        Both would destroy what a writer still adds; a rename within one filesystem would not (the writer's
        descriptor follows the file), so it never waits."""
        if job.path is None or job.after_upload == "keep":
            return None
        if job.after_upload == "move" and job.move_to and sources.same_filesystem(job.path, job.move_to):
            return None
        rule = rule_for(self.config.folders, job.path)
        if rule is not None and self.watcher.sees_writers(rule):
            if self.watcher.writing(job.path):
                return max(job.settle_seconds, 1.0), "the file is open for writing again"
            return None
        quiet = after_upload_quiet(job.settle_seconds)
        left = (job.stable_since or job.created_at) + quiet - time.time()
        return (left, f"open writers cannot be seen here: waiting until the file has been unchanged for "
                      f"{quiet:g} s") if left > 0 else None

    def _beat(self) -> None:
        self.beats[threading.current_thread().name] = time.monotonic()

    def _closed_for(self) -> float:
        """Seconds until a worker may start a job: the start jitter (monotonic: a clock step must not move it),
        then the upload hours."""
        return max(self._not_before - time.monotonic(), self.schedule.seconds_until_open())

