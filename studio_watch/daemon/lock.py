"""One process works on a database's queue at a time: an exclusive flock beside the database."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from studio_watch.logs import get_logger
from studio_watch.errors import DatabaseLocked
from studio_watch.private import private_dir

log = get_logger(__name__)


class DaemonLock:
    """An exclusive flock on `<state_db>.lock` holding the holder's pid and role ("daemon", or "upload" for the
    `upload` command working alone): one process works on a database's queue at a time."""

    def __init__(self, db: Path, role: str = "daemon") -> None:
        self.path = Path(str(db) + ".lock")
        self.role = role
        self.fd: int | None = None

    def acquire(self) -> None:
        private_dir(self.path.parent)  # the state directory, made 0700 if it is ours to make
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, role = self.holder(fd)
            os.close(fd)
            raise DatabaseLocked(str(self.path)[:-5], pid, role) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {self.role}\n".encode())
        except OSError as exc:  # a full disk: the lock holds all the same, only `status` cannot name the pid
            log.warning("lock_file_not_written", path=str(self.path), error=exc.strerror)
        self.fd = fd

    @staticmethod
    def holder(fd: int) -> tuple[int | None, str]:
        """(pid, role) as the holder wrote them (a lock file from before roles holds only a daemon's pid)."""
        try:
            pid, _, role = os.pread(fd, 64, 0).decode().strip().partition(" ")
            return (int(pid) if pid else None), role or "daemon"
        except (OSError, ValueError):
            return None, "daemon"

    def held_by_other(self) -> int | None:
        """The pid of the process holding the lock right now (None when nobody does; -1 when unknown)."""
        held = self.holding()
        return None if held is None else held[0]

    def holding(self) -> tuple[int, str] | None:
        """(pid, role) of the process holding the lock right now (None when nobody does; pid -1 when unknown)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, role = self.holder(fd)
            return pid or -1, role
        finally:
            os.close(fd)
        return None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
