"""The composition root: builds the queue, the client, the watcher and the workers, and runs them.

Threads: the watcher's observers and rescanner report files; the settler promotes settled files to `ready`;
`workers` threads claim and run jobs; the prober probes Studio while the queue is paused; the main thread
sleeps on the stop event and keeps systemd informed. Signal handlers only set the stop event. Teardown runs
in `finally`, in reverse order of construction.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import structlog

from . import config as cfg
from .errors import AuthError, DatabaseLocked, SourceUnreadable, StudioError
from .jobqueue import JobQueue, Seen, State, settle_clock
from .pipeline import Observer, Pipeline, backoff
from .studio import StaticToken, StudioClient, TokenSource
from .watcher import Found, Watcher, rule_for

log = structlog.get_logger("studio_watch.daemon")

PAUSE_KEY = "paused"


class DaemonLock:
    """An exclusive flock on `<state_db>.lock` holding the daemon's pid: one daemon per database."""

    def __init__(self, db: Path) -> None:
        self.path = Path(str(db) + ".lock")
        self.fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = self.holder(fd)
            os.close(fd)
            raise DatabaseLocked(str(self.path)[:-5], pid) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    @staticmethod
    def holder(fd: int) -> int | None:
        try:
            text = os.pread(fd, 32, 0).decode().strip()
            return int(text) if text else None
        except (OSError, ValueError):
            return None

    def held_by_other(self) -> int | None:
        """The pid of a daemon holding the lock right now (None when nobody does)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.holder(fd) or -1
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class PauseSwitch:
    """The queue-wide pause: tripped by an outage or a refused token, cleared when /ping answers again."""

    def __init__(self, queue: JobQueue, client: StudioClient, retry: cfg.RetryConfig, stop: threading.Event) -> None:
        self.queue, self.client, self.retry, self.stop = queue, client, retry, stop
        self._lock = threading.Lock()
        self._resumed = threading.Event()
        self._resumed.set()
        self._tripped = threading.Event()
        self.reason: str | None = None
        self.since: float | None = None

    @property
    def paused(self) -> bool:
        return not self._resumed.is_set()

    def trip(self, reason: str) -> None:
        with self._lock:
            if self.paused:
                return
            self.reason, self.since = reason, time.time()
            self._resumed.clear()
            self.queue.set_meta(PAUSE_KEY, json.dumps({"reason": reason, "since": self.since}))
        log.error("queue_paused", reason=reason)
        self._tripped.set()

    def clear(self) -> None:
        with self._lock:
            if not self.paused:
                return
            paused_for = time.time() - (self.since or time.time())
            self.reason = self.since = None
            self.queue.set_meta(PAUSE_KEY, None)
            self._resumed.set()
        log.info("queue_resumed", paused_seconds=round(paused_for, 1))

    def wait_resumed(self, timeout: float) -> bool:
        return self._resumed.wait(timeout)

    def probe_loop(self) -> None:
        """While paused, ping Studio on a growing backoff; resume when it answers."""
        tries = 0
        while not self.stop.is_set():
            if not self.paused:
                tries = 0
                self._tripped.wait(1.0)
                self._tripped.clear()
                continue
            tries += 1
            if self.stop.wait(backoff(tries, self.retry)):
                return
            try:
                self.client.probe()
            except StudioError as exc:
                if isinstance(exc, AuthError) and self.reason != str(exc):
                    self.reason = str(exc)
                log.info("queue_still_paused", reason=self.reason, probe_error=str(exc), probes=tries)
                continue
            self.clear()


@dataclass
class Transfer:
    job_id: int
    sent: int
    total: int
    started: float


class Activity(Observer):
    """Live facts for status lines and metrics: current transfers, bytes sent, failures."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transfers: dict[int, Transfer] = {}
        self.uploaded_bytes = 0
        self.put_seconds: list[float] = []
        self.failures: dict[str, int] = {}
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def put_done(self, nbytes: int, seconds: float) -> None:
        with self.lock:
            self.uploaded_bytes += nbytes
        self._emit("put_done", {"bytes": nbytes, "seconds": seconds})

    def failure(self, reason: str) -> None:
        with self.lock:
            self.failures[reason] = self.failures.get(reason, 0) + 1
        self._emit("failure", {"reason": reason})

    def progress(self, job_id: int, sent: int, total: int) -> None:
        with self.lock:
            transfer = self.transfers.setdefault(job_id, Transfer(job_id, 0, total, time.monotonic()))
            transfer.sent = sent
            if sent >= total:
                del self.transfers[job_id]

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        for listener in self.listeners:
            listener(kind, data)


def make_tokens(config: cfg.Config) -> TokenSource:
    """The token source the config asks for (raises ConfigError for a missing or loose secret)."""
    from . import logs

    if config.studio.oauth is not None:
        from .oauth import OAuthTokens

        tokens: TokenSource = OAuthTokens.from_config(config)
    else:
        tokens = StaticToken(lambda: _registered(cfg.static_token(config)))
    logs.register_secret(tokens.token())
    return tokens


def _registered(token: str | None) -> str:
    from . import logs

    assert token is not None
    logs.register_secret(token)
    return token


def to_seen(found: Found) -> Seen:
    r, st = found.rule, found.stat
    return Seen(path=found.path, folder=str(r.path), size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                device=st.st_dev, collection_id=r.collection_id, user_id=r.user_id, auto_caption=r.auto_caption,
                after_upload=r.after_upload, after_upload_when=r.after_upload_when,
                move_to=str(r.move_to) if r.move_to else None, duplicates=r.duplicates,
                settle_seconds=r.settle_seconds, kind="file" if found.kind == "file" else "link")


def sd_notify(message: str) -> bool:
    """Send one datagram to systemd's $NOTIFY_SOCKET ('@' = abstract namespace); a no-op without it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError as exc:
        log.warning("sd_notify_failed", error=str(exc))
        return False


class Daemon:
    """`studio-watch run`."""

    def __init__(self, config: cfg.Config, stop: threading.Event | None = None,
                 tokens: TokenSource | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.tokens = tokens
        self.activity = Activity()
        self.wake = threading.Event()
        self.kick_settler = threading.Event()
        self.threads: list[threading.Thread] = []
        self.ready = threading.Event()
        self.queue: JobQueue | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------

    def run(self) -> None:
        """Run until the stop event is set. Raises DatabaseLocked, ConfigError."""
        lock = DaemonLock(self.config.state_db)
        lock.acquire()
        client = watcher = None
        try:
            self.queue = queue = JobQueue(self.config.state_db)
            tokens = self.tokens or make_tokens(self.config)
            recovered = queue.recover()
            queue.set_meta(PAUSE_KEY, None)
            log.info("daemon_started", pid=os.getpid(), state_db=str(self.config.state_db),
                     folders=len(self.config.folders), workers=self.config.workers, recovered=len(recovered),
                     **{f"recovered_{s.value}": sum(1 for j in recovered if j.state is s) for s in
                        (State.URL_ISSUED, State.UPLOADED, State.COMPLETED)})
            client = StudioClient(self.config.studio, self.config.retry, tokens, self.stop)
            self.pause = PauseSwitch(queue, client, self.config.retry, self.stop)
            self.pipeline = Pipeline(queue, client, self.config.retry, self.pause, self.stop, self.activity,
                                     processed_timeout=self._processed_timeout)
            watcher = Watcher(self.config.folders, self.config.observer, self.config.rescan_seconds,
                              self._on_found, self.stop)
            self.watcher = watcher
            watcher.start()
            self._start_thread("settler", self._settle_loop)
            self._start_thread("prober", self.pause.probe_loop)
            for n in range(self.config.workers):
                self._start_thread(f"worker-{n + 1}", self._work_loop)
            self.ready.set()
            sd_notify("READY=1\nSTATUS=watching")
            log.info("daemon_ready")
            self._main_loop()
        finally:
            self.stop.set()
            sd_notify("STOPPING=1")
            self.wake.set()
            self.kick_settler.set()
            for thread in reversed(self.threads):
                thread.join(timeout=30)
            if watcher is not None:
                watcher.close()
            if client is not None:
                client.close()
            if self.queue is not None:
                self.queue.close()
            lock.release()
            log.info("daemon_stopped")

    def _start_thread(self, name: str, target: Callable[[], None]) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self.threads.append(thread)

    def _main_loop(self) -> None:
        interval = watchdog_interval()
        last_status = ""
        while not self.stop.wait(interval or 1.0):
            if interval and self.healthy():
                sd_notify("WATCHDOG=1")
            status = self.status_line()
            if status != last_status:
                sd_notify(f"STATUS={status}")
                last_status = status

    def healthy(self) -> bool:
        """Observers, rescanner and every worker thread alive."""
        return self.watcher.alive() and all(t.is_alive() for t in self.threads)

    def status_line(self) -> str:
        assert self.queue is not None
        counts = self.queue.counts()
        waiting = counts["settling"] + counts["ready"]
        busy = len(self.activity.transfers)
        paused = f"paused: {self.pause.reason}; " if self.pause.paused else ""
        return f"{paused}uploading {busy}, {waiting} waiting, {counts['completed']} completed, {counts['failed']} failed"

    # -- finding and settling ----------------------------------------------------------------------------------

    def _on_found(self, found: list[Found], is_scan: bool) -> None:
        assert self.queue is not None
        if is_scan:  # a rescan sees every file: only hand over the new and the changed
            known = self.queue.latest_by_path()
            found = [f for f in found if _changed(known.get(os.fsencode(f.path)), f.stat)]
        if not found:
            return
        created = self.queue.observe([to_seen(f) for f in found])
        for job_id, seen in created:
            log.info("file_found", job_id=job_id, path=show_path(seen.path), kind=seen.kind, bytes=seen.size)
        self.kick_settler.set()

    def _settle_loop(self) -> None:
        while not self.stop.is_set():
            try:
                next_due = self.settle_once(time.time())
            except Exception:
                log.exception("settle_failed")
                next_due = time.time() + 1.0
            timeout = 1.0 if next_due is None else min(1.0, max(0.01, next_due - time.time()))
            self.kick_settler.wait(timeout)
            self.kick_settler.clear()

    def settle_once(self, now: float) -> float | None:
        """Promote settled files to ready; returns when the next settling file is due."""
        assert self.queue is not None
        next_due: float | None = None
        for job in self.queue.settling():
            due = (job.stable_since or now) + job.settle_seconds
            if due > now:
                next_due = due if next_due is None else min(next_due, due)
                continue
            assert job.path is not None
            try:
                st = os.stat(job.path)
            except FileNotFoundError:
                self.queue.update(job.id, state=State.SKIPPED, reason="vanished")
                log.info("job_skipped", job_id=job.id, path=job.display_path, reason="vanished")
                continue
            except OSError as exc:
                self.queue.update(job.id, state=State.FAILED, reason=str(SourceUnreadable(exc.strerror)),
                                  last_error=f"cannot stat: {exc.strerror}")
                continue
            if (st.st_ino, st.st_size, st.st_mtime_ns) != job.identity:
                since = settle_clock(st.st_mtime_ns, job.updated_at, now)
                self.queue.update(job.id, size=st.st_size, mtime_ns=st.st_mtime_ns, inode=st.st_ino,
                                  device=st.st_dev, stable_since=since)
                due = since + job.settle_seconds
                next_due = due if next_due is None else min(next_due, due)
                continue
            self._promote(job, st, now)
        return next_due

    def _promote(self, job: Any, st: os.stat_result, now: float) -> None:
        assert self.queue is not None and job.path is not None
        if st.st_size == 0:
            self.queue.update(job.id, state=State.SKIPPED, reason="empty")
            log.info("job_skipped", job_id=job.id, path=job.display_path, reason="empty")
            return
        if st.st_size > cfg.MAX_UPLOAD_BYTES:
            why = f"file is {st.st_size:,} bytes; Studio accepts at most {cfg.MAX_UPLOAD_BYTES:,} (10 GB)"
            self.queue.update(job.id, state=State.FAILED, reason=why, last_error=why)
            self.activity.failure("too_large")
            log.error("job_failed", job_id=job.id, path=job.display_path, error=why)
            return
        rule = rule_for(self.config.folders, job.path) or cfg.FolderRule(path=Path(job.folder or "/"))
        title = cfg.render(rule.title, Path(job.path), Path(job.folder or rule.path), st.st_size, st.st_mtime)
        description = cfg.render(rule.description, Path(job.path), Path(job.folder or rule.path), st.st_size,
                                 st.st_mtime)
        self.queue.update(job.id, state=State.READY, title=title, description=description, next_attempt_at=now)
        log.info("file_ready", job_id=job.id, path=job.display_path, bytes=st.st_size, title=title)
        self.wake.set()

    def _processed_timeout(self, job: Any) -> float:
        rule = rule_for(self.config.folders, job.path) if job.path else None
        return rule.processed_timeout_seconds if rule else cfg.FolderRule(path=Path("/")).processed_timeout_seconds

    # -- workers ----------------------------------------------------------------------------------------------

    def _work_loop(self) -> None:
        assert self.queue is not None
        owner = f"{os.getpid()}:{threading.current_thread().name}"
        while not self.stop.is_set():
            if self.pause.paused:
                self.pause.wait_resumed(1.0)
                continue
            jobs = self.queue.claim(owner)
            if not jobs:
                due = self.queue.next_due()
                timeout = 1.0 if due is None else min(1.0, max(0.01, due - time.time()))
                self.wake.wait(timeout)
                self.wake.clear()
                continue
            for job in jobs:
                self.pipeline.run(job)


def watchdog_interval() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), if it applies to this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.05, int(usec) / 2e6)
    except ValueError:
        return None


def _changed(known: tuple[str, tuple[Any, ...]] | None, st: os.stat_result) -> bool:
    if known is None:
        return True
    state, identity = known
    return identity != (st.st_ino, st.st_size, st.st_mtime_ns) and state in (State.SETTLING.value, "completed",
                                                                              "failed", "skipped")


def show_path(path: str) -> str:
    """A path for humans and logs: bytes that are not UTF-8 shown as escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")
