"""The state database as a file: is it the one we opened, is it usable, may a new one be started here?

A lost database is dangerous: every file still in a `keep` folder looks new to an empty one and would be
uploaded again. So a database that is missing or empty where an earlier one left traces (its `-wal`, `-shm` or
lock file) is refused until the operator says so (`run --new-database`); a running daemon compares the path's
(st_dev, st_ino) with the file it opened and stops when they differ; and SQLite's error codes become one of
three errors a caller can act on: `StorageFull` (pause and retry), `DatabaseUnusable` (refuse with advice), or
the original exception (anything else, e.g. a busy database).
"""

from __future__ import annotations

import errno
import os
import sqlite3
import time
from pathlib import Path

from studio_watch.logs import get_logger
from studio_watch.private import private_dir
from studio_watch.errors import DatabaseReplaced, DatabaseUnusable, StorageFull, StudioWatchError

log = get_logger(__name__)

TRACE_SUFFIXES = ("-wal", "-shm", ".lock")
# SQLite primary result codes (sqlite3.h); Python 3.11+ exposes them as `sqlite_errorcode`.
SQLITE_PERM, SQLITE_READONLY, SQLITE_IOERR, SQLITE_CORRUPT, SQLITE_FULL, SQLITE_CANTOPEN, SQLITE_NOTADB = \
    3, 8, 10, 11, 13, 14, 26
_BY_MESSAGE = (("disk is full", SQLITE_FULL), ("disk i/o error", SQLITE_IOERR), ("malformed", SQLITE_CORRUPT),
               ("not a database", SQLITE_NOTADB), ("unable to open", SQLITE_CANTOPEN),
               ("readonly database", SQLITE_READONLY))
RESTORE = "restore it from a backup, or move it aside and start afresh with `studio-watch run --new-database`"


def traces(db: Path) -> list[Path]:
    """Files an earlier database at `db` leaves behind (its write-ahead log, shared memory, lock file)."""
    return [p for p in (Path(str(db) + suffix) for suffix in TRACE_SUFFIXES) if p.exists()]


def is_blank(db: Path) -> bool:
    """Missing or empty: SQLite would start a new database here."""
    try:
        return os.stat(db).st_size == 0
    except FileNotFoundError:
        return True


def prepare(db: Path, new_database: bool = False) -> None:
    """Make sure `db` may be opened: its folder exists (created 0700 when it does not) and, if it is blank, no
    earlier database left traces there, unless `new_database` (then the stale WAL and shm are moved aside, so
    SQLite never replays a dead database's log into the new one)."""
    try:
        private_dir(db.parent)
    except PermissionError:
        raise DatabaseUnusable(f"{db}: cannot create its folder {db.parent}: permission denied (create it, "
                               f"owned by the daemon's user, mode 0700)") from None
    except OSError as exc:
        raise DatabaseUnusable(f"{db}: cannot create its folder {db.parent}: {exc.strerror}") from None
    try:
        blank = is_blank(db)
    except PermissionError:
        raise _unreadable(db) from None
    left = traces(db) if blank else []
    if not left:
        return
    if not new_database:
        state = "is empty" if db.exists() else "is missing"
        raise DatabaseUnusable(
            f"{db} {state}, but an earlier database left {', '.join(p.name for p in left)}: it was deleted or "
            f"lost, and a new one would upload every kept file again; restore it, or run "
            f"`studio-watch run --new-database` to start a new one (files marked as uploaded are still skipped)")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for stale in left:
        if stale.suffix != ".lock":
            aside = stale.with_name(f"{stale.name}.orphaned-{stamp}")
            os.replace(stale, aside)
            log.warning("state_db_trace_moved_aside", path=str(stale), to=str(aside))
    log.warning("state_db_new", path=str(db), reason="--new-database")


def file_identity(db: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `db` now (None when there is none)."""
    try:
        st = os.stat(db)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def check_same(db: Path, opened: tuple[int, int] | None) -> None:
    """Raise DatabaseReplaced when the file at `db` is no longer the one opened (deleted, or another put there)."""
    try:
        now = file_identity(db)
    except OSError:
        return  # cannot tell (a transient error): the next look will
    if now is None:
        raise DatabaseReplaced(f"{db} was deleted while the daemon used it; stopping so that nothing more is "
                               "written to a file no one can read (systemd restarts the daemon, which then "
                               "refuses to start until the database is restored or --new-database is given)")
    if opened is not None and now != opened:
        raise DatabaseReplaced(f"{db} was replaced by another file while the daemon used it; stopping (a "
                               "restart opens the file now there)")


def error_code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of `exc` (by message on Pythons without `sqlite_errorcode`)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF
    text = str(exc).lower()
    return next((c for words, c in _BY_MESSAGE if words in text), None)


def translate(db: Path, exc: sqlite3.Error) -> Exception:
    """The error a caller can act on for a SQLite exception (the exception itself when it is none of them)."""
    code = error_code(exc)
    exc_text = " ".join(str(exc).split())  # quick_check reports one problem per line: one line for the user
    if code in (SQLITE_FULL, SQLITE_IOERR):
        return StorageFull(f"{db}: cannot write the state database: {exc} (free space on its disk; the queue "
                           "resumes by itself)")
    if code in (SQLITE_CORRUPT, SQLITE_NOTADB):
        return DatabaseUnusable(f"{db} is damaged ({exc_text[:300]}): {RESTORE}")
    if code in (SQLITE_PERM, SQLITE_CANTOPEN, SQLITE_READONLY):
        return _unreadable(db, str(exc))
    return exc


def _unreadable(db: Path, why: str = "permission denied") -> DatabaseUnusable:
    return DatabaseUnusable(f"{db}: cannot open the state database ({why}): run as the user that owns it "
                            f"(e.g. sudo -u studio-watch studio-watch ...) or fix its owner and mode (0600)")


def opening_error(db: Path, exc: OSError) -> StudioWatchError:
    """One line for an OSError while creating or opening the database file."""
    if isinstance(exc, PermissionError):
        return _unreadable(db)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EIO):
        return StorageFull(f"{db}: cannot create the state database: {exc.strerror} (free space on its disk)")
    return DatabaseUnusable(f"{db}: cannot open the state database: {exc.strerror or exc}")
