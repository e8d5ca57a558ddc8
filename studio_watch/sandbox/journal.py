"""What the sandbox saw (stdlib only): the request log, the client's protocol violations and the sandbox's own
errors; and the one lock, with its change signal, that every part of the sandbox state shares."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable


class Journal:
    """The log of requests, violations and errors; `lock` guards all sandbox state, `notify` says it changed."""

    def __init__(self) -> None:
        """Start empty, with a re-entrant lock whose `changed` condition wakes `wait_for`."""
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self._events: list[dict[str, Any]] = []
        self._violations: list[str] = []
        self._errors: list[str] = []
        self._version = 0

    def notify(self) -> None:
        """Count a change and wake everyone waiting in `wait_for` (lock held by the caller)."""
        self._version += 1
        self.changed.notify_all()

    def record_event(self, event: dict[str, Any]) -> None:
        """Append one request to the log."""
        with self.lock:
            self._events.append(event)
            self.notify()

    def add_violation(self, text: str) -> None:
        """Remember a protocol violation by the client."""
        with self.lock:
            self._violations.append(text)
            self.notify()

    def add_error(self, text: str) -> None:
        """Remember an internal sandbox error (a bug in the sandbox, not an injected fault)."""
        with self.lock:
            self._errors.append(text)
            self.notify()

    def events(self) -> list[dict[str, Any]]:
        """A copy of the request log."""
        with self.lock:
            return [dict(e) for e in self._events]

    def events_count(self) -> int:
        """How many requests the log holds."""
        with self.lock:
            return len(self._events)

    def violations(self) -> list[str]:
        """A copy of the violations."""
        with self.lock:
            return list(self._violations)

    def errors(self) -> list[str]:
        """A copy of the internal errors."""
        with self.lock:
            return list(self._errors)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Wait until predicate() is true or timeout passes; re-checked on every change (and every 50 ms,
        for time-based states such as transcoding). The predicate runs without the lock held, so it may
        itself talk to the sandbox over HTTP."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                seen = self._version
            if predicate():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with self.lock:
                if self._version == seen:
                    self.changed.wait(min(remaining, 0.05))
