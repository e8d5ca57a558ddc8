"""An iCalendar timetable expanded into lectures: weekly recurrences, their exceptions and their time zones.

Recurrence (RRULE, RDATE, EXDATE, moved occurrences with RECURRENCE-ID) and time zones (TZID, VTIMEZONE,
X-WR-TIMEZONE) are `icalendar` + `recurring-ical-events`; this module only decides what counts as a lecture:
an event with a start time (all-day events are holidays and notes, not sessions), not cancelled, in a zone
that is known. A time with no zone at all ("floating") is read in the calendar's X-WR-TIMEZONE, else in
`floating_zone` (the machine's zone by default).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from studio_watch.errors import StudioWatchError

UTC = dt.timezone.utc


class TimetableError(StudioWatchError):
    """An iCalendar source that cannot be used (unparseable, or not a calendar)."""


@dataclass(frozen=True)
class Lecture:
    """One expected session: `start` and `end` are aware datetimes in the timetable's own zone."""

    uid: str
    summary: str
    start: dt.datetime
    end: dt.datetime

    @property
    def key(self) -> str:
        """Stable across calendar re-reads: the event's UID and its start instant (a moved lecture is a new one)."""
        return f"{self.uid}@{self.start.astimezone(UTC):%Y%m%dT%H%M%SZ}"

    @property
    def starts_at(self) -> float:
        return self.start.timestamp()

    @property
    def ends_at(self) -> float:
        return self.end.timestamp()

    @property
    def zone(self) -> str | None:
        """The IANA name of its zone where there is one (for showing times as the timetable states them)."""
        tz = self.start.tzinfo
        return getattr(tz, "key", None) or getattr(tz, "zone", None)


class Timetable:
    """A parsed calendar. `lectures(start, end)` expands it; `problems()` lists what `check` should report."""

    def __init__(self, calendar: Any, source: str, floating_zone: dt.tzinfo | None = None) -> None:
        self.calendar, self.source = calendar, source
        self.floating_zone = floating_zone
        # By UID: an expanded occurrence no longer carries the TZID its series named.
        self._unknown = {str(e.get("UID")) for e in calendar.walk("VEVENT")
                         if any(_broken(e.get(n)) or _unknown_zone(e.get(n)) for n in ("DTSTART", "DTEND"))}

    @classmethod
    def parse(cls, data: bytes, source: str, floating_zone: dt.tzinfo | None = None) -> Timetable:
        import icalendar  # start-up cost: only a folder with a timetable parses one

        try:
            calendar = icalendar.Calendar.from_ical(data)
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise TimetableError(f"{source}: not a valid iCalendar file: {exc}") from None
        if getattr(calendar, "name", None) != "VCALENDAR":
            raise TimetableError(f"{source}: not an iCalendar file (no BEGIN:VCALENDAR)")
        return cls(calendar, source, floating_zone)

    def zone(self) -> dt.tzinfo | None:
        """The zone the timetable is written in (its first event's): the days `explain --date` means."""
        for event in self.calendar.walk("VEVENT"):
            value = None if _broken(event.get("DTSTART")) else getattr(event.get("DTSTART"), "dt", None)
            if isinstance(value, dt.datetime) and value.tzinfo is not None:
                return value.tzinfo
        return None

    def problems(self) -> list[str]:
        """Events whose time zone is unknown (their lectures are left out rather than judged at a wrong hour)."""
        found = []
        for event in self.calendar.walk("VEVENT"):
            for name in ("DTSTART", "DTEND"):
                prop = event.get(name)
                broken = _broken(prop)
                if broken:
                    found.append(f"event {str(event.get('SUMMARY', event.get('UID', '?')))!r}: {name} cannot be "
                                 f"read: {broken}")
                elif prop is not None and _unknown_zone(prop):
                    found.append(f"event {str(event.get('SUMMARY', event.get('UID', '?')))!r}: unknown time zone "
                                 f"{prop.params.get('TZID')!r} in {name}")
        return found

    def lectures(self, start: dt.datetime | float, end: dt.datetime | float) -> list[Lecture]:
        """Lectures overlapping [start, end), in order of start."""
        import recurring_ical_events  # start-up cost, as icalendar

        lo, hi = _instant(start), _instant(end)
        try:
            # Pad by a day: a floating time is only placed in its zone after the library has picked it.
            events = recurring_ical_events.of(self.calendar, skip_bad_series=True).between(
                lo - dt.timedelta(days=1), hi + dt.timedelta(days=1))
        except Exception as exc:  # the library's own error types vary between versions
            raise TimetableError(f"{self.source}: cannot expand the calendar's recurrences: {exc}") from None
        found = {}
        for event in events:
            lecture = self._lecture(event)
            if lecture is not None and lecture.end > lo and lecture.start < hi:
                found[lecture.key] = lecture
        return sorted(found.values(), key=lambda x: (x.start, x.uid))

    def _lecture(self, event: Any) -> Lecture | None:
        start_prop = event.get("DTSTART")
        if start_prop is None or str(event.get("STATUS", "")).upper() == "CANCELLED":
            return None
        if str(event.get("UID")) in self._unknown or _broken(start_prop) or _broken(event.get("DTEND")):
            return None  # a problem() already: an unreadable time, or a zone nobody knows
        start = start_prop.dt
        if not isinstance(start, dt.datetime) or _unknown_zone(start_prop) or str(event.get("UID")) in self._unknown:
            return None  # an all-day event, or a zone nobody knows
        end_prop = event.get("DTEND")
        end = end_prop.dt if end_prop is not None else None
        if end is None and event.get("DURATION") is not None:
            end = start + event["DURATION"].dt
        if not isinstance(end, dt.datetime) or (end_prop is not None and _unknown_zone(end_prop)):
            end = start
        start, end = self._aware(start), self._aware(end)
        if end < start:
            return None
        uid = str(event.get("UID") or f"{event.get('SUMMARY', '')}")
        return Lecture(uid=uid, summary=str(event.get("SUMMARY", "") or "(no title)"), start=start, end=end)

    def _aware(self, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is not None:
            return value
        if self.floating_zone is None:  # the machine's zone with the offset of that date, not of today
            return value.astimezone()
        return value.replace(tzinfo=self.floating_zone)


def _broken(prop: Any) -> str | None:
    """Why a date-time property cannot be read (icalendar keeps a typo as a broken property whose `.dt`
    raises BrokenCalendarProperty, a ValueError), or None."""
    try:
        getattr(prop, "dt", None)
    except ValueError as exc:
        return str(exc)
    return None


def _unknown_zone(prop: Any) -> bool:
    """A TZID the parser could not resolve leaves the time naive."""
    value = getattr(prop, "dt", None)
    return bool(getattr(prop, "params", {}).get("TZID")) and isinstance(value, dt.datetime) and value.tzinfo is None


def _instant(value: dt.datetime | float) -> dt.datetime:
    if isinstance(value, dt.datetime):
        return value if value.tzinfo is not None else value.astimezone()
    return dt.datetime.fromtimestamp(value, UTC)


def zone_named(name: str | None) -> dt.tzinfo:
    """A stored zone name as a tzinfo (the machine's zone when there is none or it is unknown here)."""
    try:
        if name:
            return ZoneInfo(name)
    except (ValueError, KeyError, OSError):
        pass
    return dt.datetime.now().astimezone().tzinfo or UTC


def describe_span(start: float, end: float, zone: str | None, now: float) -> str:
    """'09:00–10:30 today' (or yesterday, tomorrow, 'Mon 7 Dec'), in the timetable's zone; the zone is named when
    it is not the machine's."""
    tz = zone_named(zone)
    a, b, today = (dt.datetime.fromtimestamp(x, tz) for x in (start, end, now))
    days = (a.date() - today.date()).days
    day = {0: "today", -1: "yesterday", 1: "tomorrow"}.get(days, f"{a:%a} {a.day} {a:%b}" + (
        f" {a.year}" if a.year != today.year else ""))
    local = dt.datetime.fromtimestamp(start).astimezone()
    named = f" ({zone})" if zone and local.utcoffset() != a.utcoffset() else ""
    return f"{a:%H:%M}\u2013{b:%H:%M} {day}{named}"


def week_of(moment: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """Monday 00:00 to the next Monday 00:00 around `moment`, in its zone."""
    monday = (moment - dt.timedelta(days=moment.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    return monday, monday + dt.timedelta(days=7)


def count_by_day(lectures: Iterable[Lecture]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lecture in lectures:
        day = f"{lecture.start:%a}"
        counts[day] = counts.get(day, 0) + 1
    return counts
