"""The OAuth token store: the access/refresh pair on disk (`TokenStore`) or, in a cluster, in the shared queue
database (`SharedTokenStore`), read strictly and written durably, with the lock that serialises refreshes.

The file is JSON, mode 0600, replaced atomically: temp file, fsync, rename, fsync of the folder, so a crash at any
moment leaves either the old pair or the new one. `locked()` is an flock on `<token_store>.lock` between processes
(the daemon, `upload`, `auth login`); `signature()` tells a reader that another process replaced the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.errors import ConfigError
from studio_watch.logs import get_logger
from studio_watch.private import private_dir

log = get_logger(__name__)

PROACTIVE_SECONDS = 300.0  # refresh when less than this (or 10% of the lifetime, whichever is less) remains
PROACTIVE_FRACTION = 0.1
DEFAULT_EXPIRES_IN = 3600.0  # when the token endpoint does not say


@dataclass(frozen=True)
class StoredTokens:
    """The token store's content. The tokens never appear in a repr."""

    access_token: str = field(repr=False)
    refresh_token: str = field(repr=False)
    expires_at: float
    obtained_at: float
    refreshed_at: float | None
    client_id: str
    expires_in: float = DEFAULT_EXPIRES_IN

    def remaining(self, now: float | None = None) -> float:
        """Seconds until the access token expires (negative once it has)."""
        return self.expires_at - (time.time() if now is None else now)

    def due(self, now: float | None = None) -> bool:
        """Time to refresh early: less than 5 minutes, or 10% of the lifetime, whichever is less, remain."""
        return self.remaining(now) < min(PROACTIVE_SECONDS, PROACTIVE_FRACTION * self.expires_in)

    def register(self) -> None:
        """Keep both tokens out of every log line."""
        logs.register_secret(self.access_token)
        logs.register_secret(self.refresh_token)


class TokenStore:
    """The JSON token store: read strictly, written 0600 atomically and durably."""

    def __init__(self, path: Path, source: Path) -> None:
        self.path, self.source = path, source

    def error(self, problem: str) -> ConfigError:
        return ConfigError(f"{self.source}: studio.oauth.token_store: {problem}")

    def signature(self) -> tuple[int, int, int] | None:
        """(inode, mtime_ns, size): changes whenever the store is replaced."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns, st.st_size

    def load(self) -> StoredTokens:
        """The stored tokens; ConfigError (telling the user to run `auth login`) when missing or damaged."""
        try:
            problem = cfg.loose_permissions(self.path, self.path.stat())
            if problem:
                raise self.error(problem)
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise self.error(f"no token stored at {self.path}: run studio-watch auth login") from None
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise self.error(f"cannot read {self.path} ({exc}): run studio-watch auth login") from None
        try:
            refreshed = data.get("refreshed_at")
            tokens = StoredTokens(**{k: str(data[k]) for k in ("access_token", "refresh_token", "client_id")},
                                  expires_at=float(data["expires_at"]), obtained_at=float(data["obtained_at"]),
                                  refreshed_at=None if refreshed is None else float(refreshed),
                                  expires_in=float(data.get("expires_in") or DEFAULT_EXPIRES_IN))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise self.error(f"{self.path} is damaged (missing or bad {exc}): run studio-watch auth login") from None
        tokens.register()
        return tokens

    def save(self, tokens: StoredTokens) -> None:
        """Write a temp file (0600) in the same folder, fsync it, rename it over the store, fsync the folder."""
        folder = self.path.parent
        private_dir(folder)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=folder)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(asdict(tokens), f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """An exclusive flock on `<store>.lock`, so two processes never spend the same refresh token."""
        try:
            private_dir(self.path.parent)
            fd = os.open(str(self.path) + ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:  # a read-only folder: saving will fail and say so
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class SharedValues(Protocol):
    """What a cluster's queue offers to share tokens between nodes (the PostgreSQL queue provides it)."""

    where: str
    shared: bool  # False: a single machine's queue (its tokens stay in the token_store file)

    def meta(self, key: str) -> str | None: ...

    def set_meta(self, key: str, value: str | None) -> None: ...

    def shared_lock(self, name: str) -> contextlib.AbstractContextManager[None]: ...


SHARED_KEY = "oauth_tokens"


class SharedTokenStore(TokenStore):
    """The token pair of a cluster, kept in the shared queue database, so that every node uses the one live
    refresh token: Studio rotates it at each refresh, and a node refreshing with a stale copy would spend a dead
    token (invalid_grant) and stop the cluster. A refresh runs under a cluster-wide lock; the new pair is one
    committed row before anyone uses it. The node's own token_store file (written by `auth login`) seeds the
    database, and a newer login there replaces what the database holds; the file is kept up to date too, for
    `auth status` on that node. (The database then holds credentials: restrict who may read it.)"""

    SIGNATURE_CACHE = 1.0  # seconds a look at the shared row is reused outside a refresh (one query per request
    # would otherwise be added); under the lock it is always read afresh, so a rotated pair is never missed

    def __init__(self, path: Path, source: Path, shared: SharedValues) -> None:
        super().__init__(path, source)
        self.shared = shared
        self._seen: tuple[float, Any] | None = None
        self._locked = False

    def _shared(self) -> StoredTokens | None:
        text = self.shared.meta(SHARED_KEY)
        if not text:
            return None
        try:
            data = json.loads(text)
            tokens = StoredTokens(**data)
        except (TypeError, ValueError) as exc:
            log.warning("shared_tokens_damaged", error=type(exc).__name__)
            return None
        tokens.register()
        return tokens

    def signature(self) -> Any:
        now = time.monotonic()
        if not self._locked and self._seen is not None and now - self._seen[0] < self.SIGNATURE_CACHE:
            return self._seen[1]
        sig = (self.shared.meta(SHARED_KEY), super().signature())
        self._seen = (now, sig)
        return sig

    def load(self) -> StoredTokens:
        shared = self._shared()
        try:
            local: StoredTokens | None = super().load()
        except ConfigError:
            if shared is None:
                raise
            local = None
        if shared is None or (local is not None and _age_key(local) > _age_key(shared)):
            assert local is not None
            self.shared.set_meta(SHARED_KEY, json.dumps(asdict(local)))  # a fresh login on this node wins
            return local
        return shared

    def save(self, tokens: StoredTokens) -> None:
        self.shared.set_meta(SHARED_KEY, json.dumps(asdict(tokens)))  # the cluster's copy: what counts
        try:
            super().save(tokens)
        except OSError as exc:
            log.warning("token_store_write_failed", path=str(self.path), error=exc.strerror, kept="in the database")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        with self.shared.shared_lock("oauth-refresh"), super().locked():
            self._locked = True
            try:
                yield
            finally:
                self._locked = False
                self._seen = None


def _age_key(tokens: StoredTokens) -> float:
    return max(tokens.obtained_at, tokens.refreshed_at or 0.0)
