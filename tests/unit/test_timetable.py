"""Timetables: generated iCalendar files expanded (recurrence, EXDATE, DST, zones) and lectures judged against a
real SQLite queue with an injected clock."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest

from studio_watch.config import ExpectConfig, FolderRule
from studio_watch.daemon.alerts import Alerts
from studio_watch.daemon.expectations import Expectations
from studio_watch.expect import judge as j
from studio_watch.expect.timetable import Timetable
from studio_watch.queue import Seen, State, open_queue
from tests.conftest import drive, ical_event, write_calendar

BERLIN, NEW_YORK = ZoneInfo("Europe/Berlin"), ZoneInfo("America/New_York")


def _calendar(tmp_path: Path, *events: str) -> Timetable:
    path = write_calendar(tmp_path / "room.ics", *events)
    return Timetable.parse(path.read_bytes(), str(path))


def test_weekly_recurrence_leaves_out_the_exdate(tmp_path: Path) -> None:
    first = dt.datetime(2026, 11, 2, 9, 0)
    timetable = _calendar(tmp_path, ical_event(
        "cs101", "CS101 Lecture", first, first.replace(hour=10, minute=30), rrule="FREQ=WEEKLY;BYDAY=MO;COUNT=5",
        exdates=(dt.datetime(2026, 11, 16, 9, 0),), tzid="Europe/Berlin"))
    lectures = timetable.lectures(dt.datetime(2026, 11, 1, tzinfo=BERLIN), dt.datetime(2026, 12, 31, tzinfo=BERLIN))
    assert [x.start.date().isoformat() for x in lectures] == ["2026-11-02", "2026-11-09", "2026-11-23", "2026-11-30"]
    assert all((x.start.hour, x.start.minute, x.end.hour, x.end.minute) == (9, 0, 10, 30) for x in lectures)
    assert all(x.summary == "CS101 Lecture" and x.zone == "Europe/Berlin" for x in lectures)
    assert len({x.key for x in lectures}) == 4
    # A window that starts in the middle of a lecture still contains it (it overlaps).
    inside = timetable.lectures(dt.datetime(2026, 11, 9, 10, 0, tzinfo=BERLIN),
                                dt.datetime(2026, 11, 9, 10, 1, tzinfo=BERLIN))
    assert [x.key for x in inside] == [lectures[1].key]


def test_lectures_keep_their_wall_clock_time_across_a_dst_change(tmp_path: Path) -> None:
    # Europe/Berlin leaves summer time on 2026-10-25 at 03:00 (back to 02:00).
    first = dt.datetime(2026, 10, 19, 9, 0)
    weekly = ical_event("w", "Weekly", first, first.replace(hour=10), rrule="FREQ=WEEKLY;COUNT=2",
                        tzid="Europe/Berlin")
    night = ical_event("n", "Night session", dt.datetime(2026, 10, 25, 1, 30), dt.datetime(2026, 10, 25, 3, 30),
                       tzid="Europe/Berlin")
    lectures = _calendar(tmp_path, weekly, night).lectures(dt.datetime(2026, 10, 18, tzinfo=dt.timezone.utc),
                                                           dt.datetime(2026, 10, 31, tzinfo=dt.timezone.utc))
    by_uid = {(x.uid, x.start.day): x for x in lectures}
    utc = dt.timezone.utc
    assert by_uid[("w", 19)].start.astimezone(utc).hour == 7  # 09:00 CEST
    assert by_uid[("w", 26)].start.astimezone(utc).hour == 8  # 09:00 CET, a week later
    crossing = by_uid[("n", 25)]
    assert crossing.ends_at - crossing.starts_at == 3 * 3600  # 01:30 CEST to 03:30 CET: three real hours


def test_zone_of_the_timetable_not_of_the_machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "Pacific/Auckland")
    time.tzset()
    try:
        start = dt.datetime(2026, 12, 7, 14, 0)
        lectures = _calendar(tmp_path, ical_event("ny", "NY seminar", start, start.replace(hour=15),
                                                  tzid="America/New_York")).lectures(
            dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 14, tzinfo=dt.timezone.utc))
        assert [x.starts_at for x in lectures] == [dt.datetime(2026, 12, 7, 19, 0, tzinfo=dt.timezone.utc).timestamp()]
        # A time with no zone at all is the machine's (here Auckland's) local time.
        floating = _calendar(tmp_path, ical_event("f", "Floating", start, start.replace(hour=15))).lectures(
            dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 14, tzinfo=dt.timezone.utc))
        assert floating[0].starts_at == dt.datetime(2026, 12, 7, 14, 0, tzinfo=ZoneInfo("Pacific/Auckland")).timestamp()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_floating_times_take_the_machine_zone_offset_of_their_own_date(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    # Today (whatever it is) has one offset; a floating 09:00 in summer has the summer one. Taking today's offset
    # put every lecture across a DST change an hour off, and re-keyed the lectures already judged when the
    # machine's clock changed (judged again: a second alert, or "missing" for a file another key had taken).
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        first = dt.datetime(2027, 1, 4, 9, 0)
        timetable = _calendar(tmp_path, ical_event("f", "Floating", first, first.replace(hour=10),
                                                   rrule="FREQ=WEEKLY;COUNT=30"))
        lectures = timetable.lectures(dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc),
                                      dt.datetime(2027, 8, 1, tzinfo=dt.timezone.utc))
        by_day = {x.start.date(): x for x in lectures}
        assert by_day[dt.date(2027, 1, 4)].starts_at == dt.datetime(2027, 1, 4, 9, tzinfo=BERLIN).timestamp()
        assert by_day[dt.date(2027, 4, 5)].starts_at == dt.datetime(2027, 4, 5, 9, tzinfo=BERLIN).timestamp()
        assert by_day[dt.date(2027, 4, 5)].start.astimezone(dt.timezone.utc).hour == 7  # 09:00 CEST
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_unknown_zone_is_a_problem_and_its_lectures_are_left_out(tmp_path: Path) -> None:
    start = dt.datetime(2026, 12, 7, 9, 0)
    timetable = _calendar(tmp_path, ical_event("bad", "Mars", start, start.replace(hour=10), tzid="Mars/Olympus"),
                          ical_event("ok", "Earth", start, start.replace(hour=10), tzid="Europe/Berlin"))
    assert timetable.problems() == ["event 'Mars': unknown time zone 'Mars/Olympus' in DTSTART",
                                    "event 'Mars': unknown time zone 'Mars/Olympus' in DTEND"]
    lectures = timetable.lectures(dt.datetime(2026, 12, 1, tzinfo=BERLIN), dt.datetime(2026, 12, 14, tzinfo=BERLIN))
    assert [x.summary for x in lectures] == ["Earth"]


def test_an_event_with_an_unreadable_time_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    # One typo in one event ("2026120T090000") raised icalendar's BrokenCalendarProperty out of parse(): status
    # and explain --date died with a traceback, and the daemon judged none of the room's other lectures.
    start = dt.datetime(2026, 12, 7, 9, 0)
    typo = "\r\n".join(["BEGIN:VEVENT", "UID:typo", "SUMMARY:Typo", "DTSTART:2026120T090000", "END:VEVENT"])
    timetable = _calendar(tmp_path, typo, ical_event("ok", "Earth", start, start.replace(hour=10),
                                                     tzid="Europe/Berlin"))
    [problem] = timetable.problems()
    assert problem.startswith("event 'Typo': DTSTART cannot be read: "), problem
    lectures = timetable.lectures(dt.datetime(2026, 12, 1, tzinfo=BERLIN), dt.datetime(2026, 12, 14, tzinfo=BERLIN))
    assert [x.summary for x in lectures] == ["Earth"]


def test_not_a_calendar_is_one_clear_error(tmp_path: Path) -> None:
    from studio_watch.expect.timetable import TimetableError

    with pytest.raises(TimetableError, match="room.ics: not a valid iCalendar file"):
        Timetable.parse(b"hello, world\n", "room.ics")


# -- judging, with an injected clock ------------------------------------------------------------------------------

class RecordedAlerts(Alerts):
    """Alerts that are kept in a list instead of sent (the hooks themselves are tested end to end)."""

    def __init__(self) -> None:
        super().__init__(command=None, webhook=None)
        self.sent: list[dict[str, Any]] = []

    def send(self, kind: str, **data: Any) -> None:
        self.sent.append({"event": kind, **data})


class Room:
    """A folder with a timetable of lectures relative to T0, a real queue, and a clock the test moves."""

    T0 = 1_800_000_000.0

    def __init__(self, tmp_path: Path, lectures: list[tuple[str, float, float]], grace: float = 60.0) -> None:
        self.folder = tmp_path / "room-101"
        self.folder.mkdir()
        self.db = tmp_path / "state.db"
        self.calendar = write_calendar(tmp_path / "room.ics", *(
            ical_event(uid, uid, dt.datetime.fromtimestamp(self.T0 + a, dt.timezone.utc),
                       dt.datetime.fromtimestamp(self.T0 + b, dt.timezone.utc)) for uid, a, b in lectures))
        self.rule = FolderRule(path=self.folder, expect=ExpectConfig(calendar=str(self.calendar), grace_seconds=grace))
        self.now = self.T0
        self.queue = open_queue(self.db)
        self.alerts = RecordedAlerts()
        self.missing: list[str] = []
        self.checker = self._checker()

    def _checker(self) -> Expectations:
        checker = Expectations(self.queue, self.alerts, self.db, fetch=None, on_missing=self.missing.append,
                               clock=lambda: self.now)
        checker.update_rules([self.rule])
        return checker

    def restart(self) -> None:
        self.queue.close()
        self.queue = open_queue(self.db)
        self.checker = self._checker()

    def at(self, offset: float) -> None:
        self.now = self.T0 + offset
        self.checker.tick(self.now)

    def file(self, name: str, seen_at: float, written_at: float | None = None, state: State | None = None) -> int:
        path = str(self.folder / name)
        mtime = self.T0 + (seen_at if written_at is None else written_at)
        seen = Seen(path=path, folder=str(self.folder), size=100, mtime_ns=int(mtime * 1e9), inode=hash(name) % 10**6,
                    device=1, collection_id=None, user_id=None, auto_caption=False, after_upload="keep", move_to=None,
                    duplicates="skip", settle_seconds=0)
        [(job_id, _)] = self.queue.observe([seen], now=self.T0 + seen_at)
        if state is not None:
            drive(self.queue, job_id, state, reason="empty")
        return job_id

    def outcomes(self) -> dict[str, str]:
        return {r.summary: r.outcome for r in self.queue.lectures(str(self.folder))}

    def events(self) -> list[tuple[str, str, bool]]:
        return [(a["event"], a["lecture"], a["resolved"]) for a in self.alerts.sent]


@pytest.fixture
def room(tmp_path: Path) -> Iterator[Room]:
    r = Room(tmp_path, [("before", -1000, -900), ("A", 100, 200), ("B", 300, 400), ("C", 1000, 1100)])
    yield r
    r.queue.close()


def test_recorded_missing_and_never_twice(room: Room) -> None:
    room.at(0)
    room.file("a.mp4", seen_at=150)
    room.at(259)  # A's grace (60 s) is not over yet
    assert room.outcomes() == {}
    room.at(260)
    assert room.outcomes() == {"A": "recorded"}
    assert room.events() == []
    room.at(470)
    assert room.outcomes() == {"A": "recorded", "B": "missing"}
    assert room.events() == [("recording_missing", "B", False)]
    assert room.missing == [str(room.folder)]
    alert = room.alerts.sent[0]
    assert alert["folder"] == str(room.folder)
    assert dt.datetime.fromisoformat(alert["start"]).timestamp() == room.T0 + 300
    assert dt.datetime.fromisoformat(alert["end"]).timestamp() == room.T0 + 400
    room.at(480)
    room.restart()
    room.at(490)
    assert room.events() == [("recording_missing", "B", False)], "alerted twice"
    assert "before" not in room.outcomes(), "a lecture that ended before the folder was watched was judged"


def test_a_late_file_resolves_the_alert(room: Room) -> None:
    room.at(0)
    room.at(470)
    assert room.outcomes()["B"] == "missing"
    job = room.file("b-late.mp4", seen_at=600)
    room.at(601)
    assert room.outcomes()["B"] == "late"
    # A's late window closed when B began: the file is B's, and only B's alert is resolved.
    assert room.events() == [("recording_missing", "A", False), ("recording_missing", "B", False),
                             ("recording_missing", "B", True)]
    assert room.outcomes() == {"A": "missing", "B": "late"}
    assert room.alerts.sent[-1]["job_id"] == job and room.alerts.sent[-1]["path"].endswith("b-late.mp4")
    room.restart()
    room.at(700)
    assert len([a for a in room.alerts.sent if a["resolved"]]) == 1, "resolved twice"


def test_a_file_after_the_next_lecture_began_is_not_the_missed_ones(room: Room) -> None:
    room.at(0)
    room.at(270)
    assert room.outcomes()["A"] == "missing"
    room.file("b.mp4", seen_at=350)  # during B: B's recording, not A's late one
    room.at(470)
    assert room.outcomes() == {"A": "missing", "B": "recorded"}
    assert [e for e in room.events() if e[2]] == []


def test_lectures_held_at_the_same_time_share_their_recording(tmp_path: Path) -> None:
    # A cross-listed course (CS401 and CS501 in one room at one time), or one session both in the course
    # calendar and the room booking: one recorder, one file. "A file counts for one lecture only" made the second
    # a recording_missing every week; a file may count for lectures whose times overlap (one session), never
    # for a lecture that only follows (back to back) the one that took it.
    r = Room(tmp_path, [("CS401", 100, 200), ("CS501", 100, 200), ("Next", 200, 300)])
    try:
        r.at(0)
        r.file("session.mp4", seen_at=110)
        r.at(400)
        assert r.outcomes() == {"CS401": "recorded", "CS501": "recorded", "Next": "missing"}
        assert r.events() == [("recording_missing", "Next", False)]
    finally:
        r.queue.close()


def test_junk_does_not_count(room: Room) -> None:
    room.at(0)
    room.file("empty.mp4", seen_at=150, state=State.SKIPPED)
    room.at(270)
    assert room.outcomes() == {"A": "missing"}


def test_a_file_in_a_subfolder_of_a_recursive_folder_counts(room: Room) -> None:
    room.at(0)
    room.file("2026-12-07/a.mp4", seen_at=150)  # the queue records the watched folder, not the subfolder
    room.at(270)
    assert room.outcomes() == {"A": "recorded"}


def test_downtime_is_judged_at_the_next_start_from_what_the_queue_saw(room: Room) -> None:
    room.at(0)
    room.queue.close()
    # Down from 10 s to 2000 s: A's file was written at 180 s, and found by the startup scan at 2000 s.
    room.now = room.T0 + 2000
    room.queue = open_queue(room.db)
    room.file("a.mp4", seen_at=2000, written_at=180)
    room.checker = room._checker()
    room.at(2000)
    assert room.outcomes() == {"A": "recorded", "B": "missing", "C": "missing"}
    assert sorted(e[1] for e in room.events()) == ["B", "C"]
    assert "before" not in room.outcomes()


def test_first_start_in_the_middle_of_a_lecture_judges_it(tmp_path: Path) -> None:
    r = Room(tmp_path, [("weeks ago", -30 * 86400, -30 * 86400 + 3600), ("now", -50, 50)])
    try:
        r.file("now.mp4", seen_at=0)  # the startup scan finds the recording in progress
        r.at(0)
        r.at(200)
        assert r.outcomes() == {"now": "recorded"}
    finally:
        r.queue.close()


def test_late_window_ends_at_the_next_lecture_or_a_day() -> None:
    from studio_watch.expect.timetable import Lecture

    utc = dt.timezone.utc
    lec = Lecture("u", "s", dt.datetime(2026, 12, 7, 9, tzinfo=utc), dt.datetime(2026, 12, 7, 10, tzinfo=utc))
    assert j.late_until(lec, 600, None) == lec.ends_at + 600 + j.LATE_HORIZON
    assert j.late_until(lec, 600, lec.ends_at + 3600) == lec.ends_at + 3600
    assert j.late_until(lec, 600, lec.ends_at + 60) == lec.ends_at + 600  # back to back: no late window


def test_quiet_without_expect(tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "state.db")
    try:
        checker = Expectations(queue, RecordedAlerts(), tmp_path / "state.db", fetch=None)
        checker.update_rules([FolderRule(path=tmp_path)])
        checker.tick(time.time())
        assert checker.folders == {} and queue.lectures() == []
        assert not [p for p in os.listdir(tmp_path) if ".calendar-" in p]
    finally:
        queue.close()


def test_the_status_line_reads_as_the_timetable_states_it() -> None:
    from studio_watch.daemon.timetable_report import missing_line
    from studio_watch.queue import LectureRecord

    start = dt.datetime(2026, 12, 7, 9, 0, tzinfo=BERLIN).timestamp()
    record = LectureRecord(folder="/srv/capture/room-101", lecture="k", summary="CS101 Lecture", zone="Europe/Berlin",
                           starts_at=start, ends_at=start + 5400, due_at=start + 6600, late_until=start + 90000,
                           outcome="missing", job_id=None, judged_at=start + 6600)
    line = missing_line(record, now=start + 7200)
    assert line.startswith("room-101: no recording for 'CS101 Lecture' 09:00\u201310:30 today")
    assert missing_line(record, now=start + 86400).split(" ", 7)[-1].startswith("yesterday")


def test_a_reload_keeps_verdicts_and_starts_or_stops_folders(room: Room, tmp_path: Path) -> None:
    room.at(0)
    room.at(470)
    assert set(room.outcomes()) == {"A", "B"}
    room.checker.update_rules([FolderRule(path=room.folder)])  # expect: removed by a reload
    assert room.checker.folders == {}
    room.checker.update_rules([room.rule])
    room.at(480)
    assert len(room.events()) == 2, "a reload made old lectures alert again"


def test_a_moved_session_and_a_calendar_wide_zone(tmp_path: Path) -> None:
    first = dt.datetime(2026, 11, 2, 9, 0)
    series = ical_event("cs", "CS101", first, first.replace(hour=10), rrule="FREQ=WEEKLY;COUNT=3", tzid="Europe/Berlin")
    moved = ical_event("cs", "CS101 (moved)", dt.datetime(2026, 11, 10, 14, 0), dt.datetime(2026, 11, 10, 15, 0),
                       tzid="Europe/Berlin").replace(
        "END:VEVENT", "RECURRENCE-ID;TZID=Europe/Berlin:20261109T090000\r\nEND:VEVENT")
    lectures = _calendar(tmp_path, series, moved).lectures(dt.datetime(2026, 11, 1, tzinfo=BERLIN),
                                                           dt.datetime(2026, 11, 30, tzinfo=BERLIN))
    assert [(x.summary, f"{x.start:%a %H:%M}") for x in lectures] == [
        ("CS101", "Mon 09:00"), ("CS101 (moved)", "Tue 14:00"), ("CS101", "Mon 09:00")]
    # Floating times in a calendar that names its zone once (X-WR-TIMEZONE, as Google exports) are in that zone.
    path = write_calendar(tmp_path / "g.ics", ical_event("f", "Floating", first, first.replace(hour=10)))
    path.write_text(path.read_text().replace("VERSION:2.0", "VERSION:2.0\r\nX-WR-TIMEZONE:Asia/Tokyo"))
    [floating] = Timetable.parse(path.read_bytes(), str(path)).lectures(
        dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc), dt.datetime(2026, 11, 30, tzinfo=dt.timezone.utc))
    assert floating.starts_at == dt.datetime(2026, 11, 2, 9, 0, tzinfo=ZoneInfo("Asia/Tokyo")).timestamp()


def test_a_recording_begun_early_counts_and_one_file_counts_once(tmp_path: Path) -> None:
    r = Room(tmp_path, [("early", 100, 200), ("A", 300, 400), ("B", 400, 500), ("old", 700, 800)])
    try:
        r.at(0)
        r.file("early.mp4", seen_at=90, written_at=199)  # started 10 s before, written until the end
        r.file("a.mp4", seen_at=310, written_at=405)  # A's, still written as B begins: not B's too
        r.at(560)
        assert r.outcomes() == {"early": "recorded", "A": "recorded", "B": "missing"}
        r.file("b.mp4", seen_at=690, written_at=690)  # after B's grace, before the next lecture: B's, late
        r.at(691)
        r.at(900)
        assert r.outcomes() == {"early": "recorded", "A": "recorded", "B": "late", "old": "missing"}
        assert r.events() == [("recording_missing", "B", False), ("recording_missing", "B", True),
                              ("recording_missing", "old", False)]
    finally:
        r.queue.close()
