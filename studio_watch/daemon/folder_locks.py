"""One daemon per watched folder: an owner record in a lock file inside the folder (or beside the database).

Two daemons with different databases watching one folder would each upload every file. The record
(`.studio-watch-lock`, hidden and never a recording) names the owner (pid, host, database) and a beat counter
the owner raises every BEAT_SECONDS. The file is only flock()ed for the moment of a read-and-write, never held
open: an open file would keep a network share from being unmounted. Another daemon takes the folder over when
the record is released (a clean stop), when its owner's pid is gone (same host), or when the counter has not
moved for STALE_SECONDS by its own monotonic clock (a dead owner on another host; no wall clocks compared).

Where the daemon may not write in the folder (after_upload: keep on a read-only share) the record lives beside
the database instead, `<state_db>.folders/<hash of the real path>`: that only keeps out daemons sharing the
database's folder (documented). Daemons sharing one queue (a postgresql:// state_db) take no folder lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from studio_watch.logs import get_logger
from studio_watch.config import FolderRule

log = get_logger(__name__)

LOCK_NAME = ".studio-watch-lock"
BEAT_SECONDS = 10.0
STALE_SECONDS = 35.0
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass
class _Owner:
    pid: int
    host: str
    db: str
    beat: int

    def line(self) -> bytes:
        return f"{self.pid} {self.beat} {self.host} {self.db}\n".encode()

    @staticmethod
    def parse(data: bytes) -> _Owner | None:
        parts = data.decode("utf-8", "replace").strip().split(" ", 3)
        if len(parts) < 4 or not parts[0].isdigit() or not parts[1].isdigit():
            return None
        return _Owner(int(parts[0]), parts[2], parts[3], int(parts[1]))


class FolderLocks:
    """The folders this daemon owns, and the owners it saw of the ones it does not."""

    def __init__(self, state_db: Path) -> None:
        self.state_db = Path(state_db)
        self.me = _Owner(os.getpid(), socket.gethostname(), str(self.state_db), 0)
        self.owned: dict[Path, Path] = {}  # folder → its lock file
        self._seen: dict[Path, tuple[bytes, float]] = {}  # folder → (another owner's record, when it last moved)

    def lock_path(self, folder: Path) -> Path:
        return folder / LOCK_NAME

    def fallback_path(self, folder: Path) -> Path:
        digest = hashlib.sha256(os.fsencode(os.path.realpath(folder))).hexdigest()[:20]
        return Path(str(self.state_db) + ".folders") / f"{digest}.lock"

    def claim(self, rule: FolderRule) -> str | None:
        """Take the folder (None), or say who holds it."""
        folder = rule.path
        for path in (self.lock_path(folder), self.fallback_path(folder)):
            try:
                with _locked(path) as fd:
                    return self._claim_in(folder, path, fd)
            except _Unwritable as exc:
                log.info("folder_lock_elsewhere", folder=str(folder), lock=str(path), reason=str(exc))
                continue
            except OSError as exc:  # the folder went away meanwhile, an I/O error: not watched for now
                return f"cannot take its lock {path}: {exc.strerror or exc}"
        return "cannot write a lock file in the folder or beside the database"

    def _claim_in(self, folder: Path, path: Path, fd: int) -> str | None:
        record = os.pread(fd, 4096, 0)
        other = _Owner.parse(record)
        now = time.monotonic()
        if other is not None and not self._is_me(other) and not self._gone(folder, other, record, now):
            return (f"watched by another studio-watch daemon (pid {other.pid} on {other.host}, state_db {other.db}); "
                    "not watched here until it stops")
        if other is not None and not self._is_me(other):
            log.warning("folder_taken_over", folder=str(folder), previous_pid=other.pid, previous_host=other.host)
        self._write(fd, self.me)
        self.owned[folder] = path
        self._seen.pop(folder, None)
        return None

    def _is_me(self, other: _Owner) -> bool:
        return (other.pid, other.host, other.db) == (self.me.pid, self.me.host, self.me.db)

    def _gone(self, folder: Path, other: _Owner, record: bytes, now: float) -> bool:
        if other.host == self.me.host and not _alive(other.pid):
            return True
        seen = self._seen.get(folder)
        if seen is None or seen[0] != record:
            self._seen[folder] = (record, now)
            return False
        return now - seen[1] >= STALE_SECONDS

    def beat(self) -> list[Path]:
        """Raise the counter of every owned folder; returns folders another daemon took meanwhile (now lost)."""
        lost = []
        self.me.beat += 1
        for folder, path in list(self.owned.items()):
            try:
                with _locked(path, create=False) as fd:
                    other = _Owner.parse(os.pread(fd, 4096, 0))
                    if other is not None and not self._is_me(other):
                        lost.append(folder)
                        del self.owned[folder]
                        continue
                    self._write(fd, self.me)
            except (OSError, _Unwritable):
                continue  # the folder is gone or unreadable: the watcher reports that
        return lost

    def release(self, folder: Path) -> None:
        path = self.owned.pop(folder, None)
        if path is None:
            return
        with contextlib.suppress(OSError, _Unwritable), _locked(path, create=False) as fd:
            other = _Owner.parse(os.pread(fd, 4096, 0))
            if other is None or self._is_me(other):
                os.ftruncate(fd, 0)

    def release_all(self) -> None:
        for folder in list(self.owned):
            self.release(folder)

    @staticmethod
    def _write(fd: int, owner: _Owner) -> None:
        line = owner.line()
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))


class _Unwritable(Exception):
    """No lock file can be kept at this path (read-only folder, a planted file)."""


@contextlib.contextmanager
def _locked(path: Path, create: bool = True) -> Iterator[int]:
    """The lock file open and flock()ed for one read-and-write. Never through a name someone could have planted:
    no symlink is followed, no FIFO opened blocking, no file with other names (hard links) written."""
    try:
        if path.name != LOCK_NAME:
            path.parent.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(path, _OPEN_FLAGS if create else _OPEN_FLAGS & ~os.O_CREAT, 0o644)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise _Unwritable(exc.strerror) from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise _Unwritable(f"{path} is not a plain file of its own")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
