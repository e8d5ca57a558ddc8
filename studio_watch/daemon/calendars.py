"""Where a folder's timetable comes from: a file (re-read when it changes) or a URL (fetched every `refresh`),
whose last good copy is kept beside the state database so an outage of the calendar server does not blind the
check, and a restart during one still knows the timetable.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from studio_watch.logs import get_logger
from studio_watch.config import ExpectConfig
from studio_watch.errors import StudioWatchError
from studio_watch.expect.timetable import Timetable, TimetableError
from studio_watch.studio.fetch import MAX_DOCUMENT_BYTES, shown_url

log = get_logger(__name__)

Fetch = Callable[[str], bytes]  # GET a URL's body (studio.fetch.fetch_document with the config's TLS settings)
RETRY_FAILED_FETCH = 60.0  # seconds before a failed fetch is tried again (when `refresh` is longer)


def cache_path(state_db: Path, url: str) -> Path:
    """The last good copy of a calendar URL: beside the state database, named by a hash of the URL (which may
    carry a secret)."""
    return Path(f"{state_db}.calendar-{hashlib.sha256(url.encode()).hexdigest()[:16]}.ics")


@dataclass
class SourceState:
    """What `status` and `check` say about a calendar source."""

    shown: str
    loaded_at: float | None = None  # when the timetable in use was read (fetched, or the file changed)
    from_copy: bool = False  # the timetable in use is the last good copy, the URL failed or is not read yet
    error: str | None = None  # the last read's problem (None when it went well)


class CalendarSource:
    """One folder's timetable. `current(now)` re-reads when due and returns the last good timetable (or None)."""

    def __init__(self, expect: ExpectConfig, state_db: Path, fetch: Fetch | None, keep_copy: bool = True) -> None:
        """`keep_copy=False` (for `check`, perhaps run as another user) reads the copy but never writes it."""
        assert expect.calendar is not None
        self.expect, self.fetch, self.keep_copy = expect, fetch, keep_copy
        self.url = expect.calendar if expect.is_url else None
        self.path = None if expect.is_url else Path(expect.calendar)
        self.copy = cache_path(state_db, expect.calendar) if self.url else None
        self.state = SourceState(shown_url(self.url) if self.url else expect.calendar)
        self.timetable: Timetable | None = None
        self.version = 0  # counts the timetables taken into use (a new one is expanded again)
        self._identity: tuple[int, int, int] | None = None
        self._next_fetch = 0.0

    def current(self, now: float, network: bool = True) -> Timetable | None:
        try:
            if self.path is not None:
                self._read_file()
            else:
                if self.timetable is None:
                    self._read_copy()
                if network and now >= self._next_fetch:
                    self._fetch(now)
        except Exception as exc:  # never let a bad calendar stop the daemon: keep the last good timetable
            self._problem(f"{type(exc).__name__}: {exc}")
        return self.timetable

    def _read_file(self) -> None:
        assert self.path is not None
        try:
            st = os.stat(self.path)
        except OSError as exc:
            self._problem(f"cannot read {self.path}: {exc.strerror}")
            return
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._identity:
            return
        self._identity = identity
        try:
            data = read_calendar_file(self.path)
        except OSError as exc:
            self._problem(f"cannot read {self.path}: {exc.strerror}")
            return
        self._use(data, str(self.path), from_copy=False)

    def _read_copy(self) -> None:
        assert self.copy is not None
        try:
            data = read_calendar_file(self.copy)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("calendar_copy_unreadable", copy=str(self.copy), error=exc.strerror)
            return
        self._use(data, f"{self.state.shown} (last good copy {self.copy})", from_copy=True, quiet=True)

    def _fetch(self, now: float) -> None:
        assert self.url is not None and self.copy is not None and self.fetch is not None
        self._next_fetch = now + min(self.expect.refresh_seconds, RETRY_FAILED_FETCH)  # until it has worked
        try:
            data = self.fetch(self.url)
        except StudioWatchError as exc:
            self.state.from_copy = self.timetable is not None
            self._problem(str(exc))
            return
        try:
            Timetable.parse(data, self.state.shown)
        except TimetableError as exc:  # a broken answer never replaces the last good copy
            self._problem(str(exc))
            return
        if self.keep_copy:
            write_private(self.copy, data)
        self._use(data, self.state.shown, from_copy=False)
        self._next_fetch = now + self.expect.refresh_seconds

    def _use(self, data: bytes, source: str, from_copy: bool, quiet: bool = False) -> bool:
        try:
            timetable = Timetable.parse(data, source)
        except TimetableError as exc:
            self._problem(str(exc))
            return False
        changed = self.timetable is None or self.timetable.calendar.to_ical() != timetable.calendar.to_ical()
        self.timetable = timetable
        self.version += 1
        self.state.loaded_at, self.state.from_copy, self.state.error = time.time(), from_copy, None
        if changed and not quiet:
            log.info("calendar_loaded", calendar=self.state.shown, events=len(timetable.calendar.walk("VEVENT")))
        elif quiet:
            log.info("calendar_loaded", calendar=self.state.shown, copy=str(self.copy))
        return True

    def _problem(self, error: str) -> None:
        if error != self.state.error:
            log.warning("calendar_unavailable", calendar=self.state.shown, error=error,
                        using="the last good copy" if self.timetable is not None else "nothing: lectures not judged")
        self.state.error = error


def load_local(expect: ExpectConfig, state_db: Path) -> tuple[Timetable | None, str | None]:
    """The timetable as the daemon last had it, without the network and without logging (for `status`,
    `explain`): the file, or a URL's last good copy. Returns (timetable or None, the problem or None)."""
    assert expect.calendar is not None
    where = cache_path(state_db, expect.calendar) if expect.is_url else Path(expect.calendar)
    try:
        data = read_calendar_file(where)
    except FileNotFoundError:
        return None, ("no copy of the calendar yet (the daemon fetches it)" if expect.is_url else f"no such file: {where}")
    except OSError as exc:
        return None, f"cannot read {where}: {exc.strerror}"
    try:
        return Timetable.parse(data, str(where)), None
    except TimetableError as exc:
        return None, str(exc)


def read_calendar_file(path: Path) -> bytes:
    """A calendar file's bytes, read only if it is a regular file (a FIFO put in its place would block the
    thread that judges every folder forever) of at most MAX_DOCUMENT_BYTES. Links are followed: a calendar
    file is named in the config, not found in a drop folder. OSError (with a strerror) otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > MAX_DOCUMENT_BYTES:
            raise OSError(errno.EFBIG, f"larger than {MAX_DOCUMENT_BYTES} bytes", str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            fd = -1  # the file object closes it
            return f.read(MAX_DOCUMENT_BYTES + 1)
    finally:
        if fd >= 0:
            os.close(fd)


def write_private(path: Path, data: bytes) -> None:
    """Replace `path` atomically with a 0600 file (the state database's folder belongs to the daemon)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
