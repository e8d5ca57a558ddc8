"""The exception tree of studio-watch.

Every expected failure is one of these; anything else is a bug and may show a traceback.

    StudioWatchError
    ├── ConfigError            bad configuration or usage: exit code 2, message names file, key, problem
    ├── DatabaseLocked         another daemon holds the state database (names its pid): exit code 1
    ├── DatabaseTooNew         the state database was written by a newer studio-watch: exit code 1
    ├── DatabaseUnavailable    the state database cannot be reached (PostgreSQL down): work waits, exit code 1
    ├── LeaseLost              another node took this job over (its lease ran out): this worker lets go of it
    ├── NodeNameInUse          a live daemon of the cluster already runs under this node_name: exit code 1
    ├── DatabaseUnusable       the state database cannot be used as it is (corrupt, unreadable, lost): exit code 1
    │   └── DatabaseReplaced   the running daemon's database file was deleted or replaced under it
    ├── StorageFull            the disk under the state database is full or failing: the queue pauses, retries
    ├── StudioError            something the Studio API (or the network to it) did
    │   ├── TransientError     worth trying again later: 429, 5xx, resets, read timeouts
    │   │   └── Unreachable    the API host cannot be reached at all: pauses the whole queue
    │   ├── AuthError          401 that a refresh did not cure: pauses the whole queue
    │   ├── PermanentError     this job can never succeed as asked: 403/404/422/413 ...
    │   ├── UploadUrlExpired   the upload URL refused the PUT (403/404/410): ask for a new one
    │   ├── MediaNotFound      complete answered 404: start again at step 1
    │   └── CaptionsDisabled   501: auto-captioning is not enabled for the account
    ├── SourceError            something about the file on disk
    │   ├── SourceVanished     the file is gone: the job is skipped
    │   ├── SourceChanged      the file changed under us: back to settling
    │   └── SourceUnreadable   permissions and the like: the job fails, the daemon goes on
    └── Stopping               the daemon is stopping; the job stays resumable where it is
"""

from __future__ import annotations


class StudioWatchError(Exception):
    """Base of every expected studio-watch failure. Its text is always redacted (`logs.redact`): a message may
    quote what a server said, and servers echo request URIs (with the upload URL's signature) and headers."""

    def __str__(self) -> str:
        from studio_watch.logs import redact  # layer 0 beside this one; imported late to keep this module plain

        return redact(super().__str__())


class ConfigError(StudioWatchError):
    """The configuration (or a command-line argument) is wrong; the message says where and why."""


class DatabaseLocked(StudioWatchError):
    """Another `studio-watch run` holds the state database."""

    def __init__(self, db: str, pid: int | None, role: str = "daemon") -> None:
        who = f"pid {pid}" if pid else "another process"
        if role == "upload":
            super().__init__(f"a studio-watch upload ({who}) is working on {db}")
        else:
            super().__init__(f"another studio-watch daemon ({who}) holds {db}; only one daemon may run per database")
        self.pid, self.role = pid, role


class DatabaseTooNew(StudioWatchError):
    """The state database's schema is newer than this program understands."""


class DatabaseUnavailable(StudioWatchError):
    """The state database (a PostgreSQL server) cannot be reached right now; the message names it."""


class LeaseLost(StudioWatchError):
    """A guarded transition found the job no longer held by this claim: another node took it over after the
    lease ran out (a partition, a stall). The worker stops working on it and changes nothing more."""


class NodeNameInUse(StudioWatchError):
    """Another live daemon of the cluster holds this node_name (the message names its pid and host)."""
class DatabaseUnusable(StudioWatchError):
    """The state database cannot be opened or used as it is; the message names the file and what to do."""


class DatabaseReplaced(DatabaseUnusable):
    """The database file the daemon opened was deleted or replaced while it ran."""


class StorageFull(StudioWatchError):
    """A commit failed because the disk under the state database is full or failing (SQLITE_FULL, SQLITE_IOERR)."""


class StudioError(StudioWatchError):
    """The Studio API or the network to it failed; `status` is the HTTP status when there was one."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransientError(StudioError):
    """Worth trying again later; `retry_after` is the server's hint in seconds, if any."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status)
        self.retry_after = retry_after


class Unreachable(TransientError):
    """The API cannot be reached (connection refused, DNS, connect timeout)."""


class AuthError(StudioError):
    """The token was refused and refreshing did not help: a person must act."""


class PermanentError(StudioError):
    """This request can never succeed as asked."""


class UploadUrlExpired(StudioError):
    """The upload URL refused the PUT; a new URL from step 1 is needed."""


class MediaNotFound(StudioError):
    """complete answered 404: the pending media is gone; start again at step 1."""


class CaptionsDisabled(StudioError):
    """501: auto-captioning was asked for but is not enabled for the account."""


class SourceError(StudioWatchError):
    """Something about the source file on disk."""


class SourceVanished(SourceError):
    """The file no longer exists."""


class SourceChanged(SourceError):
    """The file changed (size, mtime or inode) since it was found stable."""


class SourceUnreadable(SourceError):
    """The file exists but cannot be read."""


class Stopping(StudioWatchError):
    """The daemon is stopping; the current step was abandoned and stays resumable."""
