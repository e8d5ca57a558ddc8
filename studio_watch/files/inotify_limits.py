"""What inotify can still watch: the kernel's limits and the watches this process really holds.

Past `fs.inotify.max_user_watches` the kernel refuses new watches with ENOSPC; watchdog then leaves the
subfolders it could not watch silently unwatched (only the root's failure reaches the caller). So the watcher
counts what a folder needs before it chooses inotify, and afterwards checks, from /proc/self/fdinfo, that every
subfolder of a recursive inotify folder really is watched; where not, the folder is polled instead.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

LIMIT_FILES = ("/proc/sys/fs/inotify/max_user_watches",  # the host's
               "/proc/sys/user/max_inotify_watches")  # this user namespace's (a container's), if lower
INSTANCE_FILES = ("/proc/sys/fs/inotify/max_user_instances", "/proc/sys/user/max_inotify_instances")
SETTLE_SECONDS = 2.0  # a directory younger than this may not be watched yet: watchdog adds its watch on the event


def _lowest(files: tuple[str, ...]) -> int | None:
    values = []
    for name in files:
        try:
            values.append(int(Path(name).read_text().strip()))
        except (OSError, ValueError):
            continue
    return min(values) if values else None


def watch_limit() -> int | None:
    """The number of inotify watches this user may hold (None when unknown: not Linux)."""
    return _lowest(LIMIT_FILES)


def instance_limit() -> int | None:
    return _lowest(INSTANCE_FILES)


def held_watches(fdinfo: str = "/proc/self/fdinfo", fds: str = "/proc/self/fd") -> set[tuple[int, int]] | None:
    """(st_dev, st_ino) of every directory this process's inotify instances watch (None when unknown)."""
    watched: set[tuple[int, int]] = set()
    try:
        names = os.listdir(fds)
    except OSError:
        return None
    found = False
    for name in names:
        try:
            if os.readlink(os.path.join(fds, name)) != "anon_inode:inotify":
                continue
            text = Path(fdinfo, name).read_text()
        except OSError:
            continue
        found = True
        for line in text.splitlines():
            if not line.startswith("inotify wd:"):
                continue
            fields = dict(f.split(":", 1) for f in line.split()[1:] if ":" in f)
            try:
                sdev = int(fields["sdev"], 16)  # the kernel's dev_t: major << 20 | minor
                watched.add((os.makedev(sdev >> 20, sdev & 0xFFFFF), int(fields["ino"], 16)))
            except (KeyError, ValueError):
                continue
    return watched if found else set()


def unwatched_dirs(root: Path, watched: set[tuple[int, int]], now: float | None = None,
                   limit: int = 100) -> tuple[list[str], int]:
    """Directories under `root` (itself included) that no inotify watch covers, up to `limit` of them, and how
    many unwatched ones were too young to tell (changed in the last SETTLE_SECONDS: their watch may be on its
    way; look again later)."""
    now = time.time() if now is None else now
    missing: list[str] = []
    young = 0
    for folder, dirs, _ in os.walk(root):
        try:
            st = os.stat(folder)
        except OSError:
            continue
        if (st.st_dev, st.st_ino) in watched or not os.access(folder, os.R_OK):  # unreadable: unwatchable
            continue
        if abs(now - st.st_ctime) < SETTLE_SECONDS:
            young += 1
            continue
        missing.append(folder)
        if len(missing) >= limit:
            break
    return missing, young
