"""After the upload: the source moved or deleted (after_upload: move | delete), only if still the uploaded file.

A check (stat, compare) followed by an action (unlink, rename) leaves a window in which a new recording can
arrive under the same name and be deleted or moved in the old one's place. So the file is first renamed aside,
to a hidden name beside it (atomic, and whatever was at the path is now there and nowhere else), then checked,
then acted on; a file that turns out not to be the uploaded one is put back where it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from studio_watch.errors import SourceChanged, SourceUnreadable, SourceVanished
from studio_watch.files.sources import Identity, identity_of, open_source


class NotTheUploadedFile(Exception):
    """The file at the source path is not the one that was uploaded (it was put back untouched)."""


def aside_path(path: str, job_id: int) -> str:
    """Where job `job_id`'s file waits between being taken aside and being moved or deleted (hidden, so the
    watcher never takes it for a new recording; fixed, so a retry after a crash finds it)."""
    return os.path.join(os.path.dirname(path), f".studio-watch-{job_id}.taken")


def take_aside(path: str, job_id: int, identity: Identity) -> str | None:
    """Rename the file at `path` aside if it is the uploaded one; returns where it now is.

    None: nothing is at `path` (and nothing was taken aside before). Raises NotTheUploadedFile when another
    file is there (left alone, or put back if it took the uploaded one's place in the instant between the
    look and the rename), and OSError if the rename itself fails.
    """
    aside = aside_path(path, job_id)
    if os.path.lexists(aside):
        if os.path.lexists(path) and _same_entry(aside, path):
            os.unlink(aside)  # a put-back that stopped between its link and its unlink: both names are one file
        else:
            return _checked(aside, path, identity)  # an earlier try took it aside and stopped before acting
    try:
        st = os.lstat(path)  # a symlink is never the uploaded file, whatever it points to
    except FileNotFoundError:
        return None
    # Looked at first: a new recording under the name never leaves its place.
    if not stat.S_ISREG(st.st_mode) or identity_of(st) != identity:
        raise NotTheUploadedFile(path)
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return None
    return _checked(aside, path, identity)


def _same_entry(a: str, b: str) -> bool:
    sa, sb = os.lstat(a), os.lstat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


def _checked(aside: str, path: str, identity: Identity) -> str:
    """The file taken aside, if it is the uploaded one; else it goes back (NotTheUploadedFile)."""
    st = os.lstat(aside)
    if not stat.S_ISREG(st.st_mode) or identity_of(st) != identity:
        put_back(aside, path)
        raise NotTheUploadedFile(path)
    return aside


def put_back(aside: str, path: str) -> Path:
    """Return a file taken aside to `path`, never replacing a file that has appeared there meanwhile: then it
    goes beside it as `name (1)` (never left hidden). Returns where it went."""
    try:
        os.link(aside, path, follow_symlinks=False)  # fails if `path` exists: no overwrite, whatever happens
    except FileExistsError:
        return _beside(aside, path)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
            raise
        if os.path.lexists(path):  # a filesystem without hard links: rename, having looked first
            return _beside(aside, path)
        os.rename(aside, path)
        return Path(path)
    os.unlink(aside)
    return Path(path)


def _beside(aside: str, path: str) -> Path:
    target = unique_destination(Path(path).parent, os.path.basename(path))
    os.replace(aside, target)  # onto the reserved placeholder, in the same folder
    return target


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


def delete(path: str, job_id: int, identity: Identity) -> bool:
    """Delete the uploaded file at `path`; False if it is gone already. NotTheUploadedFile: left alone."""
    aside = take_aside(path, job_id, identity)
    if aside is None:
        return False
    try:
        os.unlink(aside)
    except OSError:
        _restore(aside, path)
        raise
    return True


def move(path: str, job_id: int, identity: Identity, folder: Path) -> Path | None:
    """Move the uploaded file at `path` into `folder` as `name`, `name (1)`, ...; returns where it went (None if
    it is gone already). NotTheUploadedFile: left alone. On failure the file is back in view at `path`.

    Within one filesystem: taken aside, checked, renamed. Across filesystems the copy can take minutes, so the
    source stays in view while it is copied to a hidden name in `folder` and flushed to disk; only then is it
    taken aside and checked, the copy given its name, and the source removed.
    """
    name = os.path.basename(path)
    if os.stat(folder).st_dev == os.stat(os.path.dirname(path) or ".").st_dev:
        aside = take_aside(path, job_id, identity)
        if aside is None:
            return None
        target = unique_destination(folder, name)
        try:
            os.replace(aside, target)  # onto the reserved placeholder
        except OSError:
            _restore(aside, path)
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise
        return target
    _remove_partials(folder, job_id)  # left by a try that died half-way (a crash, a full disk)
    fd, partial = tempfile.mkstemp(prefix=f".studio-watch-{job_id}-", suffix=".partial", dir=folder)
    try:  # mkstemp: O_CREAT|O_EXCL|O_NOFOLLOW, mode 0600, a name nobody could plant a link at beforehand
        earlier = aside_path(path, job_id)  # taken aside by a try that stopped half-way
        _copy_durably(earlier if os.path.lexists(earlier) else path, identity, fd)
        aside = take_aside(path, job_id, identity)
        if aside is None:
            return None
        target = unique_destination(folder, name)
        if not _same_entry_fd(partial, fd):  # someone with write access to `folder` swapped our copy
            raise OSError(errno.EEXIST, f"the copy in {folder} was replaced while it was written", partial)
        os.replace(partial, target)
        _sync_folder(folder)  # the copy has its name on disk before the source goes
        os.unlink(aside)
        return target
    finally:
        with contextlib.suppress(OSError):
            if _same_entry_fd(partial, fd):  # ours and still there (every way out, a full disk included)
                os.unlink(partial)
        os.close(fd)


def _restore(aside: str, path: str) -> None:
    """Back in view after a failed delete or move (best effort: a retry finds it aside otherwise)."""
    with contextlib.suppress(OSError):
        put_back(aside, path)


def _copy_durably(source: str, identity: Identity, fd: int) -> None:
    """Copy the uploaded file (opened as every source is: no link, no FIFO, the identity that settled) into the
    open scratch file `fd`, give it the source's mode and times, and flush it to disk."""
    try:
        src = open_source(source, identity)
    except (SourceChanged, SourceUnreadable) as exc:
        st = os.lstat(source)
        if not stat.S_ISREG(st.st_mode) or identity_of(st) != identity:
            raise NotTheUploadedFile(source) from None
        raise OSError(errno.EACCES, str(exc), source) from None
    except SourceVanished:
        raise FileNotFoundError(errno.ENOENT, "file vanished before it was copied", source) from None
    with src:
        st = os.fstat(src.fileno())
        done = 0
        while done < st.st_size:
            try:
                n = os.copy_file_range(src.fileno(), fd, st.st_size - done)
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                with os.fdopen(os.dup(fd), "wb") as out:  # flushed when closed, before the fsync below
                    shutil.copyfileobj(src, out)
                break
            if n == 0:  # it shrank while being copied: not the uploaded file any more, left where it is
                raise NotTheUploadedFile(source)
            done += n
        os.fchmod(fd, stat.S_IMODE(st.st_mode))
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.fsync(fd)


def _same_entry_fd(path: str, fd: int) -> bool:
    """Is the directory entry `path` the file open as `fd`?"""
    st = os.lstat(path)
    own = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def _remove_partials(folder: Path, job_id: int) -> None:
    prefix = f".studio-watch-{job_id}-"
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(prefix) and entry.name.endswith(".partial"):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)  # a link planted there goes, never what it points to


def _sync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
