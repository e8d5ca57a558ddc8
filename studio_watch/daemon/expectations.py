"""The timetable check: every few seconds, judge the lectures whose grace is over against the files the queue saw.

A missing recording is stored as a verdict first (one row per lecture: never alerted twice, across restarts),
then alerted (`recording_missing` through notify.command / notify.webhook), logged and counted. A file that turns
up later, before the folder's next lecture, turns the verdict into `late` and sends the alert's resolution.
Lectures that ended while the daemon was down are judged at the next start, after the startup scan, from what
the queue saw; those that ended before the folder was first watched with a timetable are never judged.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable
from zoneinfo import ZoneInfo

from studio_watch.logs import get_logger
from studio_watch.config import FolderRule
from studio_watch.daemon.alerts import Alerts
from studio_watch.daemon.calendars import CalendarSource, Fetch
from studio_watch.expect import judge as j
from studio_watch.expect.timetable import Lecture, Timetable
from studio_watch.queue import Job, JobQueue, LectureRecord, State

log = get_logger(__name__)

TICK_SECONDS = 1.0  # how often verdicts fall due is checked (a few indexed queries when nothing is due)
EXPAND_EVERY = 600.0  # seconds between two expansions of an unchanged timetable
AHEAD = 8 * 86400.0  # how far ahead lectures are expanded (the next lecture, and the end of a late window)


def arrival(job: Job) -> j.Arrival:
    return j.Arrival(job_id=job.id, first_seen=job.created_at,
                     written=None if job.mtime_ns is None else job.mtime_ns / 1e9,
                     junk=job.state is State.SKIPPED, path=job.display_path)


def when(epoch: float, zone: str | None) -> str:
    """An instant as ISO 8601 in the timetable's zone (for alerts and logs)."""
    return dt.datetime.fromtimestamp(epoch, _zone(zone)).isoformat()


def _zone(zone: str | None) -> Any:
    try:
        return ZoneInfo(zone) if zone else dt.datetime.now().astimezone().tzinfo
    except (ValueError, KeyError, OSError):
        return dt.datetime.now().astimezone().tzinfo


@dataclass
class _Folder:
    rule: FolderRule
    source: CalendarSource
    since: float
    judged: set[str] = field(default_factory=set)
    lectures: list[Lecture] = field(default_factory=list)
    expanded: tuple[int, float] = (-1, 0.0)  # (the source's version expanded, when)


class Expectations:
    """Owns one CalendarSource per folder with `expect:`; `tick(now)` does one round of judging."""

    def __init__(self, queue: JobQueue, alerts: Alerts, state_db: Path, fetch: Fetch | None,
                 on_missing: Callable[[str], None] = lambda folder: None, clock: Callable[[], float] = time.time,
                 tick_seconds: float = TICK_SECONDS) -> None:
        self.queue, self.alerts, self.state_db, self.fetch = queue, alerts, state_db, fetch
        self.on_missing, self.clock, self.tick_seconds = on_missing, clock, tick_seconds
        self.folders: dict[Path, _Folder] = {}
        self._lock = threading.Lock()
        self._newest_job = -1  # late files are looked for only when the queue saw a file since the last round

    def update_rules(self, rules: Iterable[FolderRule], now: float | None = None) -> None:
        """Start (or stop) judging folders; a folder seen with a timetable for the first time is judged from now."""
        now = self.clock() if now is None else now
        with self._lock:
            wanted = {r.path: r for r in rules if r.expect is not None}
            for path in list(self.folders):
                if path not in wanted:
                    del self.folders[path]
            for path, rule in wanted.items():
                old = self.folders.get(path)
                if old is not None and old.rule.expect == rule.expect:
                    old.rule = rule
                    continue
                since = self.queue.watching_since(str(path), now)
                assert since is not None
                # Only lectures this recent can still be judged (to_judge): older verdicts need not be read.
                judged = {r.lecture for r in self.queue.lectures(str(path), since=now - j.LOOKBACK - AHEAD)}
                self.folders[path] = _Folder(rule, CalendarSource(rule.expect, self.state_db, self.fetch),  # type: ignore[arg-type]
                                             since, judged)
                log.info("timetable_watched", folder=str(path), calendar=self.folders[path].source.state.shown,
                         grace_seconds=rule.expect.grace_seconds, judged_since=when(since, None))  # type: ignore[union-attr]

    def run(self, stop: threading.Event) -> None:
        """The thread's loop: a tick now (lectures missed during a downtime), then every `tick_seconds`."""
        while True:
            try:
                self.tick(self.clock())
            except Exception:
                log.exception("timetable_check_failed")
            if stop.wait(self.tick_seconds):
                return

    def tick(self, now: float) -> None:
        with self._lock:
            folders = list(self.folders.values())
        newest = self.queue.newest_job_id() if folders else self._newest_job
        new_files, self._newest_job = newest != self._newest_job, newest
        for folder in folders:
            try:
                self._tick_folder(folder, now, new_files)
            except Exception:  # one folder's bad calendar or a database hiccup must not stop the others
                log.exception("timetable_check_failed", folder=str(folder.rule.path))

    def snapshot(self) -> list[dict[str, Any]]:
        """For the daemon's status snapshot: each calendar source's state."""
        with self._lock:
            return [{"path": str(p), "calendar": f.source.state.shown, "loaded_at": f.source.state.loaded_at,
                     "from_copy": f.source.state.from_copy, "error": f.source.state.error}
                    for p, f in self.folders.items()]

    # -- one folder -----------------------------------------------------------------------------------------------

    def _tick_folder(self, folder: _Folder, now: float, new_files: bool = True) -> None:
        timetable = folder.source.current(now)
        if timetable is None:
            return
        lectures = self._expanded(folder, timetable, now)
        assert folder.rule.expect is not None
        grace, path = folder.rule.expect.grace_seconds, str(folder.rule.path)
        due = j.to_judge(lectures, grace, now, folder.since, folder.judged)
        taken = self._taken(path, now) if due or new_files else {}
        for lecture in due:
            arrivals = [arrival(job) for job in self.queue.seen_in(path, lecture.starts_at - j.EARLY, now)]
            verdict = j.judge(lecture, grace, arrivals, now, j.taken_for(taken, lecture.starts_at, lecture.ends_at))
            assert verdict is not None
            record = LectureRecord(
                folder=path, lecture=lecture.key, summary=lecture.summary, zone=lecture.zone,
                starts_at=lecture.starts_at, ends_at=lecture.ends_at, due_at=j.due_at(lecture, grace),
                late_until=j.late_until(lecture, grace, j.next_start_after(lectures, lecture)),
                outcome=verdict.outcome, job_id=verdict.arrival.job_id if verdict.arrival else None, judged_at=now)
            stored = self.queue.record_lecture(record)
            folder.judged.add(lecture.key)
            if record.job_id is not None:
                taken.setdefault(record.job_id, []).append((record.starts_at, record.ends_at))
            if stored:
                self._report(record, verdict.arrival)
                new_files = new_files or record.outcome == j.MISSING  # a file written before it was judged
        if not new_files:
            return
        for record in self.queue.lectures(path, open_at=now):
            arrivals = [arrival(job) for job in self.queue.seen_in(path, record.starts_at - j.EARLY,
                                                                   min(now, record.late_until))]
            late = j.late_arrival(record.starts_at, record.due_at, record.late_until, arrivals,
                                  j.taken_for(taken, record.starts_at, record.ends_at))
            if late is not None and self.queue.lecture_late(path, record.lecture, late.job_id, now):
                taken.setdefault(late.job_id, []).append((record.starts_at, record.ends_at))
                self._resolved(record, late)

    def _taken(self, path: str, now: float) -> j.Taken:
        """The files that already count for a lecture of this folder, with the lectures' times (a file counts
        for one lecture only, or for lectures held at the same time)."""
        taken: j.Taken = {}
        for r in self.queue.lectures(path, since=now - j.LOOKBACK - AHEAD):
            if r.job_id is not None:
                taken.setdefault(r.job_id, []).append((r.starts_at, r.ends_at))
        return taken

    def _expanded(self, folder: _Folder, timetable: Timetable, now: float) -> list[Lecture]:
        done_for, at = folder.expanded
        if done_for != folder.source.version or now - at >= EXPAND_EVERY:
            floor = max(folder.since, now - j.LOOKBACK)
            folder.lectures = timetable.lectures(floor, now + AHEAD)
            folder.expanded = (folder.source.version, now)
        return folder.lectures

    def _about(self, record: LectureRecord) -> dict[str, Any]:
        return {"folder": record.folder, "lecture": record.summary, "start": when(record.starts_at, record.zone),
                "end": when(record.ends_at, record.zone)}

    def _report(self, record: LectureRecord, found: j.Arrival | None) -> None:
        if record.outcome == j.RECORDED:
            log.info("lecture_recorded", **self._about(record), job_id=found.job_id if found else None,
                     path=found.path if found else None)
            return
        log.error("recording_missing", **self._about(record), grace_seconds=round(record.due_at - record.ends_at))
        self.on_missing(record.folder)
        self.alerts.send("recording_missing", **self._about(record), resolved=False,
                         grace_seconds=round(record.due_at - record.ends_at))

    def _resolved(self, record: LectureRecord, found: j.Arrival) -> None:
        log.warning("recording_late", **self._about(record), job_id=found.job_id, path=found.path,
                    first_seen=when(found.first_seen, record.zone))
        self.alerts.resolve("recording_missing", **self._about(record), job_id=found.job_id, path=found.path,
                            first_seen=when(found.first_seen, record.zone))
