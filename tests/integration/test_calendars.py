"""Calendar sources over real loopback HTTP(S): fetched with the project's TLS settings, the last good copy kept
0600 beside the state database and used when the server is gone or answers rubbish; `expect:` in the config."""

from __future__ import annotations

import datetime as dt
import ssl
import stat
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator

import pytest

from studio_watch import config
from studio_watch.config import ExpectConfig
from studio_watch.daemon.calendars import CalendarSource, cache_path, load_local
from studio_watch.errors import ConfigError, TransientError
from studio_watch.studio.fetch import fetch_document, shown_url
from tests.conftest import ical_event, write_calendar

START = dt.datetime(2026, 12, 7, 9, 0)


class _Served(BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, dict[str, str], bytes]] = {}

    def do_GET(self) -> None:
        status, headers, body = self.routes.get(self.path, (404, {}, b"no"))
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def _serve(tls: ssl.SSLContext | None = None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Served)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def http() -> Iterator[ThreadingHTTPServer]:
    server = _serve()
    yield server
    server.shutdown()
    server.server_close()


def _ics(tmp_path: Path, summary: str = "CS101 Lecture") -> bytes:
    return write_calendar(tmp_path / f"{summary}.ics", ical_event("u", summary, START, START.replace(hour=10),
                                                                  tzid="Europe/Berlin")).read_bytes()


def test_https_with_the_configured_ca_bundle_and_nothing_else(tmp_path: Path) -> None:
    from studio_watch.sandbox.tls import make_certificates

    tls = make_certificates(tmp_path / "tls", ["127.0.0.1"])  # a private CA and a server certificate it signed
    cert = tls.ca
    server_side = tls.server_context()
    server = _serve(server_side)
    try:
        body = _ics(tmp_path)
        _Served.routes = {"/cal/secret-key/room.ics": (200, {"Content-Type": "text/calendar"}, body)}
        url = f"https://127.0.0.1:{server.server_port}/cal/secret-key/room.ics"
        assert fetch_document(url, cert, 5) == body
        with pytest.raises(TransientError) as refused:  # the system's trust store does not know this CA
            fetch_document(url, None, 5)
        assert "CERTIFICATE_VERIFY_FAILED" in str(refused.value) or "certificate" in str(refused.value).lower()
        assert "secret-key" not in str(refused.value)
    finally:
        server.shutdown()
        server.server_close()


def test_errors_name_the_host_never_the_private_path(http: ThreadingHTTPServer) -> None:
    url = f"http://127.0.0.1:{http.server_port}/private/t0ken/room.ics?auth=abc"
    _Served.routes = {}
    with pytest.raises(TransientError, match=r"HTTP 404") as failed:
        fetch_document(url, None, 5)
    assert "t0ken" not in str(failed.value) and "abc" not in str(failed.value)
    assert shown_url(url) == f"http://127.0.0.1:{http.server_port}/…"


def test_last_good_copy_is_kept_and_used_when_the_server_fails(tmp_path: Path, http: ThreadingHTTPServer) -> None:
    state_db = tmp_path / "state.db"
    url = f"http://127.0.0.1:{http.server_port}/room.ics"
    expect = ExpectConfig(calendar=url, refresh_seconds=60)
    fetch = lambda u: fetch_document(u, None, 5)  # noqa: E731
    good = _ics(tmp_path)
    _Served.routes = {"/room.ics": (200, {}, good)}
    source = CalendarSource(expect, state_db, fetch)
    timetable = source.current(1000.0)
    assert timetable is not None and source.state.error is None and not source.state.from_copy
    copy = cache_path(state_db, url)
    assert copy.read_bytes() == good and stat.S_IMODE(copy.stat().st_mode) == 0o600
    assert copy.parent == state_db.parent and "room" not in copy.name  # named by a hash of the URL

    _Served.routes = {"/room.ics": (200, {}, b"<html>maintenance</html>")}
    assert source.current(1001.0) is timetable, "fetched again before refresh was due"
    assert source.current(1061.0) is timetable  # rubbish answer: the old timetable stays...
    assert "not a valid iCalendar" in (source.state.error or "")
    assert copy.read_bytes() == good  # ...and so does the copy

    _Served.routes = {}
    restarted = CalendarSource(expect, state_db, fetch)  # a restart during the outage
    again = restarted.current(2000.0)
    assert again is not None and restarted.state.from_copy and "HTTP 404" in (restarted.state.error or "")
    lectures = again.lectures(dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc),
                              dt.datetime(2026, 12, 14, tzinfo=dt.timezone.utc))
    assert [x.summary for x in lectures] == ["CS101 Lecture"]
    assert load_local(expect, state_db)[0] is not None  # what `status` reads, without the network

    _Served.routes = {"/room.ics": (200, {}, _ics(tmp_path, "Moved Lecture"))}
    newer = restarted.current(2061.0)
    assert newer is not None and restarted.state.error is None and not restarted.state.from_copy
    assert "Moved Lecture" in copy.read_text()


def test_a_calendar_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "room.ics"
    path.write_bytes(_ics(tmp_path))
    source = CalendarSource(ExpectConfig(calendar=str(path)), tmp_path / "state.db", fetch=None)
    first = source.current(0.0)
    assert first is not None and source.current(1.0) is first
    path.write_text("BEGIN:VCALENDAR\r\nbroken")
    assert source.current(2.0) is first and source.state.error  # a half-saved edit keeps the last good one
    path.write_bytes(_ics(tmp_path, "Edited"))
    edited = source.current(3.0)
    assert edited is not first and source.state.error is None
    assert not list(tmp_path.glob("state.db.calendar-*")), "a file calendar needs no copy"


# -- the config -----------------------------------------------------------------------------------------------------

def _parse(tmp_path: Path, defaults: dict[str, Any], *folders: dict[str, Any]) -> config.Config:
    token = tmp_path / "token"
    token.write_text("t")
    for f in folders:
        (tmp_path / f["path"]).mkdir(exist_ok=True)
    return config.parse(tmp_path / "config.yaml", {
        "studio": {"url": "https://studio.example.edu", "token_file": "token"}, "state_db": "state.db",
        "defaults": defaults, "folders": list(folders)})


def test_expect_in_defaults_and_per_folder(tmp_path: Path) -> None:
    (tmp_path / "r101.ics").write_bytes(_ics(tmp_path))
    cfg = _parse(tmp_path, {"expect": {"grace": "30m"}},
                 {"path": "room-101", "expect": {"calendar": "r101.ics"}},
                 {"path": "room-102", "expect": {"calendar": "https://tt.example.edu/102.ics", "grace": "5m",
                                                 "refresh": "1h"}},
                 {"path": "lobby"})
    r101, r102, lobby = cfg.folders
    assert r101.expect == ExpectConfig(calendar=str(tmp_path / "r101.ics"), grace_seconds=1800.0)
    assert r102.expect == ExpectConfig(calendar="https://tt.example.edu/102.ics", grace_seconds=300.0,
                                       refresh_seconds=3600.0)
    assert lobby.expect is None  # defaults gave only a grace: no calendar, no checks
    cfg = _parse(tmp_path, {"expect": {"calendar": "r101.ics"}}, {"path": "room-101"},
                 {"path": "lobby", "expect": False})
    assert cfg.folders[0].expect is not None and cfg.folders[0].expect.grace_seconds == 1200.0
    assert cfg.folders[1].expect is None


@pytest.mark.parametrize("expect, message", [
    ({"calendar": "missing.ics"}, "folders[0].expect.calendar: no such file"),
    ({"grace": "20m"}, "folders[0].expect.calendar: required"),
    ({"calendar": "https://tt.example.edu/x.ics", "grace": "-5m"}, "folders[0].expect.grace: expected a duration"),
    ({"calendar": "https://tt.example.edu/x.ics", "refresh": 0}, "folders[0].expect.refresh: must be greater"),
    ({"calendar": "ftp://tt.example.edu/x.ics"}, "folders[0].expect.calendar: no such file"),
    ({"calendar": "http://tt.example.edu/x.ics"}, "folders[0].expect.calendar: http:// is only allowed for loopback"),
    ({"calendar": "https://tt.example.edu/x.ics", "grcae": "5m"}, "folders[0].expect.grcae: unknown key"),
])
def test_bad_expect_names_the_key(tmp_path: Path, expect: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re_escape(message)):
        _parse(tmp_path, {}, {"path": "room", "expect": expect})


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_check_fetches_but_never_writes_the_daemons_copy(tmp_path: Path, http: ThreadingHTTPServer) -> None:
    from studio_watch.daemon.timetable_report import check_timetables

    _Served.routes = {"/room.ics": (200, {}, _ics(tmp_path))}
    url = f"http://127.0.0.1:{http.server_port}/room.ics"
    cfg = _parse(tmp_path, {}, {"path": "room", "expect": {"calendar": url}})
    now = dt.datetime(2026, 12, 7, 8, 0, tzinfo=dt.timezone.utc).timestamp()
    [result] = check_timetables(cfg, lambda u: fetch_document(u, None, 5), now)
    assert result.verdict == "ok" and "1 lecture(s) expected this week" in result.detail, result.line()
    assert not cache_path(cfg.state_db, url).exists()


def test_the_fetch_follows_the_proxy_environment(tmp_path: Path, http: ThreadingHTTPServer,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """https through a CONNECT proxy to a calendar host only the proxy can resolve (tests/netstubs.py); NO_PROXY
    sends it direct, where the name does not resolve. Loopback itself never goes through a proxy."""
    from studio_watch.sandbox.tls import make_certificates
    from tests.netstubs import ConnectProxy, TlsFront

    name = "calendar.campus.test"
    ca = make_certificates(tmp_path / "ca", [name])
    _Served.routes = {"/rooms/101.ics": (200, {"Content-Type": "text/calendar"}, _ics(tmp_path))}
    with TlsFront(ca.server_context(), http.server_port) as front, ConnectProxy({name: "127.0.0.1"}) as proxy:
        url = f"https://{name}:{front.port}/rooms/101.ics"
        for variable in ("NO_PROXY", "no_proxy", "https_proxy", "all_proxy", "ALL_PROXY"):
            monkeypatch.delenv(variable, raising=False)
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        assert fetch_document(url, ca.ca, 5) == _Served.routes["/rooms/101.ics"][2]
        assert proxy.tunnels() == [f"{name}:{front.port}"]
        monkeypatch.setenv("NO_PROXY", "campus.test")
        with pytest.raises(TransientError, match=f"cannot reach https://{name}:{front.port}") as direct:
            fetch_document(url, ca.ca, 5)
        assert "rooms" not in str(direct.value) and proxy.tunnels() == [f"{name}:{front.port}"]


class _Recorder(BaseHTTPRequestHandler):
    """A proxy that only records what it is asked (plain GET or CONNECT) and refuses it."""

    asked: list[str] = []

    def _refuse(self) -> None:
        self.asked.append(f"{self.command} {self.path}")
        self.send_response(502)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_CONNECT = _refuse

    def log_message(self, *args: Any) -> None:
        pass


def test_a_redirect_from_https_to_plain_http_is_refused_before_it_is_followed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The answer was refused only after httpx had followed it: the private calendar path (its secret) had
    # already gone out in clear text. The plain-http hop is seen here by a loopback proxy standing in for the
    # network; it must never be asked.
    from studio_watch.sandbox.tls import make_certificates

    tls = make_certificates(tmp_path / "tls", ["127.0.0.1"])
    server = _serve(tls.server_context())
    proxy = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        _Recorder.asked = []
        monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.server_port}")
        for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        _Served.routes = {"/cal/room.ics": (302, {"Location": "http://calendar.example.org/private/t0ken/room.ics"},
                                            b"")}
        with pytest.raises(TransientError, match="plain http") as refused:
            fetch_document(f"https://127.0.0.1:{server.server_port}/cal/room.ics", tls.ca, 5)
        assert "t0ken" not in str(refused.value)
        assert _Recorder.asked == [], "the plain-http hop was sent"
        body = _ics(tmp_path)  # an https hop is followed
        _Served.routes = {"/cal/old.ics": (301, {"Location": "/cal/new.ics"}, b""), "/cal/new.ics": (200, {}, body)}
        assert fetch_document(f"https://127.0.0.1:{server.server_port}/cal/old.ics", tls.ca, 5) == body
    finally:
        proxy.shutdown()
        proxy.server_close()
        server.shutdown()
        server.server_close()


class _Drip(BaseHTTPRequestHandler):
    """A calendar server that answers, then sends its body one byte at a time, never finishing."""

    stop = threading.Event()

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        while not self.stop.wait(0.2):
            try:
                self.wfile.write(b"B")
                self.wfile.flush()
            except OSError:
                return

    def log_message(self, *args: Any) -> None:
        pass


def test_a_server_that_never_finishes_its_answer_cannot_hold_the_fetch(tmp_path: Path) -> None:
    # httpx's timeout is per read: a byte every 0.2 s never trips a 1 s timeout, so the fetch (on the one thread
    # that judges every folder's lectures) would wait for the whole megabyte, days at a byte a second. The
    # fetch has a deadline for the whole answer.
    import time

    server = ThreadingHTTPServer(("127.0.0.1", 0), _Drip)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _Drip.stop.clear()
    try:
        started = time.monotonic()
        with pytest.raises(TransientError, match="too long"):
            fetch_document(f"http://127.0.0.1:{server.server_port}/room.ics", None, 1)
        assert time.monotonic() - started < 15
    finally:
        _Drip.stop.set()
        server.shutdown()
        server.server_close()


def test_a_fifo_at_the_calendar_path_is_a_problem_not_a_hang(tmp_path: Path) -> None:
    # read_bytes() on a FIFO waits for a writer forever, on the one thread that judges every folder (and in
    # status/explain). The calendar file is often exported to a share by another system: it is only read when
    # it is a regular file.
    import os

    path = tmp_path / "room.ics"
    os.mkfifo(path)
    result: list[Any] = []
    source = CalendarSource(ExpectConfig(calendar=str(path)), tmp_path / "state.db", fetch=None)
    worker = threading.Thread(target=lambda: result.append((source.current(0.0), source.state.error,
                                                            load_local(source.expect, tmp_path / "state.db"))),
                              daemon=True)
    worker.start()
    worker.join(10)
    if worker.is_alive():
        with open(path, "wb"):  # let the stuck reader go, so the test process can end
            pass
        pytest.fail("reading the calendar blocked on a FIFO")
    [(timetable, error, (copy, problem))] = result
    assert timetable is None and "not a regular file" in (error or "")
    assert copy is None and "not a regular file" in (problem or "")
