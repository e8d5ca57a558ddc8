"""Process-level controls the daemon is built from: the database lock, the queue-wide pause, the workers' turn
taking, live activity for status and metrics, and the systemd notify protocol."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import structlog

from studio_watch.private import private_dir
from studio_watch import config as cfg
from studio_watch.errors import AuthError, DatabaseLocked, StudioError, StudioWatchError
from studio_watch.queue import Job, JobQueue
from studio_watch.daemon.pipeline import Observer, backoff
from studio_watch.studio.client import StudioClient

log = structlog.get_logger(__name__)

PAUSE_KEY = "paused"
STATUS_KEY = "daemon"
JOIN_AFTER = 0.02  # seconds a job must have been running before another worker starts one beside it


class DaemonLock:
    """An exclusive flock on `<state_db>.lock` holding the holder's pid and role ("daemon", or "upload" for the
    `upload` command working alone): one process works on a database's queue at a time."""

    def __init__(self, db: Path, role: str = "daemon") -> None:
        self.path = Path(str(db) + ".lock")
        self.role = role
        self.fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent)  # the state directory, made 0700 if it is ours to make
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, role = self.holder(fd)
            os.close(fd)
            raise DatabaseLocked(str(self.path)[:-5], pid, role) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.role}\n".encode())
        except OSError as exc:  # a full disk: the lock holds all the same, only `status` cannot name the pid
            log.warning("lock_file_not_written", path=str(self.path), error=exc.strerror)
        self.fd = fd

    @staticmethod
    def holder(fd: int) -> tuple[int | None, str]:
        """(pid, role) as the holder wrote them (a lock file from before roles holds only a daemon's pid)."""
        try:
            pid, _, role = os.pread(fd, 64, 0).decode().strip().partition(" ")
            return (int(pid) if pid else None), role or "daemon"
        except (OSError, ValueError):
            return None, "daemon"

    def held_by_other(self) -> int | None:
        """The pid of the process holding the lock right now (None when nobody does; -1 when unknown)."""
        held = self.holding()
        return None if held is None else held[0]

    def holding(self) -> tuple[int, str] | None:
        """(pid, role) of the process holding the lock right now (None when nobody does; pid -1 when unknown)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, role = self.holder(fd)
            return pid or -1, role
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

    def wake(self) -> None:
        """End the probe loop's idle wait now (the stop sequence calls it after setting `stop`)."""
        self._tripped.set()

    def trip(self, reason: str) -> None:
        with self._lock:
            if self.paused:
                return
            self.reason, self.since = reason, time.time()
            self._resumed.clear()
            self._record(json.dumps({"reason": reason, "since": self.since}))
        log.error("queue_paused", reason=reason)
        self._tripped.set()

    def clear(self) -> None:
        with self._lock:
            if not self.paused:
                return
            paused_for = time.time() - (self.since or time.time())
            self.reason = self.since = None
            self._record(None)
            self._resumed.set()
        log.info("queue_resumed", paused_seconds=round(paused_for, 1))

    def follow_shared(self) -> None:
        """A cluster shares one pause (in the queue's meta): adopt one another node tripped, and resume when
        whichever node's probe got an answer first lifted it. Called from the daemon's main loop."""
        text = self.queue.meta(PAUSE_KEY)
        shared = json.loads(text) if text else None
        with self._lock:
            if shared is not None and not self.paused:
                self.reason, self.since = shared.get("reason"), shared.get("since")
                self._resumed.clear()
            elif shared is None and self.paused:
                paused_for = time.time() - (self.since or time.time())
                self.reason = self.since = None
                self._resumed.set()
            else:
                return
        if shared is not None:
            log.error("queue_paused", reason=self.reason, by="another node")
            self._tripped.set()
        else:
            log.info("queue_resumed", paused_seconds=round(paused_for, 1), by="another node")

    def _record(self, value: str | None) -> None:
        """The pause for `status`; a database that cannot be written (disk full) must not stop the pause."""
        try:
            self.queue.set_meta(PAUSE_KEY, value)
        except StudioWatchError as exc:
            log.warning("pause_not_recorded", error=str(exc))

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


class TurnTaking:
    """Workers start a job beside another only once that one has run for `join_after` seconds.

    All workers share one interpreter. When jobs are CPU-bound (small clips, a fast server), two threads
    running at once only trade the interpreter lock between cores: measured with 1,000 small files, a second
    worker cost ~40 % more CPU and wall time for nothing. When jobs wait (a long PUT, a distant or slow server,
    a Retry-After), the others are worth running and do: each job then outlives `join_after` (20 ms), so every
    worker is soon busy, and a ramp of a few tens of milliseconds is the whole cost.
    """

    def __init__(self, join_after: float = JOIN_AFTER) -> None:
        self.join_after = join_after
        self._lock = threading.Lock()
        self._started: dict[str, float] = {}  # worker → when its current job started

    def begin(self, worker: str, stop: threading.Event, beat: Callable[[], None] = lambda: None) -> bool:
        """Wait until `worker` may start a job (calling `beat` as it waits: it is alive); False if `stop` was set
        meanwhile. Pair with `end`."""
        while True:
            beat()
            with self._lock:
                now = time.monotonic()
                youngest = max((t for w, t in self._started.items() if w != worker), default=None)
                if youngest is None or now - youngest >= self.join_after:
                    self._started[worker] = now
                    return True
                wait = self.join_after - (now - youngest)
            if stop.wait(wait):
                return False

    def end(self, worker: str) -> None:
        with self._lock:
            self._started.pop(worker, None)


@dataclass
class Transfer:
    job_id: int
    sent: int
    total: int
    started: float
    last: float


class Activity(Observer):
    """Live facts for status lines, metrics and alerts: current transfers, bytes sent, failures.

    Listeners receive ("put_done", {"bytes", "seconds"}), ("failure", {"reason"}) and
    ("job_failed", {"job": summary}) and ("recording_missing", {"folder"}) events.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transfers: dict[int, Transfer] = {}
        self.uploaded_bytes = 0
        self.listeners: list[Callable[[str, dict[str, Any]], None]] = []

    def put_done(self, nbytes: int, seconds: float) -> None:
        with self.lock:
            self.uploaded_bytes += nbytes
        self._emit("put_done", {"bytes": nbytes, "seconds": seconds})

    def failure(self, reason: str) -> None:
        self._emit("failure", {"reason": reason})

    def recording_missing(self, folder: str) -> None:
        self._emit("recording_missing", {"folder": folder})

    def job_failed(self, job: Job, error: str) -> None:
        self._emit("job_failed", {"job": {**job.summary(), "last_error": error}})

    def progress(self, job_id: int, sent: int, total: int) -> None:
        now = time.monotonic()
        with self.lock:
            transfer = self.transfers.setdefault(job_id, Transfer(job_id, 0, total, now, now))
            transfer.sent, transfer.last = sent, now

    def transfer_ended(self, job_id: int) -> None:
        with self.lock:
            self.transfers.pop(job_id, None)

    def _emit(self, kind: str, data: dict[str, Any]) -> None:
        for listener in self.listeners:
            try:
                listener(kind, data)
            except Exception:  # a metrics or alert bug must not fail an upload
                log.exception("activity_listener_failed", kind=kind)


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
