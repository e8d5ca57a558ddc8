"""The status page on the metrics listener, rendered by a real browser (headless Chromium, Debian's `chromium`)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from studio_watch.sandbox.server import Faults, Sandbox

from ..conftest import ical_event, wait_until, write_calendar, write_config, write_media

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium here (Debian: apt-get install chromium; "
                                                         "listed in .ci/apt-packages)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dump_dom(url: str) -> str:
    """The DOM after Chromium loaded and rendered `url` (a fresh profile, nothing phoning home)."""
    assert CHROMIUM is not None
    with tempfile.TemporaryDirectory() as profile:
        done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                               "--disable-background-networking", "--disable-component-update", "--disable-sync",
                               "--no-first-run", f"--user-data-dir={profile}", "--dump-dom", url],
                              capture_output=True, text=True, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


class Page(HTMLParser):
    """The parts of the DOM the tests look at: text by element id, the rows of each table, <progress> values,
    and every element name (a <script> or <img> smuggled in by a file name would show up there)."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.text: dict[str, str] = {}
        self.rows: dict[str, list[str]] = {}
        self.progress: list[dict[str, str]] = []
        self.tags: set[str] = set()
        self._open: list[tuple[str, str | None]] = []
        self._table: str | None = None
        self._row: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        a = dict(attrs)
        if tag in ("meta", "link", "br", "img", "input"):
            return
        self._open.append((tag, a.get("id")))
        if tag == "table":
            self._table = a.get("id")
            self.rows[self._table or ""] = []
        elif tag == "tr":
            self._row = []
        elif tag == "progress":
            self.progress.append({k: v or "" for k, v in a.items()})

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr" and self._row is not None and self._table is not None:
            self.rows[self._table].append(" ".join(" ".join(self._row).split()))
            self._row = None
        if tag == "table":
            self._table = None
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, ident in self._open:
            if ident:
                self.text[ident] = self.text.get(ident, "") + data
        if self._row is not None:
            self._row.append(data)


def test_status_page_in_a_real_browser(tmp_path: Path, daemons) -> None:
    port = free_port()
    with Sandbox(faults=Faults(put_bytes_per_second=200_000)) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1, "collection_id": 2},
                                                      {"path": "lost", "settle_seconds": 0.1, "collection_id": 999}],
                              metrics={"listen": f"127.0.0.1:{port}"},
                              retry={"initial_seconds": 0.2, "max_seconds": 0.5, "max_attempts": 30,
                                     "request_tries": 1})
        daemon = daemons(config)
        daemon.wait_ready()
        write_media(tmp_path / "lost" / "nowhere.mp4", 1000)
        write_media(tmp_path / "in" / "<img src=x onerror=alert(1)>.mp4", 4_000_000)
        assert daemon.wait_event("job_failed", 20) and daemon.wait_event("upload_url_issued", 20), daemon.output()
        url = f"http://127.0.0.1:{port}/"
        assert wait_until(lambda: b"<progress" in urllib.request.urlopen(url, timeout=5).read(), 20, 0.2)
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.headers["Content-Type"] == "text/html; charset=utf-8"
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]

        page = Page(dump_dom(url))
        assert "Running" in page.text["queue"]
        assert "script" not in page.tags and "img" not in page.tags  # the file name is text, not markup
        assert any("<img src=x onerror=alert(1)>.mp4" in row for row in page.rows["transfers"][1:])
        assert len(page.progress) == 1 and int(page.progress[0]["max"]) == 4_000_000
        assert 0 <= int(page.progress[0]["value"]) <= 4_000_000
        assert any("nowhere.mp4" in row and "collection 999 not found" in row for row in page.rows["failures"][1:])
        folders = page.rows["folders"][1:]
        assert any(str(tmp_path / "in") in row and "collection 2" in row and " ok " in f" {row} " for row in folders)
        counts = page.rows["jobs"]
        assert counts[0].split() == ["settling", "waiting", "sending", "confirming", "done", "failed", "skipped"]
        assert counts[1].split()[5] == "1"  # one failed

        # Studio goes down: the page says the queue is paused, and why
        sandbox.faults.put_bytes_per_second = 0
        sandbox.faults.error_rate = 1.0
        write_media(tmp_path / "in" / "during-outage.mp4", 1000, seed=3)
        assert wait_until(lambda: b"Queue paused" in urllib.request.urlopen(url, timeout=5).read(), 30, 0.3), \
            daemon.output()
        paused = Page(dump_dom(url))
        assert "Queue paused" in paused.text["queue"] and paused.text["pause-reason"].strip()
        assert daemon.stop() == 0


def test_status_page_shows_each_timetable_its_next_lecture_and_a_missing_recording(tmp_path: Path, sandbox,
                                                                                    daemons) -> None:
    port = free_port()
    now = time.time()
    at = lambda offset: datetime.fromtimestamp(now + offset, timezone.utc)  # noqa: E731
    write_calendar(tmp_path / "room.ics", ical_event("gone", "CS101 Lecture", at(2), at(4)),
                   ical_event("soon", "CS102 Seminar", at(3600), at(7200)))
    config = write_config(tmp_path, sandbox.url, [{"path": "room-101", "settle_seconds": 0.1,
                                                   "expect": {"calendar": "room.ics", "grace": "2s"}}],
                          metrics={"listen": f"127.0.0.1:{port}"})
    daemon = daemons(config)
    daemon.wait_ready()
    assert daemon.wait_event("recording_missing", 30), daemon.output()  # nothing came for CS101
    url = f"http://127.0.0.1:{port}/"
    assert wait_until(lambda: b"no recording for" in urllib.request.urlopen(url, timeout=5).read(), 20, 0.2)
    page = Page(dump_dom(url))
    assert "script" not in page.tags
    html = urllib.request.urlopen(url, timeout=5).read().decode()
    assert "Timetables" in html and "next: CS102 Seminar" in html
    assert "room-101: no recording for &#x27;CS101 Lecture&#x27;" in html or \
        "room-101: no recording for 'CS101 Lecture'" in html
    assert "data-outcome='missing'" in html
    assert daemon.stop() == 0
