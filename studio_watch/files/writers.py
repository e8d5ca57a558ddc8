"""Open writers: is a file in a drop folder still being written, whoever writes it?

What Linux tells an unprivileged daemon that owns neither the recordings nor their folder:

- inotify (what we use): any process that can read the folder gets IN_MODIFY for every write and
  IN_CLOSE_WRITE when a descriptor opened for writing is closed (the kernel sends it when a writer dies, too).
  A file modified since its last close-write is still open for writing; a recorder pausing mid-lecture with
  the file open stays "being written" however long the pause, and the settle time only counts once it closed.
- A read lease (F_SETLEASE, `sources.open_for_writing`): refused while any writer holds the file, and sees
  writers that were already there when the daemon started; but only the file's owner or CAP_LEASE may take
  one. Kept as a second opinion where it works (a daemon running as the recorder's user, or as root).
- /proc/PID/fd: readable only for processes of the same user (ptrace access rules), so it sees no recorder
  running as another user: not used. fanotify needs CAP_SYS_ADMIN: not used.

Where events do not come from this kernel (polling: network filesystems, some container volumes), nothing
can be seen: the folder says so once in the log and in `check`/`status`, only the settle time speaks, and a
delete or cross-filesystem move waits for a longer quiet period (`after_upload_quiet`).

Residual cases, documented in the README: a writer that was already open and paused when the daemon started,
and stays paused longer than settle_seconds, is only seen by the lease; a writer that writes through mmap
alone makes no IN_MODIFY. A mark not written to for STALE_SECONDS (lost close events after an inotify overflow, a
truncate(2) by path, which makes no close) no longer holds a file back, and says so in the log.
"""

from __future__ import annotations

import threading
import time
from typing import Callable

from studio_watch.logs import get_logger

log = get_logger(__name__)

# No lecture pauses this long with the file open; a lost close event must not hold a file back forever.
STALE_SECONDS = 12 * 3600.0
QUIET_MIN_SECONDS = 300.0  # where writers cannot be seen: the least quiet time before a delete or cross-fs move
QUIET_SETTLE_FACTOR = 10  # ... or this many settle periods, whichever is longer


class OpenWriters:
    """Paths modified since their last close-write, as inotify reports them (thread-safe, in memory).

    Marks live only as long as the writing: a close, a delete or a new file at the path clears them, a
    rename carries them along. A daemon that starts knows of no writer until the next write."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def modified(self, path: str) -> None:
        with self._lock:  # the last write: only a silence of STALE_SECONDS means a close was lost
            self._since[path] = self._clock()

    def closed(self, path: str) -> None:
        with self._lock:
            self._since.pop(path, None)

    def moved(self, src: str, dest: str) -> None:
        with self._lock:
            since = self._since.pop(src, None)
            if since is None:
                self._since.pop(dest, None)
            else:
                self._since[dest] = since

    def writing(self, path: str) -> bool:
        """Modified since its last close-write (and written to within STALE_SECONDS)."""
        with self._lock:
            since = self._since.get(path)
            if since is None:
                return False
            if self._clock() - since < STALE_SECONDS:
                return True
            del self._since[path]
        log.warning("open_writer_assumed_gone", path=path, hours=round(STALE_SECONDS / 3600),
                    reason="modified but never closed for this long: a close event was lost")
        return False

    def __len__(self) -> int:
        return len(self._since)


def unseen_message(settle_seconds: float) -> str:
    """The one sentence for a folder whose writers cannot be seen (log, `check`, `status`)."""
    return f"open writers cannot be seen here: relying on settle_seconds={settle_seconds:g}"


def after_upload_quiet(settle_seconds: float) -> float:
    """How long a file of a folder whose writers cannot be seen must have been unchanged before it is deleted
    or moved across filesystems (the two actions that would destroy what a still-open writer adds)."""
    return max(QUIET_MIN_SECONDS, QUIET_SETTLE_FACTOR * settle_seconds)
