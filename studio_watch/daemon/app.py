"""The composition root: builds the queue, the client, the watcher and the workers, and runs them.

Threads: the watcher's observers and rescanner report files; the settler promotes settled files to `ready`;
`workers` threads claim and run jobs; the prober probes Studio while the queue is paused; the main thread
sleeps on the stop event, reloads the config on SIGHUP and keeps systemd informed. Signal handlers only set
events. Teardown runs in `finally`, in reverse order of construction.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable

import structlog

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.files import marks, sources
from studio_watch.daemon.alerts import Alerts
from studio_watch.daemon.control import (PAUSE_KEY, STATUS_KEY, Activity, DaemonLock, PauseSwitch, TurnTaking,  # noqa: F401
                      sd_notify, watchdog_interval)
from studio_watch.daemon.folder_locks import BEAT_SECONDS, FolderLocks
from studio_watch.daemon.storage import StorageGuard
from studio_watch.errors import (ConfigError, DatabaseLocked, DatabaseReplaced, DatabaseUnavailable, StorageFull,
                                 StudioWatchError)
from studio_watch.queue import Job, JobQueue, Seen, Settled, State, open_queue, settle_clock, show_path
from studio_watch.daemon.pipeline import Pipeline
from studio_watch.schedule import RateLimiter, Schedule, parse_window
from studio_watch.studio.client import MAX_CLIENT_WAIT, StaticToken, StudioClient, TokenSource
from studio_watch.files.watcher import Found, Watcher, rule_for
from studio_watch.files.writers import after_upload_quiet

log = structlog.get_logger(__name__)

SETTLE_BATCH = 1000  # settle promotions per transaction (bounded; batches of 100, letting workers start sooner,
                     # measured slower: the settler and the first worker then trade the GIL)
PUBLISH_EVERY = 5.0  # seconds between two snapshots of the daemon's state for `status`
IDENTITY_EVERY = 2.0  # seconds between two looks at whether the database file is still the one opened
CLAMP_EVERY = 60.0  # seconds between two corrections of times written under a wrong clock
STOP_WAIT = 30.0  # the longest a stop waits for threads; an abandoned step is resumed at the next start


def make_tokens(config: cfg.Config, queue: JobQueue | None = None) -> TokenSource:
    """The token source the config asks for (raises ConfigError for a missing or loose secret). With a cluster's
    queue, OAuth tokens are shared through it (one refresh at a time across nodes)."""
    if config.studio.oauth is not None:
        from studio_watch.studio.auth import OAuthTokens

        tokens: TokenSource = OAuthTokens.from_config(config, queue if queue is not None and queue.shared else None)
    else:
        def read() -> str:
            token = cfg.static_token(config)
            assert token is not None
            logs.register_secret(token)
            return token

        tokens = StaticToken(read)
    logs.register_secret(tokens.token())
    return tokens


def queue_for(config: cfg.Config, new_database: bool = False, verify: bool = False) -> JobQueue:
    """The queue `state_db` names: a SQLite file, or a cluster's PostgreSQL database (as `node_name`)."""
    from urllib.parse import unquote, urlsplit

    from studio_watch import logs

    password = cfg.state_db_password(config)
    inline = urlsplit(str(config.state_db)).password if config.shared_state else None
    for secret in (password, inline and unquote(inline)):
        if secret:
            logs.register_secret(secret)
    return open_queue(config.state_db, node=config.node_name, password=password, lease_seconds=config.lease_seconds,
                      new_database=new_database, verify=verify)


def to_seen(found: Found, local_clock: bool = False) -> Seen:
    """What the queue records of a found file. `local_clock`: its times come from this machine's clock (a local
    filesystem), so its last change is known: the later of mtime and ctime (a tool can set the mtime, never the
    ctime; a rename into the folder sets the ctime)."""
    r, st = found.rule, found.stat
    return Seen(path=found.path, folder=str(r.path), size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                device=st.st_dev, collection_id=r.collection_id, user_id=r.user_id, auto_caption=r.auto_caption,
                after_upload=r.after_upload, after_upload_when=r.after_upload_when,
                move_to=str(r.move_to) if r.move_to else None, duplicates=r.duplicates,
                settle_seconds=r.settle_seconds, kind=found.kind,
                changed_at=max(st.st_mtime, st.st_ctime) if local_clock else None)


def schedule_of(config: cfg.Config) -> Schedule:
    return Schedule(tuple(parse_window(line) for line in config.schedule.upload_hours))


class Daemon:
    """`studio-watch run`."""

    def __init__(self, config: cfg.Config, stop: threading.Event | None = None,
                 tokens: TokenSource | None = None, new_database: bool = False) -> None:
        self.config = config
        self.new_database = new_database
        self.stop = stop or threading.Event()
        self.reload_requested = threading.Event()
        self.tokens = tokens
        self.activity = Activity()
        self.turns = TurnTaking()
        self.wake = threading.Event()
        self.kick_settler = threading.Event()
        self.ready = threading.Event()
        self.threads: list[threading.Thread] = []
        self.beats: dict[str, float] = {}
        self.busy: dict[str, int | None] = {}
        self.schedule = schedule_of(config)
        self.limiter = RateLimiter(config.schedule.max_upload_rate, self.stop)
        self.alerts = Alerts(config.notify.command, config.notify.webhook, config.studio)
        self.queue: JobQueue | None = None
        self.expectations: Any = None  # daemon.expectations.Expectations when a folder has a timetable
        self.storage: StorageGuard | None = None
        self.folder_locks: FolderLocks | None = None
        self.failure: StudioWatchError | None = None  # why the daemon stopped by itself (exit 1)
        self._not_before = 0.0  # time.monotonic(): a clock step must not move it
        self._pause_alerted = False
        self._folder_alerted: set[Path] = set()

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
            tokens = self.tokens or make_tokens(self.config, queue)
            if not self._until_written(lambda: self._recover(queue), "startup recovery"):
                return
            client = StudioClient(self.config.studio, self.config.retry, tokens, self.stop, self.limiter)
            self.pause = PauseSwitch(queue, client, self.config.retry, self.stop)
            self.storage = StorageGuard(queue, self.config.retry, self.stop, on_change=self._storage_changed)
            self.pipeline = Pipeline(queue, client, self.config.retry, self.pause, self.stop, self.activity,
                                     processed_timeout=self._processed_timeout, heartbeat=self._beat,
                                     hold_after_upload=self._hold_after_upload)
            self.alerts.start()
            self.activity.listeners.append(self._alert_on_failure)
            server = self._start_metrics(queue)
            if not queue.shared:  # a shared queue makes each file one job by itself
                self.folder_locks = FolderLocks(self.config.state_db)
            locks = self.folder_locks
            self.watcher = watcher = Watcher(self.config.folders, self.config.observer, self.config.rescan_seconds,
                                             self._on_found, self.stop,
                                             claim=locks.claim if locks else None,
                                             release=(lambda rule: locks.release(rule.path)) if locks else None)
            watcher.start()
            self._start_expectations(queue)  # after the startup scan: lectures of a downtime are judged from it
            self._start_thread("settler", self._settle_loop)
            self._start_thread("prober", self.pause.probe_loop)
            self._start_thread("storage-prober", self.storage.probe_loop)
            jitter = self.config.schedule.start_jitter_seconds
            self._not_before = time.monotonic() + (random.uniform(0, jitter) if jitter else 0.0)
            for n in range(self.config.workers):
                self._start_thread(f"worker-{n + 1}", self._work_loop)
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
            self.kick_settler.set()
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
                self._safely(lambda: queue.set_meta(self._status_key(), None))
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
        recovered = queue.recover()
        if not queue.shared:  # a cluster's pause is the cluster's: a node joining it does not lift it
            queue.set_meta(PAUSE_KEY, None)
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
        from studio_watch.daemon.metrics import Metrics, MetricsServer

        metrics = Metrics(queue, self._paused, [str(f.path) for f in self.config.folders if f.expect is not None],
                          node=self.config.node_name if queue.shared else None, folders=self._folder_states)
        self.activity.listeners.append(metrics.on_event)
        server = MetricsServer(self.config.metrics.listen, metrics, self.healthy,
                               lambda: self.ready.is_set() and not self._paused(),
                               detail=self._degraded)
        server.start()
        log.info("metrics_listening", listen=self.config.metrics.listen)
        return server

    def _start_expectations(self, queue: JobQueue) -> None:
        """The timetable check, only when some folder has `expect:` (quiet by default)."""
        if self.expectations is None and not any(f.expect is not None for f in self.config.folders):
            return
        if self.expectations is None:
            from studio_watch.daemon.expectations import Expectations
            from studio_watch.studio.fetch import fetch_document

            studio = self.config.studio
            self.expectations = Expectations(
                queue, self.alerts, self.config.local_state,
                lambda url: fetch_document(url, studio.ca_bundle, studio.timeout_seconds, studio),
                on_missing=self.activity.recording_missing)
            self.expectations.update_rules(self.config.folders)
            self._start_thread("timetable", lambda: self.expectations.run(self.stop))
        else:
            self.expectations.update_rules(self.config.folders)

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
            self._alert_on_long_pause()
            self._alert_on_folders()

    def _clamp(self) -> None:
        if self.queue is not None and self.queue.clamp_times(self.queue.now(), self._max_wait()):
            self.wake.set()
            self.kick_settler.set()

    def _max_wait(self) -> float:
        """The longest wait a job may be given (a Retry-After is capped at retry.max_seconds)."""
        return self.config.retry.max_seconds + 60.0

    def _storage_changed(self) -> None:
        """The state database's disk filled or has room again; once it has, look for the files found meanwhile
        (they could not be recorded)."""
        self.wake.set()
        if self.storage is not None and not self.storage.paused and getattr(self, "watcher", None) is not None:
            self.watcher.scan_all()

    def _paused(self) -> bool:
        return self.pause.paused or (self.storage is not None and self.storage.paused)

    def _degraded(self) -> list[str]:
        """What is wrong without being fatal, one line each (for /healthz and `status`)."""
        lines = self.watcher.degraded() if getattr(self, "watcher", None) is not None else []
        if self.storage is not None and self.storage.paused:
            lines.append(f"queue paused: {self.storage.reason}")
        return lines

    def _folder_states(self) -> list[dict[str, Any]]:
        return self.watcher.folder_status()

    def healthy(self) -> bool:
        """Observers and rescanner alive, every thread alive, and no worker stuck (no heartbeat for too long)."""
        if not (self.watcher.alive() and all(t.is_alive() for t in self.threads)):
            return False
        # A worker shows life at every step and every progress report; silent for longer than one request with
        # all its client-side retries can take, it is stuck.
        hung_after = self.config.retry.request_tries * (self.config.studio.timeout_seconds + MAX_CLIENT_WAIT) + 60
        now = time.monotonic()
        return all(now - beat < hung_after for beat in list(self.beats.values()))

    def status_line(self) -> str:
        assert self.queue is not None
        counts = self.queue.counts()
        waiting = counts["settling"] + counts["ready"]
        busy = sum(1 for job in self.busy.values() if job is not None)
        paused = f"paused: {self.pause.reason}; " if self.pause.paused else ""
        if self.storage is not None and self.storage.paused:
            paused += f"paused: {self.storage.reason}; "
        closed = "" if self.schedule.open() else "outside upload hours; "
        degraded = "".join(f"; {line}" for line in self.watcher.degraded())
        return (f"{paused}{closed}uploading {busy}, {waiting} waiting, {counts['completed']} completed, "
                f"{counts['failed']} failed{degraded}")

    def _publish(self) -> None:
        """A snapshot for `status` (another process): folders, live transfers, schedule."""
        assert self.queue is not None
        with self.activity.lock:
            transfers = [{"id": t.job_id, "bytes_sent": t.sent, "size": t.total,
                          "seconds": round(time.monotonic() - t.started, 1)} for t in self.activity.transfers.values()]
        snapshot = {"pid": os.getpid(), "at": time.time(), "folders": self.watcher.folder_status(),
                    "transfers": transfers, "healthy": self.healthy(), "upload_window_open": self.schedule.open(),
                    "uploaded_bytes": self.activity.uploaded_bytes,
                    "storage_paused": self.storage.reason if self.storage is not None else None}
        if self.expectations is not None:
            snapshot["timetables"] = self.expectations.snapshot()
        snapshot["node"] = self.config.node_name
        self.queue.set_meta(self._status_key(), json.dumps(snapshot))
        self.queue.node_seen(snapshot)

    def _status_key(self) -> str:
        """The meta key of this daemon's snapshot: one per node in a cluster."""
        assert self.queue is not None
        return f"{STATUS_KEY}:{self.config.node_name}" if self.queue.shared else STATUS_KEY

    # -- reload and alerts -------------------------------------------------------------------------------------

    def reload(self) -> None:
        """SIGHUP: apply a new config to folders, schedule and alerts; keep the old one if the new is invalid."""
        try:
            new = cfg.load(self.config.source)
        except ConfigError as exc:
            log.error("config_reload_rejected", error=str(exc), kept="the running configuration")
            return
        fixed = [key for key in ("state_db", "workers", "studio", "metrics", "observer")
                 if getattr(new, key) != getattr(self.config, key)]
        self.config = new
        self.schedule = schedule_of(new)
        self.limiter.rate = new.schedule.max_upload_rate
        self.alerts.command, self.alerts.webhook = new.notify.command, new.notify.webhook
        self.watcher.rescan_seconds = new.rescan_seconds
        self.watcher.update_rules(new.folders)
        if self.queue is not None:
            self._start_expectations(self.queue)
        log.info("config_reloaded", folders=len(new.folders), needs_restart=fixed or None)

    def _alert_on_failure(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "job_failed":
            self.alerts.send("job_failed", **data)

    def _alert_on_folders(self) -> None:
        """Alert on a folder unavailable past notify.folder_missing_after_seconds, and again when it is back."""
        unavailable = self.watcher.unavailable
        for path in list(self._folder_alerted - set(unavailable)):
            self._folder_alerted.discard(path)
            self.alerts.send("folder_available", folder=str(path), resolved=True)
        for path, gone in list(unavailable.items()):
            if path not in self._folder_alerted and \
                    time.time() - gone.since >= self.config.notify.folder_missing_after_seconds:
                self._folder_alerted.add(path)
                self.alerts.send("folder_unavailable", folder=str(path), reason=gone.reason, since=gone.since)

    def _alert_on_long_pause(self) -> None:
        since = self.pause.since if self.pause.paused else None
        if since is None:
            self._pause_alerted = False
        elif not self._pause_alerted and time.time() - since >= self.config.notify.paused_after_seconds:
            self._pause_alerted = True
            self.alerts.send("queue_paused", reason=self.pause.reason, since=since)

    # -- finding and settling ----------------------------------------------------------------------------------

    def _on_found(self, found: list[Found], is_scan: bool) -> None:
        try:
            self._record_found(found, is_scan)
        except DatabaseUnavailable as exc:  # the next rescan hands these files over again
            log.warning("database_unavailable", during="found", files=len(found), error=str(exc))

    def _record_found(self, found: list[Found], is_scan: bool) -> None:
        assert self.queue is not None
        if is_scan:  # a rescan sees every file: only hand over the new and the changed
            known = self.queue.latest_by_path()
            found = [f for f in found if _changed(known.get(os.fsencode(f.path)), f.stat)]
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
        self.kick_settler.set()

    def _settle_loop(self) -> None:
        assert self.queue is not None
        while not self.stop.is_set():
            try:
                next_due = self.settle_once()
            except DatabaseUnavailable as exc:
                log.warning("database_unavailable", during="settle", error=str(exc))
                next_due = time.time() + 1.0
            except StorageFull as exc:
                if self.storage is not None:
                    self.storage.trip(exc)
                next_due = time.time() + 1.0
            except Exception:
                log.exception("settle_failed")
                next_due = time.time() + 1.0
            timeout = 1.0 if next_due is None else min(1.0, max(0.01, next_due - self.queue.now()))
            self.kick_settler.wait(timeout)
            self.kick_settler.clear()

    def settle_once(self, now: float | None = None) -> float | None:
        """Promote settled files to ready, SETTLE_BATCH to a transaction; returns when the next one is due."""
        assert self.queue is not None
        next_due: float | None = None
        batch: list[tuple[Job, Settled, tuple[str, dict[str, Any]] | None]] = []
        now = self.queue.now() if now is None else now
        for job in self.queue.settling():
            # a settle clock in the future was written under a clock since stepped back: counted from now
            due: float | None = min(job.stable_since or now, now) + job.settle_seconds
            if due is not None and due <= now:
                change, due, event = self._settle(job, now)
                batch.append((job, change, event))
                if len(batch) >= SETTLE_BATCH:
                    self._promote(batch)
                    batch = []
            if due is not None:
                next_due = due if next_due is None else min(next_due, due)
        if batch:
            self._promote(batch)
        return next_due

    def _promote(self, batch: list[tuple[Job, Settled, tuple[str, dict[str, Any]] | None]]) -> None:
        """Commit settle decisions in one transaction: each only if its row is still as it was looked at (a
        watcher event, on this node or another, may have changed it meanwhile)."""
        assert self.queue is not None
        changed = self.queue.settle([decision for _, decision, _ in batch])
        for job, _, event in batch:
            if job.id in changed and event is not None:
                name, fields = event
                (log.error if name == "job_failed" else log.info)(name, **fields)
        if any(decision.state is State.READY for job, decision, _ in batch if job.id in changed):
            self.wake.set()

    def _settle(self, job: Job, now: float) -> tuple[Settled, float | None, tuple[str, dict[str, Any]] | None]:
        change, due, event = self._look(job, now)
        state = change.pop("state", State.SETTLING)
        return Settled(job.id, job.identity, state, change), due, event

    def _look(self, job: Job, now: float) -> tuple[dict[str, Any], float | None, tuple[str, dict[str, Any]] | None]:
        """Look at one file whose settle time is up: (the change to commit, when it is next due, what to log)."""
        assert job.path is not None
        about = {"job_id": job.id, "path": job.display_path}
        try:
            st = os.lstat(job.path)  # the entry itself: a symlink is never followed
        except FileNotFoundError:
            if job.folder and not os.path.isdir(job.folder):  # an unmounted share, not a vanished file: look later
                return {"stable_since": now}, now + max(job.settle_seconds, 10.0), None
            return {"state": State.SKIPPED, "reason": "vanished"}, None, ("job_skipped", {**about, "reason": "vanished"})
        except OSError as exc:
            why = f"cannot stat: {exc.strerror}"
            return {"state": State.FAILED, "reason": why, "last_error": why}, None, ("job_failed", {**about, "error": why})
        outside = sources.not_a_plain_file(job.path, st, job.folder)
        if outside is not None:  # a link or a FIFO swapped in, or a subfolder turned into a link out of the folder
            return {"state": State.SKIPPED, "reason": outside}, None, ("job_skipped", {**about, "reason": outside})
        if sources.identity_of(st) != job.identity:
            since = settle_clock(st.st_mtime_ns, job.updated_at, now)
            return ({"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino, "device": st.st_dev,
                     "stable_since": since}, since + job.settle_seconds, None)
        if self.watcher.writing(job.path) or sources.open_for_writing(job.path):
            # A writer still holds it (files/writers.py): not finished, however quiet it is; the settle time
            # counts again from its close.
            return {"stable_since": now}, now + max(job.settle_seconds, 1.0), None
        if st.st_size == 0:
            return {"state": State.SKIPPED, "reason": "empty"}, None, ("job_skipped", {**about, "reason": "empty"})
        if st.st_size > cfg.MAX_UPLOAD_BYTES and job.kind == "file":
            why = f"file is {st.st_size:,} bytes; Studio accepts at most {cfg.MAX_UPLOAD_BYTES:,} (10 GB)"
            self.activity.failure("too_large")
            return {"state": State.FAILED, "reason": why, "last_error": why}, None, ("job_failed", {**about, "error": why})
        if job.kind == "file":
            media_id = marks.uploaded_as(job.path, st, job.collection_id, job.user_id,
                                         same_inode_only=job.duplicates == "upload")
            if media_id is not None:  # uploaded before, by a database that is gone: never twice
                return ({"state": State.SKIPPED, "reason": "already uploaded (marked on the file)",
                         "media_id": media_id}, None,
                        ("job_skipped", {**about, "reason": "already_uploaded", "media_id": media_id}))
        rule = rule_for(self.config.folders, job.path) or cfg.FolderRule(path=Path(job.folder or "/"))
        folder, path = Path(job.folder or rule.path), Path(job.path)
        title = logs.title_text(cfg.render(rule.title, path, folder, st.st_size, st.st_mtime))
        description = cfg.render(rule.description, path, folder, st.st_size, st.st_mtime)
        return ({"state": State.READY, "title": title, "description": description, "next_attempt_at": now}, None,
                ("file_ready", {**about, "bytes": st.st_size, "title": title}))

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

    def _processed_timeout(self, job: Job) -> float:
        rule = rule_for(self.config.folders, job.path) if job.path else None
        return (rule or cfg.FolderRule(path=Path("/"))).processed_timeout_seconds

    # -- workers ----------------------------------------------------------------------------------------------

    def _beat(self) -> None:
        self.beats[threading.current_thread().name] = time.monotonic()

    def _work_loop(self) -> None:
        assert self.queue is not None
        name = threading.current_thread().name
        owner = self.queue.owner(name)
        while not self.stop.is_set():
            self.beats[name], self.busy[name] = time.monotonic(), None
            try:
                self._work_once(owner, name)
            except DatabaseUnavailable as exc:  # PostgreSQL down or restarting: wait for it, quietly
                log.warning("database_unavailable", worker=name, error=str(exc))
                self.stop.wait(1.0)
            except StorageFull as exc:  # the job stays claimed: released when the disk has room again
                assert self.storage is not None
                self.storage.trip(exc, self.busy.get(name))
            except Exception:  # the database or a bug: log, breathe, go on; the job stays claimed until restart
                log.exception("worker_error", worker=name)
                self.stop.wait(1.0)

    def _work_once(self, owner: str, name: str) -> None:
        assert self.queue is not None
        if not self.turns.begin(name, self.stop, self._beat):
            return
        jobs: list[Job] = []
        try:
            # Looked at with the turn in hand: waiting for one can take a while, and a pause or the end of the
            # upload hours may have come meanwhile.
            paused = self._paused()
            closed_for = max(self._not_before - time.monotonic(), self.schedule.seconds_until_open())
            if not paused and closed_for <= 0:
                jobs = self.queue.claim(owner)
                for job in jobs:
                    self.busy[name] = job.id
                    self.pipeline.run(job)
        finally:
            self.turns.end(name)
        if paused:
            if self.pause.paused:
                self.pause.wait_resumed(1.0)
            else:
                self.wake.wait(1.0)
                self.wake.clear()
        elif closed_for > 0:
            self.stop.wait(min(closed_for, 10.0))
        elif not jobs:
            due = self.queue.next_due()
            self.wake.wait(1.0 if due is None else min(1.0, max(0.01, due - self.queue.now())))
            self.wake.clear()


def _changed(known: tuple[str, tuple[Any, ...]] | None, st: os.stat_result) -> bool:
    """Does a rescanned file need the queue's attention? (New, or changed since its last finished job.)"""
    if known is None:
        return True
    state, identity = known
    if state == "vanished":  # it was gone when its job looked; it is back
        return True
    return identity != sources.identity_of(st) and state in (
        State.SETTLING.value, State.COMPLETED.value, State.FAILED.value, State.SKIPPED.value)
