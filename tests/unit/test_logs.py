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
from studio_watch.files.reading import UploadFile
from studio_watch.studio.auth import StaticToken
from studio_watch.studio.client import StudioClient

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
            client.put(url, UploadFile(str(path), (st.st_ino, st.st_size, st.st_mtime_ns)))
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


# -- error text echoed by servers, and names shown to humans --------------------------------------------------------

@pytest.mark.parametrize("text, leaked", [
    ("<Error><RequestURI>/uploads/1001/f.mp4?X-Amz-Signature=abc123def&X-Amz-Expires=9</RequestURI></Error>",
     "abc123def"),
    ("PUT /_upload/5/tok?signature=0badc0ffee HTTP/1.1 refused", "0badc0ffee"),
    ('{"request": "/media/uploads?collection_id=2&sig=f00dfeed"}', "f00dfeed"),
    ("X-Goog-Signature=7e57ab1e&X-Goog-Date=1", "7e57ab1e"),
    ("echoed header Authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
    ("<Authorization>Bearer s3cr3t.tok-en</Authorization>", "s3cr3t.tok-en"),
])
def test_echoed_requests_lose_their_signature_and_credentials(text: str, leaked: str) -> None:
    assert leaked not in logs.redact(text) and "[redacted]" in logs.redact(text)


def test_ordinary_text_with_question_marks_and_slashes_is_left_alone() -> None:
    for text in ("is 1/2 done? yes", "Studio refused the authorization: access_denied", "what? /srv/drop ok"):
        assert logs.redact(text) == text


def test_a_registered_upload_url_is_redacted_however_it_is_quoted() -> None:
    logs.register_url("https://up.example/_upload/9/t?signature=5eed5eed5eed&expires=1")
    assert "5eed5eed5eed" not in logs.redact("server said: signature=5eed5eed5eed&expires=1 was bad")
    assert "5eed5eed5eed" not in logs.redact("query was [signature=5eed5eed5eed&expires=1]")


def test_a_registered_upload_url_is_redacted_when_a_server_echoes_it_percent_encoded() -> None:
    # A proxy's error page quoting the request as a parameter (?url=https%3A%2F%2F...%3Fsignature%3D...): the
    # registered query no longer matches, and no pattern knew %3F or %3D; the signature went into last_error.
    logs.register_url("https://up.example/_upload/9/t?signature=c0ffeec0ffeec0ffee&expires=1")
    echoed = "blocked: /error?url=https%3A%2F%2Fup.example%2F_upload%2F9%2Ft%3Fsignature%3Dc0ffeec0ffeec0ffee%26expires%3D1"
    assert "c0ffeec0ffeec0ffee" not in logs.redact(echoed)
    assert "c0ffeec0ffeec0ffee" not in logs.redact("signature%3dc0ffeec0ffeec0ffee")


@pytest.mark.parametrize("text, leaked", [
    ('{"error": "invalid_grant", "refresh_token": "rt-0123456789abcdef"}', "rt-0123456789abcdef"),
    ('{"access_token":"at-0123456789abcdef","token_type":"bearer"}', "at-0123456789abcdef"),
    ('{"client_secret": "cs-0123456789abcdef"}', "cs-0123456789abcdef"),
    ("body was grant_type=refresh_token&refresh_token=rt-0123456789&client_secret=cs-0123456789", "-0123456789"),
    ("X-Amz-Signature%3Dfeedfacefeedface%26X-Amz-Date%3D1", "feedfacefeedface"),
])
def test_unregistered_secrets_in_json_and_form_bodies_are_redacted(text: str, leaked: str) -> None:
    # Not registered (a token from another process, a new one an error body carried): the patterns must catch them.
    assert leaked not in logs.redact(text) and "[redacted]" in logs.redact(text)


def test_upload_url_secrets_are_bounded() -> None:
    for n in range(logs.URL_SECRETS_KEPT + 10):
        logs.register_url(f"https://up.example/u?signature=bounded-{n:06d}")
    assert len(logs._url_secrets) == logs.URL_SECRETS_KEPT
    assert "signature=bounded-000000" not in logs._url_secrets
    assert f"signature=bounded-{logs.URL_SECRETS_KEPT + 9:06d}" == logs._url_secrets[0]


def test_studio_watch_errors_are_redacted_when_they_become_text() -> None:
    from studio_watch.errors import PermanentError

    exc = PermanentError("put: HTTP 400: <RequestURI>/u/1?X-Amz-Signature=deadbeef99</RequestURI>", 400)
    assert "deadbeef99" not in str(exc) and "deadbeef99" not in f"{exc}"


def test_control_characters_are_escaped_for_humans_and_titles_have_none() -> None:
    name = "lecture\n2024-01-01 fake line\x1b[2J.mp4"
    assert logs.printable(name) == "lecture\\n2024-01-01 fake line\\x1b[2J.mp4"
    assert logs.title_text("week\t2\x1b[31m red\n") == "week 2 [31m red"
    assert logs.title_text("plain title") == "plain title"


def test_console_log_lines_escape_control_characters(capture: Callable[..., io.StringIO]) -> None:
    out = capture("console")
    structlog.get_logger("t").info("found a\nFORGED line\x1b[2J", path="b\nFORGED value\x1b[2J.mp4")
    logging.getLogger("some.lib").warning("third party a\nFORGED line")
    text = out.getvalue()
    assert text.count("\n") == 2 and "\x1b" not in text
    assert "found a\\nFORGED line\\x1b[2J" in text and "third party a\\nFORGED" in text
    assert "b\\nFORGED value" in text  # once escaped (the console renderer's repr), not twice


def test_alert_data_is_redacted_as_a_structure() -> None:
    data = logs.redact_data({"job": {"last_error": "HTTP 400 /u?sig=cafe0001", "id": 3}, "token": "x"})
    assert data == {"job": {"last_error": "HTTP 400 /u?[redacted]", "id": 3}, "token": "[redacted]"}
# -- journald priorities ---------------------------------------------------------------------------------------

def _journal_file(path: Path, monkeypatch: pytest.MonkeyPatch, matching: bool = True) -> Any:
    """A real file standing in for the journal's stream socket, $JOURNAL_STREAM naming it (or another file)."""
    stream = open(path, "w")
    st = os.fstat(stream.fileno()) if matching else os.stat(path.parent)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    return stream


def test_journal_lines_carry_their_syslog_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stream = _journal_file(tmp_path / "journal", monkeypatch)
    with stream:
        logs.setup("debug", "json", stream=stream)
        log = structlog.get_logger("studio_watch.test")
        log.debug("a_debug")
        log.info("an_info")
        log.warning("a_warning")
        log.error("an_error")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("an_exception")
        log.critical("a_critical")
        logging.getLogger("studio_watch.stdlib").error("stdlib %s", "error")
        logging.getLogger("studio_watch.stdlib").warning("stdlib warning")
    got = [(line[:3], json.loads(line[3:])["event"]) for line in (tmp_path / "journal").read_text().splitlines()]
    assert got == [("<7>", "a_debug"), ("<6>", "an_info"), ("<4>", "a_warning"), ("<3>", "an_error"),
                   ("<3>", "an_exception"), ("<2>", "a_critical"), ("<3>", "stdlib error"),
                   ("<4>", "stdlib warning")]


def test_no_priority_prefix_when_stderr_is_not_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """$JOURNAL_STREAM inherited by a process whose stderr went elsewhere (a pipe, a file) adds nothing."""
    stream = _journal_file(tmp_path / "out", monkeypatch, matching=False)
    with stream:
        logs.setup("info", "json", stream=stream)
        structlog.get_logger("studio_watch.test").error("an_error")
    line = (tmp_path / "out").read_text().strip()
    assert json.loads(line)["event"] == "an_error"


def test_multiline_console_output_is_prefixed_on_every_line() -> None:
    assert logs.with_priority("first\nsecond", "error") == "<3>first\n<3>second"
