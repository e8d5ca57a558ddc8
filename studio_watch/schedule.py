"""When and how fast to upload: upload windows and a bandwidth limit shared by every worker.

Upload windows are lines such as `Mon-Fri 18:00-07:00` or `Sat,Sun 00:00-24:00` or `* 22:00-06:00`; a window
that passes midnight belongs to the day it starts on. Outside every window no new job is started (a transfer
already under way finishes). The rate limit is a token bucket that the PUT's chunk loop draws from.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_LINE = re.compile(r"^\s*(?P<days>\S+)\s+(?P<start>\d{1,2}:\d{2})\s*-\s*(?P<end>\d{1,2}:\d{2})\s*$")


@dataclass(frozen=True)
class Window:
    days: frozenset[int]  # 0 = Monday
    start: int  # minutes after midnight
    end: int  # minutes after midnight; <= start means "into the next day"

    def contains(self, when: datetime) -> bool:
        minute = when.hour * 60 + when.minute
        today, yesterday = when.weekday(), (when.weekday() - 1) % 7
        if self.start < self.end:
            return today in self.days and self.start <= minute < self.end
        return (today in self.days and minute >= self.start) or (yesterday in self.days and minute < self.end)


def parse_window(text: str) -> Window:
    """Parse one `DAYS HH:MM-HH:MM` line; raises ValueError with what is wrong."""
    match = _LINE.match(text)
    if not match:
        raise ValueError(f"expected 'DAYS HH:MM-HH:MM' such as 'Mon-Fri 18:00-07:00', got {text!r}")
    return Window(_days(match["days"]), _minutes(match["start"]), _minutes(match["end"]))


def _minutes(text: str) -> int:
    hours, minutes = (int(part) for part in text.split(":"))
    if not (0 <= hours <= 24 and 0 <= minutes < 60) or (hours == 24 and minutes):
        raise ValueError(f"not a time of day: {text!r}")
    return hours * 60 + minutes


def _days(text: str) -> frozenset[int]:
    if text in ("*", "daily", "every"):
        return frozenset(range(7))
    days: set[int] = set()
    for part in text.lower().split(","):
        first, _, last = part.partition("-")
        if first[:3] not in DAYS or (last and last[:3] not in DAYS):
            raise ValueError(f"unknown day in {text!r}: use Mon..Sun, ranges (Mon-Fri), lists (Sat,Sun) or *")
        a = DAYS.index(first[:3])
        b = DAYS.index(last[:3]) if last else a
        days.update(range(a, b + 1) if a <= b else [*range(a, 7), *range(0, b + 1)])
    return frozenset(days)


class Schedule:
    """Upload windows (none: always open)."""

    def __init__(self, windows: tuple[Window, ...] = ()) -> None:
        self.windows = windows

    def open(self, when: datetime | None = None) -> bool:
        when = when or datetime.now()
        return not self.windows or any(w.contains(when) for w in self.windows)

    def seconds_until_open(self, when: datetime | None = None) -> float:
        """0 when open; else how long until the next window opens (to the minute)."""
        when = when or datetime.now()
        if self.open(when):
            return 0.0
        probe = when.replace(second=0, microsecond=0)
        for _ in range(8 * 24 * 60):
            probe += timedelta(minutes=1)
            if self.open(probe):
                return (probe - when).total_seconds()
        return 3600.0


class RateLimiter:
    """A token bucket shared by every worker: `take(n)` blocks until n bytes may be sent (or stop is set)."""

    def __init__(self, bytes_per_second: int | None, stop: threading.Event | None = None) -> None:
        self.rate = bytes_per_second
        self.stop = stop or threading.Event()
        self._lock = threading.Lock()
        self._allowance = 0.0
        self._last = time.monotonic()

    def take(self, n: int) -> None:
        if not self.rate:
            return
        with self._lock:
            now = time.monotonic()
            self._allowance = min(self.rate, self._allowance + (now - self._last) * self.rate) - n
            self._last = now
            debt = -self._allowance / self.rate if self._allowance < 0 else 0.0
        if debt > 0:
            self.stop.wait(debt)
