"""The queue-wide pause: tripped by an outage or a refused token; a probe loop resumes it when /ping answers."""

from __future__ import annotations

import threading
import time

from studio_watch.logs import get_logger
from studio_watch import config as cfg
from studio_watch.errors import AuthError, StudioError, StudioWatchError
from studio_watch.daemon.snapshot import PauseRecord
from studio_watch.queue import JobQueue
from studio_watch.studio.client import StudioClient
from studio_watch.studio.retry import backoff

log = get_logger(__name__)

class Prober:
    """A queue-wide pause that ends when a probe succeeds: while `paused`, `_probe(tries)` runs on a growing
    backoff (at most PROBE_CAP seconds apart); `_tripped` ends the idle wait when the pause begins."""

    PROBE_CAP: float | None = None
    retry: cfg.RetryConfig
    stop: threading.Event
    _tripped: threading.Event

    @property
    def paused(self) -> bool:
        raise NotImplementedError

    def _probe(self, tries: int) -> None:
        raise NotImplementedError

    def wake(self) -> None:
        """End the idle wait now (with `stop` set: the loop returns at once instead of within a second, which a
        one-shot `upload` paid at every exit)."""
        self._tripped.set()

    def probe_loop(self) -> None:
        tries = 0
        while not self.stop.is_set():
            if not self.paused:
                tries = 0
                self._tripped.wait(1.0)
                self._tripped.clear()
                continue
            tries += 1
            wait = backoff(tries, self.retry)
            if self.stop.wait(wait if self.PROBE_CAP is None else min(wait, self.PROBE_CAP)):
                return
            self._probe(tries)


class PauseSwitch(Prober):
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
            self._record(PauseRecord(reason, self.since))
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
        shared = PauseRecord.load(self.queue)
        with self._lock:
            if shared is not None and not self.paused:
                self.reason, self.since = shared.reason, shared.since
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

    def _record(self, pause: PauseRecord | None) -> None:
        """The pause for `status`; a database that cannot be written (disk full) must not stop the pause."""
        try:
            if pause is None:
                PauseRecord.clear(self.queue)
            else:
                pause.save(self.queue)
        except StudioWatchError as exc:
            log.warning("pause_not_recorded", error=str(exc))

    def wake(self) -> None:
        """End the probe loop's idle wait now (the stop sequence calls it after setting `stop`)."""
        self._tripped.set()

    def wait_resumed(self, timeout: float) -> bool:
        return self._resumed.wait(timeout)

    def _probe(self, tries: int) -> None:
        """While paused: ping Studio; resume when it answers."""
        try:
            self.client.probe()
        except StudioError as exc:
            if isinstance(exc, AuthError) and self.reason != str(exc):
                self.reason = str(exc)
            log.info("queue_still_paused", reason=self.reason, probe_error=str(exc), probes=tries)
            return
        self.clear()
