"""The source files: read for the upload (hashed in the same pass, a big one read ahead of the send), and once
Studio has the media, moved or deleted, only if still the file that was uploaded.

Reading: one pass, into reused 1 MiB buffers, each hashed (XXH3-64) as it is read and handed on to be sent
before its buffer is read into again. A big file is read and hashed by a helper thread one chunk ahead of the
send (`read_ahead`): reading (a copy out of the page cache, or a wait on the disk) and sending (a copy into the
socket, or a wait on the network) then overlap instead of taking turns. Small files never start a thread.

After the upload: a check (stat, compare) followed by an action (unlink, rename) leaves a window in which a new
recording can arrive under the same name and be deleted or moved in the old one's place. So the file is first
renamed aside, to a hidden name beside it (atomic, and whatever was at the path is now there and nowhere else),
then checked, then acted on; a file that turns out not to be the uploaded one is put back where it was.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import queue
import shutil
import stat
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import xxhash

from studio_watch.errors import SourceChanged, SourceUnreadable, SourceVanished, Stopping

CHUNK = 1 << 20  # 1 MiB reads: large enough for wire speed, small enough to stay in cache between read, hash and send
READ_AHEAD_MIN = 16 << 20  # files at least this big are read by a helper thread one chunk ahead of the send
READ_AHEAD_BUFFERS = 3  # one being sent, one read and waiting, one being read

Identity = tuple[int | None, int | None, int | None]  # (inode, size, mtime_ns)


# -- reading --------------------------------------------------------------------------------------------------


def content_hasher() -> Any:
    """The content identity hash: XXH3-64 (docs/decisions/content-hash.md)."""
    return xxhash.xxh3_64()


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


def hash_file(path: str, stop: threading.Event | None = None, identity: Identity | None = None) -> str:
    """Hash a whole file (only used when a duplicate is likely and must be known before uploading)."""
    hasher = content_hasher()
    with open_source(path, identity) as f:
        size = os.fstat(f.fileno()).st_size
        for _ in read_chunks(f, size, hasher, exact=False):
            if stop is not None and stop.is_set():
                raise Stopping("stopping")
    return hasher.hexdigest()


class UploadFile:
    """The file a PUT sends, as it settled (`identity`): each try opens it afresh (`open`)."""

    def __init__(self, path: str, identity: Identity) -> None:
        self.path, self.identity = path, identity
        self.size = int(identity[1] or 0)

    def open(self) -> OpenUpload:
        return OpenUpload(self.path, self.identity, self.size)


class OpenUpload:
    """One read of an upload's file: checked to be the very file that settled, hashed as it is read."""

    def __init__(self, path: str, identity: Identity, size: int) -> None:
        self.path, self.identity, self.size = path, identity, size
        self.file = open_source(path, identity)  # never a link or a FIFO; the file that settled
        self.hasher = content_hasher()

    def check(self) -> None:
        """Before and after the read: a file that differs from the one that settled raises SourceChanged."""
        if identity_of(os.fstat(self.file.fileno())) != self.identity:
            raise SourceChanged(f"file changed since it settled: {self.path!r}")

    def whole(self) -> bytes:
        return read_whole(self.file, self.size, self.hasher)

    def chunks(self) -> Iterator[memoryview]:
        """The file in hashed chunks of reused buffers; a big one read by a helper thread one chunk ahead."""
        read = read_ahead if self.size >= READ_AHEAD_MIN else read_chunks
        return read(self.file, self.size, self.hasher)

    def hexdigest(self) -> str:
        return str(self.hasher.hexdigest())

    def __enter__(self) -> OpenUpload:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()


def read_into(f: Any, view: memoryview) -> int:
    """One read of the source; a read error is the file's problem (SourceUnreadable), not the network's."""
    try:
        return int(f.readinto(view))
    except OSError as exc:
        raise SourceUnreadable(f"cannot read {f.name!r}: {exc.strerror or exc}") from None


def read_whole(f: Any, size: int, hasher: Any) -> bytes:
    """All `size` bytes of a small file, hashed; a file that ends early changed (SourceChanged)."""
    data = bytearray(size)
    view, got = memoryview(data), 0
    while got < size:  # one read nearly always; some filesystems (FUSE) return less
        n = read_into(f, view[got:])
        if not n:
            raise SourceChanged(f"file shrank before sending ({got} of {size} bytes)")
        got += n
    hasher.update(data)
    return bytes(data)


def read_chunks(f: Any, size: int, hasher: Any, exact: bool = True) -> Iterator[memoryview]:
    """The file's next `size` bytes in hashed chunks of one reused buffer: each is only valid until the next is
    asked for. `exact`: a file that ends early changed (SourceChanged); else the chunks stop at its end."""
    return _hashed_chunks(f, size, hasher, itertools.repeat(bytearray(min(CHUNK, max(size, 1)))), exact)


def _hashed_chunks(f: Any, size: int, hasher: Any, buffers: Iterator[bytearray],
                   exact: bool = True) -> Iterator[memoryview]:
    """Read the next `size` bytes into the buffers `buffers` hands out, hashing each chunk; stops early when
    it hands out no more."""
    done = 0
    while done < size:
        buffer = next(buffers, None)
        if buffer is None:
            return
        n = read_into(f, memoryview(buffer)[:min(len(buffer), size - done)])
        if not n:
            if not exact:
                return
            raise SourceChanged(f"file shrank while sending ({done} of {size} bytes)")
        chunk = memoryview(buffer)[:n]
        hasher.update(chunk)  # xxhash lets go of the GIL: in read_ahead, the sender runs meanwhile
        done += n
        yield chunk


def read_ahead(f: Any, size: int, hasher: Any) -> Iterator[memoryview]:
    """As read_chunks, but a helper thread reads and hashes the next chunk while this one is being sent
    (docs/decisions/read-ahead.md). The thread ends when the chunks do, or when the consumer closes this
    generator early (a failed send, a stop); what it raises (SourceChanged, SourceUnreadable) is raised here.
    """
    free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
    full: queue.SimpleQueue[memoryview | BaseException | None] = queue.SimpleQueue()
    for _ in range(READ_AHEAD_BUFFERS):
        free.put(bytearray(CHUNK))

    def reader() -> None:
        try:
            for chunk in _hashed_chunks(f, size, hasher, iter(free.get, None)):  # None: the consumer has gone
                full.put(chunk)
            full.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            full.put(exc)

    thread = threading.Thread(target=reader, name="read-ahead", daemon=True)
    thread.start()
    try:
        while (item := full.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
            free.put(item.obj)  # sent: its buffer may be read into again
    finally:
        free.put(None)
        thread.join()


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


# -- after the upload ---------------------------------------------------------------------------------------------


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


def identity_of(st: os.stat_result) -> tuple[int, int, int]:
    """What a file is, for every check that it is still the one seen: (inode, size, mtime_ns)."""
    return (st.st_ino, st.st_size, st.st_mtime_ns)


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
