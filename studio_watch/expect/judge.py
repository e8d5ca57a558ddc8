"""Did a lecture get its recording? Pure decisions over lectures and the files the queue saw; the caller passes `now`.

A file counts for a lecture when it was first seen between the lecture's start and its end + grace, or when its
modification time falls in that window: a file the daemon could not see arrive (written while the daemon was
down, copied in with its times kept), or one a recorder began a few minutes early and was still writing. Files
skipped as junk (empty, vanished, the same bytes as an earlier one) never count; a file that arrived but failed
to upload does (that is another alert). A file counts for one lecture only, the first judged: with back-to-back
lectures, the first one's recording (still written as the second begins) does not hide the second one's absence;
lectures whose times overlap are one session and share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from studio_watch.expect.timetable import Lecture

RECORDED, MISSING, LATE = "recorded", "missing", "late"
LATE_HORIZON = 86400.0  # a file this long after a missed lecture's grace is not its recording
LOOKBACK = 35 * 86400.0  # after a downtime, lectures that ended up to this long ago are still judged
EARLY = 6 * 3600.0  # a file first seen this long before a lecture may still be its recording (written during it)


@dataclass(frozen=True)
class Arrival:
    """A file the queue saw in a folder."""

    job_id: int
    first_seen: float
    written: float | None  # its modification time
    junk: bool
    path: str = ""


@dataclass(frozen=True)
class Verdict:
    outcome: str  # recorded | missing
    arrival: Arrival | None


def due_at(lecture: Lecture, grace: float) -> float:
    """When a lecture without a file becomes a missing recording."""
    return lecture.ends_at + grace


def counts_for(arrival: Arrival, lo: float, hi: float) -> bool:
    if arrival.junk:
        return False
    if lo <= arrival.first_seen <= hi:
        return True
    return arrival.written is not None and lo <= arrival.written <= hi and arrival.first_seen >= lo - EARLY


def judge(lecture: Lecture, grace: float, arrivals: Iterable[Arrival], now: float,
          taken: set[int] | frozenset[int] = frozenset()) -> Verdict | None:
    """None while the lecture may still get its file; else recorded (with the first file that counts, not one
    `taken` by another lecture) or missing."""
    if now < due_at(lecture, grace):
        return None
    lo, hi = lecture.starts_at, due_at(lecture, grace)
    matching = sorted((a for a in arrivals if a.job_id not in taken and counts_for(a, lo, hi)),
                      key=lambda a: (a.first_seen, a.job_id))
    return Verdict(RECORDED, matching[0]) if matching else Verdict(MISSING, None)


def late_until(lecture: Lecture, grace: float, next_start: float | None) -> float:
    """Until when a file may still turn up as a missed lecture's late recording: the folder's next lecture
    (whose own file it would be), or LATE_HORIZON, whichever comes first."""
    due = due_at(lecture, grace)
    horizon = due + LATE_HORIZON
    if next_start is not None and next_start > lecture.starts_at:
        horizon = min(horizon, next_start)
    return max(due, horizon)


def late_arrival(starts_at: float, due: float, until: float, arrivals: Iterable[Arrival],
                 taken: set[int] | frozenset[int] = frozenset()) -> Arrival | None:
    """The first file that turned up for a missed lecture after its grace and by `until`, not `taken` by another
    lecture; one written before the lecture began (found by a scan after a downtime) is not its recording."""
    late = [a for a in arrivals if not a.junk and a.job_id not in taken and (a.written is None or a.written >= starts_at)
            and (due < a.first_seen <= until or counts_for(a, starts_at, due))]
    return min(late, key=lambda a: (a.first_seen, a.job_id)) if late else None


def to_judge(lectures: Sequence[Lecture], grace: float, now: float, since: float,
             judged: set[str] | frozenset[str]) -> list[Lecture]:
    """Lectures whose grace is over, that ended after the folder began to be watched, not judged yet."""
    floor = max(since, now - LOOKBACK)
    return [x for x in lectures if due_at(x, grace) <= now and x.ends_at > floor and x.key not in judged]


Taken = dict[int, list[tuple[float, float]]]  # job id -> the (start, end) of each lecture it already counts for


def taken_for(taken: Taken, starts_at: float, ends_at: float) -> set[int]:
    """The files a lecture may not count: those taken by a lecture that does not overlap it. Lectures whose
    times overlap are one session in one room (a cross-listed course, a session in two calendars): one
    recording is theirs alike. A lecture that merely follows another never shares its file."""
    return {job_id for job_id, spans in taken.items()
            if not any(start < ends_at and starts_at < end for start, end in spans)}


def next_start_after(lectures: Sequence[Lecture], lecture: Lecture) -> float | None:
    later = [x.starts_at for x in lectures if x.starts_at > lecture.starts_at]
    return min(later) if later else None
