"""The sandbox's fault model (stdlib only): the `Faults` knobs; the `Injector` that holds the live ones and
rolls them, request by request, on a generator seeded from them (so a seeded run repeats itself); and the
`Throttle` that holds an upload body to `put_bytes_per_second`."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass
from typing import Callable

ALL_ENDPOINTS: frozenset[str] = frozenset(
    {"generate", "put", "complete", "ping", "media", "import", "collections", "users"}
)
KNOWN_ENDPOINTS: frozenset[str] = ALL_ENDPOINTS | {"oauth"}
ERROR_STATUSES = (500, 502, 503, 504)


@dataclass
class Faults:
    """Fault injection knobs; every default means "no fault". Fields may be changed while serving."""

    error_rate: float = 0.0
    error_endpoints: frozenset[str] = ALL_ENDPOINTS
    rate_limit_rate: float = 0.0
    retry_after: str = "1"
    reset_rate: float = 0.0
    expire_first_put: bool = False
    url_ttl_seconds: float = 3600.0
    lose_complete_rate: float = 0.0
    captions_disabled: bool = False
    put_bytes_per_second: int = 0
    latency_seconds: float = 0.0
    token_ttl_seconds: float = 7200.0
    token_ttl_calls: int = 0
    transcode_seconds: float = 0.0
    transcode_fail: bool = False
    forbidden_collections: frozenset[int] = frozenset()
    max_upload_bytes: int = 10 * 1024**3
    echo_status: int = 0  # nonzero: every request to error_endpoints answers this status with a body echoing
                          # the request URI (query and all) and Authorization header, as object stores and
                          # proxies do in their error documents
    seed: int = 0


class Injector:
    """The live Faults and the seeded generator that decides whether one strikes this request."""

    def __init__(self, faults: Faults) -> None:
        """Start with `faults`, the generator seeded from them."""
        self._lock = threading.Lock()
        self._faults = faults
        self._rng = random.Random(faults.seed)

    @property
    def faults(self) -> Faults:
        """The live Faults object."""
        return self._faults

    @faults.setter
    def faults(self, faults: Faults) -> None:
        """Replace the faults and reseed the random generator from them."""
        with self._lock:
            self._faults = faults
            self._rng = random.Random(faults.seed)

    def roll(self, rate: float) -> bool:
        """Draw from the seeded generator: True with probability `rate`."""
        if rate <= 0:
            return False
        with self._lock:
            return self._rng.random() < rate

    def fault_for(self, endpoint: str) -> tuple[int, dict[str, str]] | None:
        """An injected (status, headers) for this request, or None to do the real work."""
        faults = self._faults
        if endpoint not in faults.error_endpoints:
            return None
        if self.roll(faults.rate_limit_rate):
            return 429, {"Retry-After": faults.retry_after}
        if self.roll(faults.error_rate):
            with self._lock:
                return self._rng.choice(ERROR_STATUSES), {}
        return None


class Throttle:
    """Token bucket for PUT reads (`put_bytes_per_second`): after each chunk, wait until the bytes so far fit
    the rate."""

    def __init__(self, rate: Callable[[], int], stop: threading.Event) -> None:
        """Read the (live) rate through `rate`; waits end early when `stop` is set."""
        self._rate = rate
        self._stop = stop
        self._due = time.monotonic()

    def chunk(self, most: int) -> int:
        """How much to read next, at most `most`: about 1/20 s worth when throttled."""
        rate = self._rate()
        return min(most, max(1024, rate // 20)) if rate > 0 else most

    def pace(self, n: int) -> None:
        """Account for n bytes and wait if ahead of schedule."""
        rate = self._rate()
        now = time.monotonic()
        if rate <= 0:
            self._due = now
            return
        self._due = max(self._due, now - 0.05) + n / rate
        if self._due > now:
            self._stop.wait(self._due - now)
