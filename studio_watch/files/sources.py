"""The source files as the trust boundary sees them: opened safely, told apart, and known by their identity.

A file of a drop folder is opened never through a link, never blocking, and only if it is a regular file, the
very one that settled (`open_source`); `not_a_plain_file` says why an entry is never uploaded (a link, a special
file, a folder leading out of the watched one, a planted hard link); `identity_of` is what every later check
compares. Reading one for the upload is files/reading.py's; moving or deleting it after is files/after_upload.py's.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from pathlib import Path
from typing import Any

from studio_watch.errors import SourceChanged, SourceUnreadable, SourceVanished

Identity = tuple[int | None, int | None, int | None]  # (inode, size, mtime_ns)

SOURCE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)


def open_source(path: str, identity: Identity | None = None, limit: int | None = None) -> Any:
    """Open a file of a drop folder for reading, unbuffered, as the trust boundary requires.

    Never through a symlink (O_NOFOLLOW: ELOOP), never blocking (O_NONBLOCK: a FIFO or device swapped in opens
    at once instead of waiting forever for a writer), and only a regular file (fstat, on the descriptor that is
    then read, so nothing can be swapped in between the check and the read). With `identity`, it must also be
    the very file that settled; with `limit`, at most that many bytes. Else a SourceError naming the file.
    """
    try:
        fd = os.open(path, SOURCE_FLAGS)
    except FileNotFoundError:
        raise SourceVanished(f"file vanished: {path!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise SourceUnreadable(f"not uploaded: {path!r} is a symbolic link (links are never followed)") from None
        raise SourceUnreadable(f"cannot read {path!r}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SourceUnreadable(f"not uploaded: {path!r} is {kind_of(st.st_mode)}, not a regular file")
        if identity is not None and identity_of(st) != identity:
            raise SourceChanged(f"file changed since it settled: {path!r}")
        if limit is not None and st.st_size > limit:
            raise SourceUnreadable(f"{path!r} is {st.st_size:,} bytes; at most {limit:,} are read from such a file")
        os.set_blocking(fd, True)  # a regular file: reads never block anyway; cleared so no reader ever sees EAGAIN
        return os.fdopen(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def identity_of(st: os.stat_result) -> tuple[int, int, int]:
    """What a file is, for every check that it is still the one seen: (inode, size, mtime_ns)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def kind_of(mode: int) -> str:
    """What a non-regular directory entry is, in words (for errors and `explain`)."""
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def not_a_plain_file(path: str, st: os.stat_result, folder: str | None) -> str | None:
    """Why the entry at `path` (lstat `st`) is never uploaded, or None: it is a regular file whose real folder
    lies inside the watched `folder` (a subfolder replaced by a link leading out of it is caught here)."""
    if not stat.S_ISREG(st.st_mode):
        return f"not uploaded: {kind_of(st.st_mode)}, not a regular file (links and special files are never followed)"
    if folder:
        real, root = os.path.realpath(os.path.dirname(path)), os.path.realpath(folder)
        if real != root and not real.startswith(root.rstrip("/") + "/"):
            return f"not uploaded: its folder leads out of {folder} through a symbolic link"
        if st.st_nlink > 1 and not st.st_mode & stat.S_IROTH:
            # O_NOFOLLOW cannot tell a hard link from the file: one planted here may be a file the daemon can
            # read and whoever planted it cannot (its config, a token). Linked files everyone may read are fine.
            return (f"not uploaded: a hard link ({st.st_nlink} names) to a file not everyone may read "
                    f"(mode {stat.S_IMODE(st.st_mode):04o}); copy it in, or make it world-readable")
    return None


def same_filesystem(path: str, folder: str | Path) -> bool:
    """Are `path`'s folder and `folder` on one filesystem (a move is then a rename)? False when unknown."""
    try:
        return os.stat(folder).st_dev == os.stat(os.path.dirname(path) or ".").st_dev
    except OSError:
        return False


def open_for_writing(path: str) -> bool | None:
    """Does some process hold the file open for writing? None where that cannot be told.

    Linux refuses a read lease on a file that is open for writing anywhere (EAGAIN). Taking a lease needs the
    file's owner or CAP_LEASE and a local filesystem; elsewhere the answer is None and only the settle time
    speaks. The lease is given back at once.
    """
    if not hasattr(fcntl, "F_SETLEASE"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as exc:
        return True if exc.errno == errno.EAGAIN else None
    else:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        return False
    finally:
        os.close(fd)

