"""Running it for real: SIGHUP reload, upload windows, the bandwidth limit, alert hooks, status."""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from studio_watch.schedule import RateLimiter, Schedule, parse_window

from ..conftest import run_cli, wait_until, write_config, write_media


def test_windows_parse_and_cross_midnight():
    w = parse_window("Mon-Fri 18:00-07:00")
    monday = datetime(2026, 11, 23)  # a Monday
    assert w.contains(monday.replace(hour=19))
    assert w.contains((monday + timedelta(days=1)).replace(hour=6, minute=59))  # Tuesday morning, from Monday
    assert not w.contains(monday.replace(hour=12))
    assert not w.contains(monday.replace(hour=3))  # Monday 03:00 belongs to Sunday's night: not listed
    assert w.contains((monday + timedelta(days=5)).replace(hour=3))  # Saturday 03:00, from Friday
    assert parse_window("Sat,Sun 00:00-24:00").contains(monday.replace(day=29, hour=23, minute=59))
    assert parse_window("* 22:00-06:00").contains(monday.replace(hour=23))
    for bad in ("Mon-Fry 18:00-07:00", "Mon 25:00-26:00", "evenings"):
        with pytest.raises(ValueError):
            parse_window(bad)
    closed = Schedule((parse_window("Mon 10:00-11:00"),))
    assert closed.seconds_until_open(monday.replace(hour=9, minute=30)) == 30 * 60
    assert Schedule().open(monday)


def test_rate_limiter_holds_the_average_rate():
    limiter = RateLimiter(2_000_000)
    started = time.monotonic()
    for _ in range(6):
        limiter.take(1_000_000)
    assert time.monotonic() - started >= 1.9  # 6 MB at 2 MB/s, less the 1 s burst allowance


def test_bad_upload_hours_are_refused(tmp_path, sandbox):
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}], schedule={"upload_hours": ["Mon-Fry 1:00-2:00"]})
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 2 and "schedule.upload_hours[0]" in result.stderr


def test_outside_upload_hours_nothing_starts(tmp_path, sandbox, daemons):
    now = datetime.now()
    later = (now + timedelta(hours=2)).strftime("%H:%M")
    later2 = (now + timedelta(hours=3)).strftime("%H:%M")
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}],
                          schedule={"upload_hours": [f"* {later}-{later2}"]})
    write_media(tmp_path / "in" / "a.mp4", 1000)
    daemon = daemons(config)
    daemon.wait_ready()
    assert wait_until(lambda: json.loads(run_cli("status", "--json", "-c", str(config)).stdout)["jobs"]["ready"] == 1,
                      15)
    assert wait_until(lambda: json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
                      ["daemon"]["upload_window_open"] is False, 15)
    assert [e for e in sandbox.events() if e["path"].endswith("/media/uploads")] == []
    assert daemon.stop() == 0


def test_sighup_adds_a_folder_and_rejects_a_broken_config(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "a", "settle_seconds": 0.05}])
    daemon = daemons(config)
    daemon.wait_ready()
    data = yaml.safe_load(config.read_text())
    (tmp_path / "b").mkdir()
    data["folders"].append({"path": "b", "settle_seconds": 0.05, "collection_id": 3})
    config.write_text(yaml.safe_dump(data))
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.wait_event("config_reloaded", 10), daemon.output()
    write_media(tmp_path / "b" / "new.mp4", 5000, seed=4)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=15), daemon.output()
    assert sandbox.completed()[0]["collection_id"] == 3

    config.write_text("folders: [oops\n")
    daemon.proc.send_signal(signal.SIGHUP)
    assert daemon.wait_event("config_reload_rejected", 10)
    write_media(tmp_path / "a" / "still-works.mp4", 5000, seed=5)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 2, timeout=15), daemon.output()
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


class _Hook(BaseHTTPRequestHandler):
    received: list[dict] = []
    event = threading.Event()

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        type(self).event.set()
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_permanent_failure_runs_the_command_and_the_webhook(tmp_path, sandbox, daemons):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "alert.json"
    command = f"{sys.executable} -c \"import sys; open({str(out)!r}, 'w').write(sys.stdin.read())\""
    try:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05, "collection_id": 999}],
                              notify={"command": command, "webhook": f"http://127.0.0.1:{server.server_port}/hook"})
        daemon = daemons(config)
        write_media(tmp_path / "in" / "lost.mp4", 1000)
        assert _Hook.event.wait(20), daemon.output()
        assert wait_until(out.exists, 10)
        alert = json.loads(out.read_text())
        assert alert["event"] == "job_failed" and alert["job"]["path"].endswith("lost.mp4")
        assert "not found" in alert["job"]["last_error"]
        assert _Hook.received[0]["event"] == "job_failed"
        assert daemon.stop() == 0
    finally:
        server.shutdown()


class _Refusing(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(500)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_failing_webhook_is_logged_never_fatal(tmp_path):
    import io

    from studio_watch import logs
    from studio_watch.daemon.alerts import Alerts

    stream = io.StringIO()
    logs.setup("info", "json", stream=stream)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Refusing)
    closed_port = closed.server_port
    closed.server_close()  # nothing listens there any more
    try:
        for url in (f"http://127.0.0.1:{server.server_port}/hook", f"http://127.0.0.1:{closed_port}/hook?key=s3cret"):
            alerts = Alerts(None, url)
            alerts.start()
            alerts.send("job_failed", job={"id": 1})
            alerts.close()
    finally:
        server.shutdown()
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    failures = [e for e in events if e["event"] == "alert_webhook_failed"]
    assert len(failures) == 2 and "500" in failures[0]["error"]
    assert "refused" in failures[1]["error"].lower() and "s3cret" not in stream.getvalue()
    assert not any(e["event"] == "alert_sent" for e in events)


def test_status_shows_folder_health_and_transfers(tmp_path, daemons):
    from studio_watch.sandbox.server import Faults, Sandbox

    with Sandbox(faults=Faults(put_bytes_per_second=200_000)) as slow:
        config = write_config(tmp_path, slow.url, [{"path": "in", "settle_seconds": 0.05}])
        daemon = daemons(config)
        daemon.wait_ready()
        write_media(tmp_path / "in" / "big.mp4", 3_000_000)

        def transferring() -> bool:
            data = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
            return bool(data["transfers"]) and data["folders"][0]["watching"] is True

        assert wait_until(transferring, 20)
        human = run_cli("status", "-c", str(config)).stdout
        assert "uploading: job 1" in human and "ETA" in human and "inotify ok" in human
        assert daemon.stop() == 0
