"""Logging: structlog configured once, JSON lines off a terminal, and secrets redacted everywhere.

Redaction has three layers: fields whose name says "secret" are masked, every registered secret value is
replaced wherever it appears, and the query string of any URL or bare path (where upload URLs carry their
signature, and what object stores echo back as `<RequestURI>/key?X-Amz-Signature=...`), any signature-like
parameter and any bearer token or Authorization header value are cut from every message, including those of
httpx's and httpcore's own loggers. `redact` is THE function: every error that becomes text on its way to the
database, a log line, the terminal or an alert passes through it.

`printable` escapes control characters (newlines, ANSI escapes) for human output: a file named
"a\x1b[2Jb.mp4" must not clear an operator's terminal or forge a log line.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from typing import Any, MutableMapping, TextIO

# structlog is imported at the first event that passes the level, not at import: its package imports
# structlog.stdlib, which imports asyncio (~22 ms of every cold start); `status`, `jobs` and a quiet `upload` log
# nothing. Modules take their logger from `get_logger` below.

SECRET_FIELDS = frozenset({"token", "access_token", "refresh_token", "client_secret", "authorization",
                           "password", "upload_url", "secret", "auth_code"})
_URL_QUERY = re.compile(r"(https?://[^\s?#\"'<>]+)\?[^\s\"'<>]*")
# A bare path with a query ("/uploads/1?X-Amz-Signature=..."): what an error body echoing the request shows.
_PATH_QUERY = re.compile(r"((?:^|(?<=[\s\"'=(<>:,\[]))/[^\s?#\"'<>]*)\?[^\s\"'<>]+")
# Signature-like parameters wherever they appear, even without their URL (a body listing them one by one).
# "=" may be percent-encoded ("%3D"): a request quoted as a parameter of another URL (a proxy's error page).
_SIGNED_PARAM = re.compile(r"(?i)\b((?:x-amz-|x-goog-)?(?:signature|sig|credential|security-token|token|"
                           r"access_token|refresh_token|id_token|client_secret|password|key-pair-id|policy|"
                           r"se?cret)(?:=|%3D))[^\s&\"'<>]+")
# A secret-named field of a JSON body ("refresh_token": "..."): what token endpoints and APIs answer or echo.
_JSON_SECRET = re.compile(r"(?i)(\"(?:access_token|refresh_token|id_token|client_secret|password|secret|token|"
                          r"upload_url|auth_code)\"\s*:\s*\")(?:[^\"\\]|\\.)+(?=\")")
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")
# An echoed header with a scheme other than Bearer ("Authorization: Basic dXNlcg=="): its credential goes.
# (A bearer token is cut by _BEARER, and the token itself is a registered secret whatever surrounds it.)
_AUTH_HEADER = re.compile(r"(?i)(authorization[\"']?\s*[:=]\s*[\"']?(?:basic|token|digest|negotiate|api-?key)\s+)"
                          r"(?!\[redacted\])[^\s\"',}<]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_secrets: tuple[str, ...] = ()  # longest first; replaced whole on registration, read without a lock
_url_secrets: tuple[str, ...] = ()  # the queries of the most recent upload URLs, newest first
# ... and their long parameter values (the signature): found however the query around them was quoted.
_url_values: tuple[str, ...] = ()
URL_VALUE_MIN = 16  # shorter values (an expiry, a size) are not secrets, and would redact ordinary text
URL_SECRETS_KEPT = 64  # as many as can be in flight at once, with room to spare
_secrets_lock = threading.Lock()
_configured = False


def register_secret(value: str | None) -> None:
    """Never let this value appear in a log line (tokens, client secrets)."""
    global _secrets
    if value and len(value) >= 4:
        with _secrets_lock:
            if value not in _secrets:
                _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def redact(text: str) -> str:
    """Remove registered secrets, URL and path query strings, signature parameters, bearer tokens and
    Authorization header values from a string."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, "[redacted]")
    for secret in (*_url_secrets, *_url_values):
        if secret in text:
            text = text.replace(secret, "[redacted]")
    if "?" in text:
        if "://" in text:
            text = _URL_QUERY.sub(r"\1?[redacted]", text)
        if "/" in text:
            text = _PATH_QUERY.sub(r"\1?[redacted]", text)
    if "=" in text or "%3" in text:
        text = _SIGNED_PARAM.sub(r"\1[redacted]", text)
    if '":' in text or '" :' in text:
        text = _JSON_SECRET.sub(r"\1[redacted]", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(r"\1[redacted]", text)
    if "uthorization" in text or "UTHORIZATION" in text:
        text = _AUTH_HEADER.sub(r"\1[redacted]", text)
    return text


def register_url(url: str | None) -> None:
    """An upload URL was handed out: its query (the signature) becomes a registered secret, so it is
    recognised wherever it shows up again, however a server chose to quote it."""
    global _url_secrets, _url_values
    query = url.split("?", 1)[1].split("#", 1)[0] if url and "?" in url else ""
    if len(query) >= 8:
        values = [v for p in query.split("&") if len(v := p.partition("=")[2]) >= URL_VALUE_MIN]
        with _secrets_lock:
            if query not in _url_secrets:  # bounded: a daemon hands out one URL per upload for months
                _url_secrets = (query, *_url_secrets[:URL_SECRETS_KEPT - 1])
            fresh = tuple(v for v in values if v not in _url_values)
            _url_values = (*fresh, *_url_values)[:URL_SECRETS_KEPT * 4]


def printable(text: str) -> str:
    """`text` with every control character escaped (\\n, \\x1b, ...): safe on a terminal and in a log line."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: m[0].encode("unicode_escape").decode("ascii"), text)


def title_text(text: str) -> str:
    """A title as sent to Studio: control characters become spaces, runs of spaces one, ends trimmed."""
    return " ".join(_CONTROL.sub(" ", text).split()) if _CONTROL.search(text) else text


def shown(text: str | None) -> str:
    """Text for a human: redacted, then control characters escaped (jobs, status, console logs)."""
    return "" if text is None else printable(redact(str(text)))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, BaseException):
        return redact(str(value))
    if isinstance(value, dict):
        return {k: "[redacted]" if str(k).lower() in SECRET_FIELDS and v is not None else _redact_value(v)
                for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_redact_value(v) for v in value]
    return value


def redact_data(value: Any) -> Any:
    """`redact` over a JSON-able structure (an alert): every string redacted, secret-named keys masked."""
    return _redact_value(value)


_PLAIN = frozenset({int, float, bool})  # values that cannot carry a secret's text (the common case: ids, sizes)


def _redact_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key, value in event.items():  # values are replaced, keys never added or removed: safe while iterating
        if value is None or key.startswith("_"):  # structlog's own bookkeeping (_record, _from_structlog)
            continue
        if key.lower() in SECRET_FIELDS:
            event[key] = "[redacted]"
        elif type(value) is str:
            event[key] = redact(value)
        elif type(value) not in _PLAIN:
            event[key] = _redact_value(value)
    return event


def _escape_event(logger: Any, method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """On a console, no message may carry a control character (a file name with a newline forges a line; one
    with an ANSI escape rewrites the screen). The console renderer shows the other values by repr(), which
    escapes them already; tracebacks keep their line breaks. JSON escapes everything by itself."""
    for key in ("event", "logger", "logger_name"):
        value = event.get(key)
        if type(value) is str:
            event[key] = printable(value)
    return event
# syslog priorities (sd-daemon(3)): what journald records as PRIORITY, what `journalctl -p err` filters on
PRIORITIES = {"debug": 7, "info": 6, "notice": 5, "warning": 4, "warn": 4, "error": 3, "exception": 3,
              "critical": 2, "fatal": 2}


def journal_connected(stream: TextIO | None = None) -> bool:
    """Is `stream` (default stderr) the journal? systemd sets $JOURNAL_STREAM to "<device>:<inode>" of the
    socket it connected stdout/stderr to; a stream redirected elsewhere since (a pipe, a file) does not match."""
    value = os.environ.get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat((stream or sys.stderr).fileno())
    except (ValueError, OSError, AttributeError):  # unset, malformed, or a stream with no file descriptor
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def with_priority(message: str, level: str) -> str:
    """`message` with the `<N>` prefix journald reads as the line's priority (on every line of it)."""
    prefix = f"<{PRIORITIES.get(level, 6)}>"
    return prefix + message.replace("\n", "\n" + prefix)


class _LineWriter:
    """A structlog logger: one line per event to a stream, and a name for the `logger` field. `journal`: prefix
    each line with its priority for journald."""

    _lock = threading.Lock()  # one for every instance: lines from different modules never interleave

    def __init__(self, stream: TextIO | None, name: str, journal: bool = False) -> None:
        self.stream, self.name = stream, name  # None: whatever sys.stderr is when a line is written
        self.journal = journal

    def _write(self, message: str, level: str) -> None:
        stream = self.stream or sys.stderr
        if self.journal:
            message = with_priority(message, level)
        with self._lock:
            try:
                stream.write(message + "\n")
                stream.flush()
            except (OSError, ValueError):  # a closed or broken stream must never take an upload down with it
                pass

    def msg(self, message: str) -> None:
        self._write(message, "info")

    log = msg

    def debug(self, message: str) -> None:
        self._write(message, "debug")

    def info(self, message: str) -> None:
        self._write(message, "info")

    def warning(self, message: str) -> None:
        self._write(message, "warning")

    warn = warning

    def error(self, message: str) -> None:
        self._write(message, "error")

    exception = error

    def critical(self, message: str) -> None:
        self._write(message, "critical")

    fatal = critical


def is_configured() -> bool:
    return _configured


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "exception": 40, "critical": 50}
_threshold = 0  # events below it are dropped before structlog is even imported (0: not set up: pass them all)
_pending: tuple[str, str, TextIO | None] | None = None  # a setup() not applied to structlog yet
_setup_lock = threading.Lock()


class Logger:
    """A module's logger: `info(event, **fields)` and friends, passed to structlog's logger of that name, which
    is made (and structlog imported and configured) at the first event at or above the configured level."""

    __slots__ = ("name", "_real")

    def __init__(self, name: str) -> None:
        self.name = name
        self._real: Any = None

    def _emit(self, method: str, event: str, fields: dict[str, Any]) -> Any:
        if _LEVELS[method] < _threshold:
            return None
        real = self._real
        if real is None:
            _apply_pending()
            import structlog  # start-up cost: structlog (and asyncio) only once something logs

            real = self._real = structlog.get_logger(self.name)  # a lazy proxy: follows later reconfiguration
        return getattr(real, method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> Any:
        return self._emit("debug", event, fields)

    def info(self, event: str, **fields: Any) -> Any:
        return self._emit("info", event, fields)

    def warning(self, event: str, **fields: Any) -> Any:
        return self._emit("warning", event, fields)

    def error(self, event: str, **fields: Any) -> Any:
        return self._emit("error", event, fields)

    def exception(self, event: str, **fields: Any) -> Any:
        return self._emit("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> Any:
        return self._emit("critical", event, fields)


def get_logger(name: str) -> Logger:
    return Logger(name)


class _LazyFormatter(logging.Formatter):
    """The root handler's formatter: structlog's ProcessorFormatter, built at the first foreign record.
    `journal`: third-party loggers' lines get the same priority prefix as our own."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.real: logging.Formatter | None = None
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        if self.real is None:
            _apply_pending()
            self.real = _processor_formatter(*_applied)
        text = self.real.format(record)
        return with_priority(text, record.levelname.lower()) if self.journal else text


_applied: tuple[str, str, TextIO | None] = ("info", "auto", None)


def _apply_pending() -> None:
    global _pending
    with _setup_lock:
        if _pending is not None:
            _configure(*_pending)
            _pending = None


def setup(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Configure logging once per process (later calls reconfigure): the standard library's root handler now,
    structlog now if something imported it already, else at the first event that passes `level`.
    Under systemd (stderr is the journal, per $JOURNAL_STREAM) every line carries its priority."""
    global _configured, _pending, _threshold
    _threshold = logging.getLevelName(level.upper())
    handler = logging.StreamHandler(stream)  # None: sys.stderr
    handler.setFormatter(_LazyFormatter(journal_connected(stream)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "hpack", "watchdog"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    with _setup_lock:
        _pending = (level, fmt, stream)
    _configured = True
    if "structlog" in sys.modules:
        _apply_pending()


def _shared(level: str, fmt: str, stream: TextIO | None) -> tuple[list[Any], Any]:
    import structlog  # start-up cost: structlog (and asyncio) only once something logs

    use_json = fmt == "json" or (fmt == "auto" and not (stream or sys.stderr).isatty())
    renderer: Any = structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=False)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,  # the traceback becomes an "exception" string, then is redacted
        _redact_event,
    ]
    if not use_json:
        shared.append(_escape_event)
    return shared, renderer


def _processor_formatter(level: str, fmt: str, stream: TextIO | None) -> logging.Formatter:
    import structlog  # start-up cost: structlog (and asyncio) only once something logs

    shared, renderer = _shared(level, fmt, stream)
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared])


def _configure(level: str, fmt: str, stream: TextIO | None) -> None:
    """Apply a setup() to structlog (our own events) and to the root handler's formatter (everyone else's)."""
    global _applied
    import structlog  # start-up cost: structlog (and asyncio) only once something logs

    _applied = (level, fmt, stream)
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, _LazyFormatter):
            handler.formatter.real = _processor_formatter(level, fmt, stream)
    shared, renderer = _shared(level, fmt, stream)
    journal = journal_connected(stream)
    # Our own events skip the standard library entirely (several per uploaded file: they must be cheap);
    # third-party loggers go through the handler above with the same processors.
    structlog.configure(
        processors=[structlog.stdlib.add_logger_name, *shared, renderer],
        logger_factory=lambda *args: _LineWriter(stream, args[0] if args else "studio_watch", journal),
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        cache_logger_on_first_use=False,
    )
