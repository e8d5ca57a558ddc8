"""Workers take turns starting jobs, so CPU-bound jobs do not trade the interpreter lock for nothing."""

from __future__ import annotations

import threading
import time
from typing import Callable

JOIN_AFTER = 0.02  # seconds a job must have been running before another worker starts one beside it


class TurnTaking:
    """Workers start a job beside another only once that one has run for `join_after` seconds (why and the
    numbers: docs/decisions/turn-taking.md)."""

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
