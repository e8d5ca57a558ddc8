"""Expected recordings against the real daemon: generated timetables with lectures seconds long, real files
dropped (or not) in time, SIGKILL in the middle, a calendar URL on loopback that goes away, status/check/explain."""

from __future__ import annotations

import json
import socket
import stat
import sys
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator
from zoneinfo import ZoneInfo

import pytest

from ..conftest import Account, ical_event, run_cli, wait_until, write_calendar, write_config, write_media

pytestmark = pytest.mark.slow

GRACE = 3  # seconds
NEW_YORK = "America/New_York"
MACHINE_TZ = "Pacific/Kiritimati"  # UTC+14: as far from New York as a machine can be


def lecture(uid: str, start: float, end: float, zone: str = NEW_YORK) -> str:
    """A lecture at absolute instants, written the way a timetable server would: local times with a TZID."""
    tz = ZoneInfo(zone)
    return ical_event(uid, uid, datetime.fromtimestamp(start, tz).replace(tzinfo=None),
                      datetime.fromtimestamp(end, tz).replace(tzinfo=None), tzid=zone)


def far_future() -> str:
    start = time.time() + 30 * 86400
    return lecture("placeholder", start, start + 3600)


def wait_for(moment: float) -> None:
    """Until the wall clock reaches `moment` (lectures are scheduled in wall-clock time)."""
    while time.time() < moment:
        time.sleep(min(0.05, max(0.0, moment - time.time())))


def alerts_in(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def _room(root: Path, sandbox_url: str, account: Account, calendar: str, webhook: str | None = None,
          **expect: Any) -> tuple[Path, Path]:
    """A config with room-101 (timetable) and lobby (none), alerts appended to alerts.jsonl, run as `account`."""
    out = root / "alerts"
    out.mkdir()
    command = (f"{sys.executable} -c \"import sys; open({str(out / 'alerts.jsonl')!r}, 'a')"
               f".write(sys.stdin.read() + chr(10))\"")
    config = write_config(root, sandbox_url, [
        {"path": "room-101", "settle_seconds": 0.05,
         "expect": {"calendar": calendar, "grace": f"{GRACE}s", **expect}},
        {"path": "lobby", "settle_seconds": 0.05}],
        state_db="state/state.db", notify={"command": command, "webhook": webhook}, **_metrics())
    (root / "state").mkdir()
    account.chown(root / "state", out, root / "token")
    return config, out / "alerts.jsonl"


def _metrics() -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return {"metrics": {"listen": f"127.0.0.1:{port}"}}


def _scrape(config: Path) -> str:
    import yaml

    listen = yaml.safe_load(config.read_text())["metrics"]["listen"]
    with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
        return r.read().decode()


class _Hook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        self.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    _Hook.received = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


def test_recorded_missing_late_across_time_zones(open_tmp, sandbox, daemons, service_account, hook):
    calendar = write_calendar(open_tmp / "room.ics", far_future())
    config, alerts = _room(open_tmp, sandbox.url, service_account, str(calendar), webhook=hook)
    daemon = daemons(config, env={"TZ": MACHINE_TZ}, user=service_account)
    daemon.wait_ready()
    assert daemon.wait_event("timetable_watched")
    t = time.time() + 2
    # A: 4 s with its file during it; B: 4 s with none; its file comes after the grace (late).
    write_calendar(calendar, lecture("CS101 Lecture", t, t + 4), lecture("CS102 Lab", t + 5, t + 9),
                   lecture("CS103 Seminar", t + 86400, t + 86400 + 3600))
    wait_for(t + 1)
    write_media(open_tmp / "room-101" / "cs101.mp4", 2000)
    write_media(open_tmp / "lobby" / "welcome.mp4", 1000)  # a folder without a timetable: never judged
    assert daemon.wait_event("lecture_recorded", timeout=30), daemon.output()
    assert daemon.wait_event("recording_missing", timeout=30), daemon.output()
    [missing] = [e for e in daemon.events if e.get("event") == "recording_missing"]
    assert missing["lecture"] == "CS102 Lab" and missing["folder"] == str(open_tmp / "room-101")
    assert datetime.fromisoformat(missing["start"]).timestamp() == pytest.approx(t + 5, abs=1)
    assert datetime.fromisoformat(missing["end"]).timestamp() == pytest.approx(t + 9, abs=1)
    assert datetime.fromisoformat(missing["start"]).utcoffset() == ZoneInfo(NEW_YORK).utcoffset(datetime.now())
    assert wait_until(lambda: len(alerts_in(alerts)) == 1, 15), daemon.output()
    [alert] = alerts_in(alerts)
    assert (alert["event"], alert["lecture"], alert["resolved"]) == ("recording_missing", "CS102 Lab", False)
    assert 'studio_watch_recordings_missing_total{folder="%s"} 1.0' % (open_tmp / "room-101") in _scrape(config)

    status = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
    [room] = status["timetables"]
    assert [(r["summary"], r["outcome"]) for r in room["recent"]] == [("CS102 Lab", "missing"),
                                                                      ("CS101 Lecture", "recorded")]
    assert room["next"]["summary"] == "CS103 Seminar" and "tomorrow" in room["next"]["when"]
    human = run_cli("status", "-c", str(config)).stdout
    assert "MISSING: room-101: no recording for 'CS102 Lab' " in human and "today" in human
    explained = run_cli("explain", "--date", "today", str(open_tmp / "room-101"), "-c", str(config))
    assert explained.returncode == 1, explained.stdout  # a lecture is missing
    assert "'CS101 Lecture': recorded (job" in explained.stdout and "'CS102 Lab': missing" in explained.stdout

    write_media(open_tmp / "room-101" / "cs102-late.mp4", 3000)
    assert daemon.wait_event("recording_late", timeout=30), daemon.output()
    assert wait_until(lambda: len(alerts_in(alerts)) == 2, 15), daemon.output()
    resolution = alerts_in(alerts)[1]
    assert (resolution["event"], resolution["lecture"], resolution["resolved"]) == \
        ("recording_missing", "CS102 Lab", True)
    assert resolution["path"].endswith("cs102-late.mp4")
    status = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
    assert [r["outcome"] for r in status["timetables"][0]["recent"]] == ["late", "recorded"]
    assert status["timetables"][0]["missing"] == []
    assert wait_until(lambda: len(_Hook.received) == 2, 15), daemon.output()
    assert [(h["event"], h["lecture"], h["resolved"]) for h in _Hook.received] == [
        ("recording_missing", "CS102 Lab", False), ("recording_missing", "CS102 Lab", True)]
    assert daemon.stop() == 0
    assert len(alerts_in(alerts)) == 2


def test_lectures_that_ended_during_a_downtime_are_judged_once_at_start(open_tmp, sandbox, daemons, service_account):
    calendar = write_calendar(open_tmp / "room.ics", far_future())
    config, alerts = _room(open_tmp, sandbox.url, service_account, str(calendar))
    daemon = daemons(config, user=service_account)
    daemon.wait_ready()
    assert daemon.wait_event("timetable_watched")
    t = time.time() + 1
    write_calendar(calendar, lecture("Recorded while down", t + 1, t + 3), lecture("Missed while down", t + 4, t + 6))
    daemon.kill()  # SIGKILL in the middle: nothing of either lecture had happened yet
    wait_for(t + 1.5)
    write_media(open_tmp / "room-101" / "while-down.mp4", 2000)  # the recorder goes on while we are down
    wait_for(t + 6 + GRACE + 0.5)  # both lectures are over, grace included
    again = daemons(config, user=service_account)
    again.wait_ready()
    assert again.wait_event("recording_missing", timeout=30), again.output()
    assert again.wait_event("lecture_recorded", timeout=30), again.output()
    assert [e["lecture"] for e in again.events if e.get("event") == "recording_missing"] == ["Missed while down"]
    assert wait_until(lambda: len(alerts_in(alerts)) == 1, 15), again.output()
    again.kill()
    third = daemons(config, user=service_account)
    third.wait_ready()
    # Its first round of judging starts before daemon_ready and runs to its end even if a stop comes first.
    assert third.wait_event("calendar_loaded", timeout=20), third.output()
    assert third.stop() == 0
    assert not [e for e in third.events if e.get("event") in ("recording_missing", "lecture_recorded")]
    assert len(alerts_in(alerts)) == 1, "alerted twice"


class _Calendar(BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/calendar")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def calendar_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Calendar)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_calendar_url_that_goes_away_is_read_from_its_last_good_copy(open_tmp, sandbox, daemons, service_account,
                                                                       calendar_server):
    t = time.time() + 12
    _Calendar.body = write_calendar(open_tmp / "served.ics", lecture("Served lecture", t, t + 2)).read_bytes()
    url = f"http://127.0.0.1:{calendar_server.server_port}/private-s3cr3t/room.ics"
    config, alerts = _room(open_tmp, sandbox.url, service_account, url, refresh="1s")
    daemon = daemons(config, user=service_account)
    daemon.wait_ready()
    assert daemon.wait_event("calendar_loaded", timeout=20), daemon.output()
    [copy] = [p for p in (open_tmp / "state").iterdir() if ".calendar-" in p.name]
    assert stat.S_IMODE(copy.stat().st_mode) == 0o600 and copy.read_bytes() == _Calendar.body
    daemon.kill()
    calendar_server.shutdown()
    calendar_server.server_close()  # the calendar server is gone for good
    again = daemons(config, user=service_account)
    again.wait_ready()
    assert again.wait_event("calendar_unavailable", timeout=20), again.output()
    [down] = [e for e in again.events if e.get("event") == "calendar_unavailable"]
    assert down["using"] == "the last good copy"
    assert again.wait_event("recording_missing", timeout=40), again.output()  # not blinded by the outage
    assert wait_until(lambda: len(alerts_in(alerts)) == 1, 15), again.output()
    status = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
    [room] = status["timetables"]
    assert room["calendar_error"] and room["from_copy"] is True
    assert room["calendar"] == f"http://127.0.0.1:{calendar_server.server_port}/…"
    assert again.stop() == 0
    assert "s3cr3t" not in again.output() + daemon.output() + json.dumps(status)


def test_check_validates_the_calendar_and_counts_this_weeks_lectures(tmp_path, sandbox):
    now = datetime.now(ZoneInfo("Europe/Berlin"))
    monday = (now - timedelta(days=now.weekday())).replace(hour=9, minute=0, second=0, microsecond=0)
    weekly = ical_event("cs", "CS101 Lecture", monday.replace(tzinfo=None), monday.replace(hour=10, tzinfo=None),
                        rrule="FREQ=WEEKLY;BYDAY=MO,WE,FR", tzid="Europe/Berlin")
    good = write_calendar(tmp_path / "good.ics", weekly)
    config = write_config(tmp_path, sandbox.url, [{"path": "room-101", "expect": {"calendar": "good.ics"}}])
    done = run_cli("check", "-c", str(config))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 lecture(s) expected this week" in done.stdout and "Mon 1, Wed 1, Fri 1" in done.stdout
    write_calendar(good, weekly, ical_event("x", "Mars", monday.replace(tzinfo=None), monday.replace(
        hour=11, tzinfo=None), tzid="Mars/Olympus"))
    done = run_cli("check", "-c", str(config))
    assert done.returncode == 1 and "unknown time zone 'Mars/Olympus'" in done.stdout, done.stdout
    good.write_text("not a calendar")
    done = run_cli("check", "-c", str(config))
    assert done.returncode == 1 and "not a valid iCalendar file" in done.stdout, done.stdout
    old = write_calendar(tmp_path / "good.ics", ical_event("o", "Old", datetime(2020, 1, 6, 9), datetime(2020, 1, 6, 10),
                                                           tzid="Europe/Berlin"))
    done = run_cli("check", "-c", str(config))
    assert done.returncode == 0 and "warn timetable" in done.stdout and "no lecture in the next 14 days" in done.stdout
    assert old.exists()


def test_expect_config_errors_name_the_key(tmp_path, sandbox):
    config = write_config(tmp_path, sandbox.url, [{"path": "room", "expect": {"calendar": "nope.ics"}}])
    done = run_cli("status", "-c", str(config))
    assert done.returncode == 2 and "folders[0].expect.calendar: no such file" in done.stderr, done.stderr
    config = write_config(tmp_path, sandbox.url, [{"path": "room", "expect": {"grace": "20m"}}])
    done = run_cli("status", "-c", str(config))
    assert done.returncode == 2 and "folders[0].expect.calendar: required" in done.stderr, done.stderr
    write_calendar(tmp_path / "room.ics", far_future())
    config = write_config(tmp_path, sandbox.url, [{"path": "room", "expect": {"calendar": "room.ics",
                                                                               "grace": "soon"}}])
    done = run_cli("status", "-c", str(config))
    assert done.returncode == 2 and "folders[0].expect.grace: expected a duration" in done.stderr, done.stderr
    config = write_config(tmp_path, sandbox.url, [{"path": "room", "expect": {"calendar": "http://example.edu/r.ics"}}])
    done = run_cli("status", "-c", str(config))
    assert done.returncode == 2 and "http:// is only allowed for loopback hosts" in done.stderr, done.stderr


def test_quiet_without_expect_until_a_reload_adds_one(tmp_path, sandbox, daemons):
    import signal

    import yaml

    calendar = write_calendar(tmp_path / "room.ics", far_future())
    config = write_config(tmp_path, sandbox.url, [{"path": "room-101", "settle_seconds": 0.05}])
    daemon = daemons(config)
    daemon.wait_ready()
    data = yaml.safe_load(config.read_text())
    assert json.loads(run_cli("status", "--json", "-c", str(config)).stdout)["timetables"] == []
    t = time.time() + 2
    write_calendar(calendar, lecture("After the reload", t, t + 1))
    data["folders"][0]["expect"] = {"calendar": str(calendar), "grace": "1s"}
    config.write_text(yaml.safe_dump(data))
    before = "\n".join(daemon.lines)
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.wait_event("timetable_watched", timeout=20), daemon.output()
    assert daemon.wait_event("recording_missing", timeout=30), daemon.output()
    assert daemon.stop() == 0
    assert "timetable" not in before and "calendar" not in before, "timetable work without expect:"
