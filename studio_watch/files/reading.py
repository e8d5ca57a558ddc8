"""Reading a source for the upload: one pass, hashed as it is read, a big file read ahead of the send.

One pass, into reused 1 MiB buffers, each hashed (XXH3-64) as it is read and handed on to be sent before its
buffer is read into again. A big file is read and hashed by a helper thread one chunk ahead of the send
(`read_ahead`): reading (a copy out of the page cache, or a wait on the disk) and sending (a copy into the
socket, or a wait on the network) then overlap instead of taking turns. Small files never start a thread. Every
read opens the file as files/sources.py says (no link, no FIFO, the file that settled).
"""

from __future__ import annotations

import itertools
import os
import queue
import threading
from typing import Any, Iterator

import xxhash

from studio_watch.errors import SourceChanged, SourceUnreadable, Stopping
from studio_watch.files.sources import Identity, identity_of, open_source

CHUNK = 1 << 20  # 1 MiB reads: large enough for wire speed, small enough to stay in cache between read, hash and send
READ_AHEAD_MIN = 16 << 20  # files at least this big are read by a helper thread one chunk ahead of the send
READ_AHEAD_BUFFERS = 3  # one being sent, one read and waiting, one being read


def content_hasher() -> Any:
    """The content identity hash: XXH3-64 (docs/decisions/content-hash.md)."""
    return xxhash.xxh3_64()


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

