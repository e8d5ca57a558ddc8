"""The upload progress bar on a terminal: the confirming step after 100 %, and other output on lines of its own."""

from __future__ import annotations

import io
import json

import structlog

from studio_watch import logs
from studio_watch.cli.output import CONFIRMING, AroundBar, ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_says_studio_is_confirming_once_every_byte_is_sent() -> None:
    term = Terminal()
    bar = ProgressBar(1000, term)
    bar.update(500, "sending")
    assert "ETA" in term.getvalue().rsplit("\r", 1)[-1] and CONFIRMING not in term.getvalue()
    bar.update(1000, "sending")
    last = term.getvalue().rsplit("\r", 1)[-1]
    assert "100.0%" in last and CONFIRMING in last and "ETA" not in last


def test_warnings_never_land_on_the_bars_line() -> None:
    term = Terminal()
    around = AroundBar(term)
    bar = around.bar = ProgressBar(1000, term)
    logs.setup("warning", "json", stream=around)  # type: ignore[arg-type]
    try:
        bar.update(300, "sending")
        structlog.get_logger("studio_watch.test").warning("upload_slow", job_id=1)
        bar.update(600, "sending")
        bar.done()
    finally:
        logs.setup("info", "json")
    lines = term.getvalue().split("\n")
    assert lines[0].startswith("\r[") and "30.0%" in lines[0]
    assert json.loads(lines[1])["event"] == "upload_slow"  # a line of its own, whole
    assert lines[2].startswith("\r[") and "60.0%" in lines[2]


def test_no_bar_off_a_terminal() -> None:
    out = io.StringIO()
    bar = ProgressBar(10, out)
    bar.update(10)
    bar.done()
    assert out.getvalue() == ""
