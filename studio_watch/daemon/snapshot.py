"""What the queue's meta table holds for other processes, as typed records: the pause (`PauseRecord`) and a
running daemon's snapshot for `status` (`DaemonSnapshot`). Each is one JSON value under one key; in a cluster
every node publishes its snapshot under a key of its own (`node`), while the pause is the cluster's."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Protocol

STATUS_KEY = "daemon"
PAUSE_KEY = "paused"
RELOAD_KEY = "reload"  # the last reload's outcome: `studio-watch reload` waits for one that started after it asked


class Meta(Protocol):
    """The queue's key/value table (JobQueue.meta / set_meta)."""

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str | None, durable: bool = True) -> None: ...


def _load(store: Meta, key: str) -> dict[str, Any] | None:
    text = store.meta(key)
    try:
        data = json.loads(text) if text else None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


class _Record:
    """A dataclass kept as one JSON object under the meta key KEY."""

    KEY = ""
    DURABLE = True  # False: rewritten every few seconds, so its commit need not wait for the disk

    @classmethod
    def key(cls, node: str | None = None) -> str:
        """The meta key: KEY, or one per cluster node."""
        return f"{cls.KEY}:{node}" if node else cls.KEY

    def save(self, store: Meta, node: str | None = None) -> None:
        store.set_meta(self.key(node), json.dumps(asdict(self)), durable=self.DURABLE)  # type: ignore[call-overload]

    @classmethod
    def clear(cls, store: Meta, node: str | None = None) -> None:
        store.set_meta(cls.key(node), None)


@dataclass(frozen=True)
class PauseRecord(_Record):
    """The queue is paused since `since` (epoch seconds), because `reason`."""

    KEY = PAUSE_KEY
    reason: str
    since: float

    @classmethod
    def load(cls, store: Meta) -> PauseRecord | None:
        data = _load(store, PAUSE_KEY)
        return cls(str(data["reason"]), float(data["since"])) if data else None


@dataclass(frozen=True)
class FolderStatus:
    """One watched folder as the daemon sees it."""

    path: str
    observer: str | None
    alive: bool
    last_scan: float | None
    open_writers_seen: bool | None = None  # False: polled, a writer holding a file open cannot be seen
    available: bool = True  # False: missing, not a directory, or owned by another daemon (not watched now)
    unavailable_reason: str | None = None
    unavailable_since: float | None = None
    polling_reason: str | None = None  # why a folder that wanted inotify is polled (watch limits, ...)
    polled_mounts: tuple[str, ...] = ()  # network mounts inside a recursive inotify folder, polled besides
    warning: str | None = None


@dataclass(frozen=True)
class TransferStatus:
    """One PUT under way."""

    id: int
    bytes_sent: int
    size: int
    seconds: float


@dataclass(frozen=True)
class DaemonSnapshot(_Record):
    """What a running daemon publishes every few seconds for `status`."""

    KEY = STATUS_KEY
    DURABLE = False  # a snapshot every 5 s: no fsync for it (a power cut loses only the last one)
    pid: int
    at: float
    healthy: bool
    upload_window_open: bool
    uploaded_bytes: int
    folders: tuple[FolderStatus, ...] = ()
    transfers: tuple[TransferStatus, ...] = ()
    timetables: Any = None  # daemon.expectations.Expectations.snapshot(), when a folder has a timetable
    node: str | None = None  # the daemon's node_name
    storage_paused: str | None = None  # why the queue is paused for want of space, while it is

    @classmethod
    def load(cls, store: Meta, node: str | None = None) -> DaemonSnapshot | None:
        """The snapshot under `node`'s key (a cluster) or the single machine's (None)."""
        data = _load(store, cls.key(node))
        if data is None:
            return None
        return cls(pid=int(data["pid"]), at=float(data["at"]), healthy=bool(data["healthy"]),
                   upload_window_open=bool(data["upload_window_open"]), uploaded_bytes=int(data["uploaded_bytes"]),
                   folders=tuple(FolderStatus(**{**f, "polled_mounts": tuple(f.get("polled_mounts", ()))})
                                 for f in data.get("folders", ())),
                   transfers=tuple(TransferStatus(**t) for t in data.get("transfers", ())),
                   timetables=data.get("timetables"), node=data.get("node"),
                   storage_paused=data.get("storage_paused"))
