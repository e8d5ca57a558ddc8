"""logs.setup: JSON/console output and secret redaction, for structlog events and stdlib loggers alike."""

from __future__ import annotations

import io
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

import pytest
import structlog

from studio_watch import logs
from studio_watch.config import RetryConfig, StudioConfig
from studio_watch.sandbox.server import Faults, Sandbox
from studio_watch.studio.client import StaticToken, StudioClient

NOISY = ("httpx", "httpcore", "hpack", "watchdog")


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """logs.setup rewires the root logger and structlog: put everything back after each test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in NOISY}
    config = structlog.get_config()
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in levels.items():
        logging.getLogger(name).setLevel(lvl)
    structlog.configure(**config)


@pytest.fixture
def capture() -> Callable[..., io.StringIO]:
    def setup(fmt: str = "json", level: str = "debug") -> io.StringIO:
        stream = io.StringIO()
        logs.setup(level, fmt, stream=stream)
        return stream
    return setup


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_event_level_timestamp(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    structlog.get_logger("studio_watch.test").info("upload_completed", job_id=7, bytes=1234)
    logging.getLogger("studio_watch.other").warning("from stdlib %d", 5)
    first, second = lines(out)
    assert first["event"] == "upload_completed" and first["level"] == "info" and first["job_id"] == 7
    assert first["timestamp"].endswith("Z") and first["logger"] == "studio_watch.test"
    assert second["event"] == "from stdlib 5" and second["level"] == "warning" and "timestamp" in second


def test_level_filters(capture: Callable[..., io.StringIO]) -> None:
    out = capture(level="warning")
    log = structlog.get_logger("t")
    log.info("hidden")
    log.warning("shown")
    assert [e["event"] for e in lines(out)] == ["shown"]


def test_console_format_is_not_json(capture: Callable[..., io.StringIO]) -> None:
    out = capture("console")
    structlog.get_logger("t").info("upload_completed", job_id=7)
    text = out.getvalue()
    assert "upload_completed" in text and "job_id=7" in text and "info" in text
    with pytest.raises(ValueError):
        json.loads(text.splitlines()[0])


def test_registered_secret_is_redacted_in_fields_message_and_exceptions(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    logs.register_secret("s3cr3t-ABCDEF-1")
    structlog.get_logger("t").info("using s3cr3t-ABCDEF-1 now", note="x s3cr3t-ABCDEF-1 y",
                                   error=ValueError("refused s3cr3t-ABCDEF-1"))
    logging.getLogger("some.lib").info("lib got %s", "s3cr3t-ABCDEF-1")
    text = out.getvalue()
    assert "s3cr3t-ABCDEF-1" not in text
    first, second = lines(out)
    assert first["event"] == "using [redacted] now" and first["note"] == "x [redacted] y"
    assert first["error"] == "refused [redacted]"
    assert second["event"] == "lib got [redacted]"


def test_short_values_are_not_registered(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    logs.register_secret("abc")  # too short: redacting it would mangle ordinary words
    logs.register_secret(None)
    structlog.get_logger("t").info("abc def")
    assert lines(out)[0]["event"] == "abc def"


@pytest.mark.parametrize("field", ["token", "refresh_token", "client_secret", "authorization", "upload_url",
                                   "Authorization", "access_token", "password"])
@pytest.mark.parametrize("value", ["plain", 12345, {"nested": "x"}])
def test_secret_named_fields_are_masked_whatever_their_value(capture: Callable[..., io.StringIO], field: str,
                                                             value: Any) -> None:
    out = capture()
    structlog.get_logger("t").info("e", **{field: value, "other": "plain"})
    [event] = lines(out)
    assert event[field] == "[redacted]" and event["other"] == "plain"


def test_url_query_is_cut_in_any_field_and_message(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    url = "https://bucket.example.com/uploads/1001/file?X-Amz-Signature=deadbeef01&X-Amz-Expires=3600"
    structlog.get_logger("t").info(f"put to {url} failed", target=url, error=f"503 for url '{url}'")
    text = out.getvalue()
    assert "deadbeef01" not in text and "X-Amz" not in text
    [event] = lines(out)
    assert event["target"] == "https://bucket.example.com/uploads/1001/file?[redacted]"
    assert event["event"] == "put to https://bucket.example.com/uploads/1001/file?[redacted] failed"


def test_bearer_token_in_a_third_party_log_line_is_redacted(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    logging.getLogger("httpx").warning("sent header %s", "Authorization: Bearer abc.def-ghi_jkl")
    [event] = lines(out)
    assert "abc.def" not in out.getvalue()
    assert event["event"] == "sent header Authorization: Bearer [redacted]" and event["logger"] == "httpx"


def test_noisy_loggers_are_quiet_at_debug(capture: Callable[..., io.StringIO]) -> None:
    out = capture(level="debug")
    logging.getLogger("httpx").info("HTTP Request: GET https://x/y")
    logging.getLogger("httpcore.connection").debug("connect_tcp.started")
    structlog.get_logger("t").debug("ours")
    assert [e["event"] for e in lines(out)] == ["ours"]


def test_structlog_exception_keeps_its_traceback(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    try:
        raise RuntimeError("disk on fire")
    except RuntimeError:
        structlog.get_logger("t").exception("job_crashed", job_id=3)
    text = out.getvalue()
    assert "Traceback" in text and "disk on fire" in text


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exception_text_is_redacted(capture: Callable[..., io.StringIO], fmt: str) -> None:
    out = capture(fmt)
    logs.register_secret("s3cr3t-EXC-2")
    try:
        raise RuntimeError("boom s3cr3t-EXC-2 https://h.example/x?signature=feedface")
    except RuntimeError:
        logging.getLogger("some.lib").exception("lib failed")
        structlog.get_logger("t").exception("job_crashed")
    text = out.getvalue()
    assert "s3cr3t-EXC-2" not in text and "feedface" not in text
    assert text.count("Traceback") == 2


def test_secrets_inside_containers_are_redacted(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    logs.register_secret("s3cr3t-NEST-3")
    structlog.get_logger("t").info("e", params={"k": "s3cr3t-NEST-3"},
                                   urls=["https://h.example/p?signature=cafebabe"])
    text = out.getvalue()
    assert "s3cr3t-NEST-3" not in text and "cafebabe" not in text


def test_a_full_upload_at_debug_logs_no_token_and_no_url_signature(capture: Callable[..., io.StringIO],
                                                                   tmp_path: Path) -> None:
    out = capture(level="debug")
    logging.getLogger("httpx").setLevel(logging.DEBUG)  # an operator chasing a problem turns the wire log on
    logging.getLogger("httpcore").setLevel(logging.DEBUG)
    token = "tok-E2E-sandbox-77"
    path = tmp_path / "lecture.mp4"
    path.write_bytes(os.urandom(300_000))
    st = os.stat(path)
    # seed 7: the first two PUTs are reset, so the client logs its retries (with the error text) too
    with Sandbox(tokens=(token,), faults=Faults(reset_rate=0.5, seed=7)) as sb:
        client = StudioClient(StudioConfig(url=sb.url, token_file=None, token_env="X", timeout_seconds=10),
                              RetryConfig(initial_seconds=0.01, max_seconds=0.2, max_attempts=5, request_tries=5),
                              StaticToken(lambda: token))
        try:
            media_id, url = client.generate(1, None)
            client.put(url, str(path), (st.st_ino, st.st_size, st.st_mtime_ns))
            assert client.complete(media_id, "Lecture", "", False) is not None
        finally:
            client.close()
        assert len(sb.completed()) == 1
    text = out.getvalue()
    events = [e["event"] for e in lines(out)]
    assert "request_retry" in events  # not vacuous: retries with their error text, and the wire log:
    assert any(e["event"] == "http_request" and e["method"] == "PUT" for e in lines(out))
    query = urlsplit(url).query
    signature = dict(p.split("=", 1) for p in query.split("&"))["signature"]
    assert token not in text
    assert signature not in text and query not in text
