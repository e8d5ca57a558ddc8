"""What happens to a source file once Studio has its media: moved or deleted, and only if it is still the file
that was uploaded.

A check (stat, compare) followed by an action (unlink, rename) leaves a window in which a new recording can
arrive under the same name and be deleted or moved in the old one's place. So the file is first renamed aside,
to a hidden name beside it (atomic, and whatever was at the path is now there and nowhere else), then checked,
then acted on; a file that turns out not to be the uploaded one is put back where it was.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

Identity = tuple[int | None, int | None, int | None]  # (inode, size, mtime_ns)


class NotTheUploadedFile(Exception):
    """The file at the source path is not the one that was uploaded (it was put back untouched)."""


def aside_path(path: str, job_id: int) -> str:
    """Where job `job_id`'s file waits between being taken aside and being moved or deleted (hidden, so the
    watcher never takes it for a new recording; fixed, so a retry after a crash finds it)."""
    return os.path.join(os.path.dirname(path), f".studio-watch-{job_id}.taken")


def take_aside(path: str, job_id: int, identity: Identity) -> str | None:
    """Rename the file at `path` aside if it is the uploaded one; returns where it now is.

    None: nothing is at `path` (and nothing was taken aside before). Raises NotTheUploadedFile after putting a
    different file back, and OSError if the rename itself fails.
    """
    aside = aside_path(path, job_id)
    if not os.path.lexists(aside):  # else an earlier try took it aside and stopped before acting
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return None
    st = os.stat(aside)
    if (st.st_ino, st.st_size, st.st_mtime_ns) != identity:
        put_back(aside, path)
        raise NotTheUploadedFile(path)
    return aside


def put_back(aside: str, path: str) -> None:
    """Return a file taken aside to `path`, never replacing a file that has appeared there meanwhile (then it
    stays aside, and the OSError says so)."""
    try:
        os.link(aside, path)  # fails if `path` exists: no overwrite, whatever happens in between
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):  # a filesystem without hard links: rename, having looked first
            raise FileExistsError(errno.EEXIST, f"cannot put {aside!r} back: {path!r} exists") from None
        os.rename(aside, path)
        return
    os.unlink(aside)


def unique_destination(folder: Path, name: str) -> Path:
    """Reserve a new path in `folder` for `name`: name, name (1), name (2), ... created empty and exclusively,
    so two workers moving same-named files never pick the same one (the move then replaces the placeholder)."""
    stem, suffix = os.path.splitext(name)
    n = 0
    while True:
        candidate = folder / (name if n == 0 else f"{stem} ({n}){suffix}")
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            return candidate
        except FileExistsError:
            n += 1


def move(aside: str, folder: Path, name: str) -> Path:
    """Move a file taken aside into `folder` under `name` (or `name (1)`, ...); returns where it went."""
    target = unique_destination(folder, name)
    shutil.move(aside, target)
    return target
