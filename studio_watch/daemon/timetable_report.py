"""What `status`, `check` and `explain --date` say about folders with a timetable (data and lines; the CLI prints).

`status` and `explain` never use the network: they read the calendar file, or a URL's last good copy beside
the state database. `check` fetches the URL (that is what it is for) and falls back to the copy.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any, Callable

from studio_watch import config as cfg
from studio_watch.daemon.calendars import CalendarSource, load_local
from studio_watch.daemon.checks import FAIL, OK, WARN, Check
from studio_watch.daemon.expectations import arrival
from studio_watch.expect import judge as j
from studio_watch.expect.timetable import Lecture, count_by_day, describe_span, week_of
from studio_watch.queue import JobQueue, LectureRecord
from studio_watch.studio.fetch import shown_url

RECENT = 5  # lectures shown per folder in `status`
MISSING_SHOWN_FOR = 7 * 86400.0  # an unresolved missing recording stays in `status` this long
CHECK_AHEAD = 14 * 86400.0


def _duration(seconds: float) -> str:
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g}h"
    return f"{seconds / 60:g}m" if seconds >= 60 and seconds % 60 == 0 else f"{seconds:g}s"


def _shown(expect: cfg.ExpectConfig) -> str:
    return shown_url(expect.calendar or "") if expect.is_url else str(expect.calendar)


def _lecture(lecture: Lecture, now: float) -> dict[str, Any]:
    return {"summary": lecture.summary, "start": lecture.starts_at, "end": lecture.ends_at, "zone": lecture.zone,
            "in_progress": lecture.starts_at <= now < lecture.ends_at,
            "when": describe_span(lecture.starts_at, lecture.ends_at, lecture.zone, now)}


def missing_line(record: LectureRecord, now: float) -> str:
    """`room-101: no recording for 'CS101 Lecture' 09:00–10:30 today`."""
    return (f"{Path(record.folder).name}: no recording for {record.summary!r} "
            f"{describe_span(record.starts_at, record.ends_at, record.zone, now)}")


def _record(record: LectureRecord, now: float) -> dict[str, Any]:
    return {**record.summary_dict(), "when": describe_span(record.starts_at, record.ends_at, record.zone, now)}


def status_timetables(config: cfg.Config, queue: JobQueue, now: float,
                      snapshot: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Per folder with `expect:`: its calendar, the next lecture, the last few verdicts, unresolved missing ones."""
    live = {s["path"]: s for s in snapshot or []}
    folders = []
    for rule in config.folders:
        if rule.expect is None:
            continue
        timetable, problem = load_local(rule.expect, config.local_state)
        state = live.get(str(rule.path), {})
        upcoming = timetable.lectures(now, now + j.LATE_HORIZON * 8) if timetable else []
        path = str(rule.path)
        missing = queue.lectures(path, since=now - MISSING_SHOWN_FOR, outcome=j.MISSING)
        folders.append({
            "path": path, "calendar": _shown(rule.expect), "grace_seconds": rule.expect.grace_seconds,
            "calendar_error": state.get("error", problem), "from_copy": state.get("from_copy", rule.expect.is_url),
            "judged_since": queue.watching_since(path, None),
            "next": _lecture(upcoming[0], now) if upcoming else None,
            "recent": [_record(r, now) for r in queue.lectures(path, limit=RECENT)],
            "missing": [{**_record(r, now), "line": missing_line(r, now)} for r in missing],
        })
    return folders


# -- check --------------------------------------------------------------------------------------------------------

def check_timetables(config: cfg.Config, fetch: Callable[[str], bytes] | None, now: float) -> list[Check]:
    """Each calendar parses, its zones are known, it has lectures in the next 14 days; how many this week."""
    results = []
    for i, rule in enumerate(config.folders):
        if rule.expect is None:
            continue
        where = f"folders[{i}] {rule.path}"
        source = CalendarSource(rule.expect, config.local_state, fetch, keep_copy=False)
        timetable = source.current(now)
        if timetable is None:
            results.append(Check("timetable", FAIL, f"{where}: {_shown(rule.expect)}: {source.state.error}"))
            continue
        if source.state.error:
            results.append(Check("timetable", WARN, f"{where}: {source.state.error}; using the last good copy"))
        for problem in timetable.problems():
            results.append(Check("timetable", FAIL, f"{where}: {problem} (its lectures would not be checked)"))
        ahead = timetable.lectures(now, now + CHECK_AHEAD)
        zone = timetable.zone() or dt.datetime.now().astimezone().tzinfo
        monday, sunday_night = week_of(dt.datetime.fromtimestamp(now, zone))
        week = timetable.lectures(monday, sunday_night)
        days = ", ".join(f"{d} {n}" for d, n in count_by_day(week).items())
        span = f"{monday:%a %d %b}\u2013{sunday_night - dt.timedelta(days=1):%a %d %b}"
        summary = (f"{where}: {len(week)} lecture(s) expected this week ({span}{': ' + days if days else ''}), "
                   f"grace {_duration(rule.expect.grace_seconds)}")
        if not ahead:
            results.append(Check("timetable", WARN, f"{summary}; no lecture in the next 14 days: is this the "
                                 f"right calendar ({_shown(rule.expect)})?"))
        else:
            nxt = ahead[0]
            results.append(Check("timetable", OK, f"{summary}; next: {nxt.summary!r} "
                                 f"{describe_span(nxt.starts_at, nxt.ends_at, nxt.zone, now)}"))
    return results


# -- explain --date -------------------------------------------------------------------------------------------------

def explain_date(config: cfg.Config, queue: JobQueue, path: str, day: dt.date | str,
                 now: float) -> tuple[list[str], int]:
    """What `path`'s folder expected on `day` (in the timetable's zone; `today` and the like are that zone's
    too) and what arrived; exit 1 if one is missing."""
    index, rule = _folder_of(config, path)
    if rule is None:
        folders = ", ".join(str(r.path) for r in config.folders) or "none configured"
        return [f"{path} is not a watched folder (folders: {folders})"], 1
    if rule.expect is None:
        return [f"folder: folders[{index}] {rule.path}", "no timetable (no expect: for this folder): "
                "nothing is expected"], 0
    timetable, problem = load_local(rule.expect, config.local_state)
    lines = [f"folder: folders[{index}] {rule.path} (timetable {_shown(rule.expect)}, grace "
             f"{_duration(rule.expect.grace_seconds)})"]
    if timetable is None:
        return lines + [f"timetable unavailable: {problem}"], 1
    zone = timetable.zone() or dt.datetime.now().astimezone().tzinfo
    if isinstance(day, str):
        day = parse_day(day, zone)
    start = dt.datetime.combine(day, dt.time(0), zone)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone)
    lectures = timetable.lectures(start, end)
    since = queue.watching_since(str(rule.path), None)
    verdicts = {r.lecture: r for r in queue.lectures(str(rule.path), since=start.timestamp() - 86400,
                                                     until=end.timestamp() + 86400)}
    lines.append(f"{day:%Y-%m-%d (%A)}: {len(lectures)} lecture(s) expected")
    code = 0
    grace = rule.expect.grace_seconds
    for lecture in lectures:
        head = f"  {describe_span(lecture.starts_at, lecture.ends_at, lecture.zone, now)} {lecture.summary!r}: "
        record = verdicts.get(lecture.key)
        if record is not None:
            job = queue.get(record.job_id) if record.job_id else None
            found = f" (job {job.id}, {job.display_path}, first seen {_clock(job.created_at, lecture)})" if job else ""
            lines.append(head + record.outcome + found)
            code = 1 if record.outcome == j.MISSING else code
        elif j.due_at(lecture, grace) > now:
            lines.append(head + f"not judged yet (a file may arrive until {_clock(j.due_at(lecture, grace), lecture)})")
        elif since is None or lecture.ends_at <= since:
            lines.append(head + "not judged (it ended before the daemon watched this folder with a timetable)")
        else:
            taken: j.Taken = {}
            for r in verdicts.values():
                if r.job_id is not None:
                    taken.setdefault(r.job_id, []).append((r.starts_at, r.ends_at))
            verdict = j.judge(lecture, grace, [arrival(x) for x in queue.seen_in(
                str(rule.path), lecture.starts_at - j.EARLY, now)], now,
                j.taken_for(taken, lecture.starts_at, lecture.ends_at))
            lines.append(head + f"not judged yet by the daemon; from what the queue saw: {verdict.outcome}"  # type: ignore[union-attr]
                         )
    arrived = queue.seen_in(str(rule.path), start.timestamp(), end.timestamp())
    lines.append(f"files first seen that day: {len(arrived)}")
    for job in arrived:
        at = dt.datetime.fromtimestamp(job.created_at, zone)
        lines.append(f"  {at:%H:%M:%S} job {job.id} ({job.state.value}{', ' + job.reason if job.reason else ''}): "
                     f"{job.display_path}")
    return lines, code


def _clock(epoch: float, lecture: Lecture) -> str:
    return f"{dt.datetime.fromtimestamp(epoch, lecture.start.tzinfo):%H:%M:%S}"


def _folder_of(config: cfg.Config, path: str) -> tuple[int, cfg.FolderRule | None]:
    real = os.path.realpath(path)
    for i, rule in enumerate(config.folders):
        root = os.path.realpath(rule.path)
        if real == root or real.startswith(root.rstrip("/") + "/"):
            return i, rule
    return -1, None


def parse_day(text: str, zone: dt.tzinfo | None = None) -> dt.date:
    """YYYY-MM-DD, `today` or `yesterday` (in `zone`: the timetable's, else the machine's; raises ValueError)."""
    today = dt.datetime.now(zone).date()
    named = {"today": today, "yesterday": today - dt.timedelta(days=1), "tomorrow": today + dt.timedelta(days=1)}
    if text in named:
        return named[text]
    return dt.date.fromisoformat(text)

