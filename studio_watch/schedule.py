"""When and how fast to upload: upload windows and a bandwidth limit shared by every worker.

Upload windows are lines such as `Mon-Fri 18:00-07:00` or `Sat,Sun 00:00-24:00` or `* 22:00-06:00`; a window
that passes midnight belongs to the day it starts on. Outside every window no new job is started (a transfer
already under way finishes). Times are wall-clock times in `schedule.timezone` (default: the machine's).

The rate limit is a token bucket that the PUT's chunk loop draws from. Rates take units (`100M`, `50Mbit/s`)
and, like rclone's --bwlimit, a timetable: `"08:00,10M 18:00,off"` (10 MiB/s from 08:00, no limit from
18:00; entries may name a day: `Mon-08:00,10M`).
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo

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


# -- rates and durations --------------------------------------------------------------------------------------

_RATE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[a-zA-Z]*)\s*$")
# rclone's suffixes (binary: K = KiB/s), decimal bytes spelt kB/MB/GB, and bits for links sold in Mbit/s
_RATE_UNITS = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 1024**2, "mib": 1024**2, "g": 1024**3, "gib": 1024**3,
               "KB": 1000, "kB": 1000, "MB": 1000**2, "GB": 1000**3,
               "kbit": 1000 / 8, "mbit": 1000**2 / 8, "gbit": 1000**3 / 8}
RateTable = tuple[tuple[int, "int | None"], ...]  # (minute of the week it starts, bytes/s or None: no limit)


def parse_rate(value: int | float | str) -> int | None:
    """Bytes per second from `100M` (MiB/s, as rclone), `800K`, `12MB`, `50Mbit/s`, `125000`; None for `off`.
    Raises ValueError saying what is wrong."""
    if isinstance(value, bool):
        raise ValueError(f"expected a rate such as 10M, 50Mbit/s or off, got {value!r}")
    if isinstance(value, (int, float)):
        number, factor = float(value), 1.0
    else:
        if value.strip().lower() in ("off", "none", "unlimited"):
            return None
        text = value.strip()
        if text.endswith("/s"):
            text = text[:-2]
        elif text.lower().endswith("bps"):  # Mbps = Mbit/s
            text = text[:-3] + "bit"
        match = _RATE.match(text)
        unit = match["unit"] if match else ""
        factor = _RATE_UNITS.get(unit, _RATE_UNITS.get(unit.lower())) if match else None  # type: ignore[arg-type]
        if match is None or factor is None:
            raise ValueError(f"expected a rate such as 10M (MiB/s), 800K, 12MB, 50Mbit/s or off, got {value!r}")
        number = float(match["n"])
    rate = int(number * factor)
    if rate <= 0:
        raise ValueError(f"a rate must be more than 0 bytes per second (or off), got {value!r}")
    return rate


def parse_rate_table(value: int | float | str) -> RateTable:
    """One rate for all times, or a timetable `"[Day-]HH:MM,RATE ..."` (sorted; each holds until the next)."""
    if isinstance(value, str) and "," in value:
        entries: list[tuple[int, int | None]] = []
        for part in value.split():
            when, sep, rate = part.partition(",")
            day, dash, clock = when.rpartition("-") if "-" in when else ("", "", when)
            if not sep or (dash and day.lower()[:3] not in DAYS):
                raise ValueError(f"expected timetable entries such as '08:00,10M' or 'Mon-08:00,10M', got {part!r}")
            minute = _minutes(clock)
            if minute == 24 * 60:
                raise ValueError(f"not a time of day: {clock!r}")
            days = [DAYS.index(day.lower()[:3])] if dash else range(7)
            entries += [(d * 24 * 60 + minute, parse_rate(rate)) for d in days]
        entries.sort()
        return tuple(entries)
    return ((0, parse_rate(value)),)


def rate_at(table: RateTable, when: datetime) -> int | None:
    """The rate in force at `when`: the last entry at or before it (the week wraps round)."""
    if not table:
        return None
    minute = when.weekday() * 24 * 60 + when.hour * 60 + when.minute
    current = table[-1][1]
    for start, rate in table:
        if start > minute:
            break
        current = rate
    return current


_DURATION = re.compile(r"\s*(?:(\d+(?:\.\d+)?)w)?\s*(?:(\d+(?:\.\d+)?)d)?\s*(?:(\d+(?:\.\d+)?)h)?\s*"
                       r"(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*")


def parse_duration(text: str | int | float) -> float:
    """Seconds in `90`, `90s`, `20m`, `1h30m`, `2d`, `2w`; raises ValueError (zero is allowed: callers that
    need more say so)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ValueError(f"expected a duration of zero or more, got {text!r}")
        return float(text)
    parts = _DURATION.fullmatch(str(text))
    if not parts or not any(parts.groups()):
        raise ValueError(f"expected a duration such as 90s, 20m, 1h30m, 2d or 2w, got {text!r}")
    weeks, days, hours, minutes, seconds = (float(g) if g else 0.0 for g in parts.groups())
    return weeks * 604800 + days * 86400 + hours * 3600 + minutes * 60 + seconds


class Schedule:
    """Upload windows (none: always open) and the rate timetable, read in the time zone `tz` (None: local)."""

    def __init__(self, windows: tuple[Window, ...] = (), rates: RateTable = (), tz: tzinfo | None = None) -> None:
        self.windows, self.rates, self.tz = windows, rates, tz

    def now(self) -> datetime:
        return datetime.now(self.tz) if self.tz is not None else datetime.now()

    def rate(self, when: datetime | None = None) -> int | None:
        """Bytes per second allowed now (None: no limit)."""
        return rate_at(self.rates, when or self.now())

    def open(self, when: datetime | None = None) -> bool:
        when = when or self.now()
        return not self.windows or any(w.contains(when) for w in self.windows)

    def seconds_until_open(self, when: datetime | None = None) -> float:
        """0 when open; else how long until the next window opens (to the minute)."""
        when = when or self.now()
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
