"""Where the access token comes from: a fixed one (`make_tokens`), or OAuth tokens that refresh themselves.

`OAuthTokens` is the `TokenSource` for a config with `studio.oauth`. It keeps the access/refresh pair in a JSON
token store (mode 0600, replaced atomically) and refreshes the access token shortly before it expires, or once
when the API answers 401. Studio rotates the refresh token on every refresh, so the new pair is written to disk
(temp file, fsync, rename, fsync of the folder) *before* the new access token is used: a crash at any moment
leaves a store whose refresh token is the live one. Refreshes are serialised by a thread lock inside a process
and by an flock on `<token_store>.lock` between processes (the daemon, `upload`, `auth login`), and the store is
re-read before every refresh, so a pair rotated by another process is adopted instead of being spent twice.

Residual risk: if the token endpoint rotates the pair but its answer is lost (a reset after the server
committed), the old refresh token is dead and the new one was never received; the next refresh gets
`invalid_grant` and a person must run `studio-watch auth login` again. No client can avoid that.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol
from urllib.parse import parse_qs, urlencode, urlsplit

from studio_watch.logs import get_logger
from studio_watch import __version__

from studio_watch import logs
from studio_watch import config as cfg
from studio_watch.errors import AuthError, ConfigError, StudioError, TransientError, Unreachable
from studio_watch.private import private_dir
from studio_watch.studio.client import StaticToken, TokenSource, http_pool

if TYPE_CHECKING:
    from studio_watch.studio.transport import Pool

log = get_logger(__name__)

TOKEN_PATH = "/api/public/oauth/token"
AUTHORIZE_PATH = "/api/public/oauth/authorize"
AUTH_NEEDED = "authorization needed: run studio-watch auth login"
PROACTIVE_SECONDS = 300.0  # refresh when less than this (or 10% of the lifetime, whichever is less) remains
PROACTIVE_FRACTION = 0.1
PROACTIVE_PAUSE = 30.0  # after a failed early refresh, use the still-valid token this long before trying again
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


def tokens_from_response(data: dict[str, Any], client_id: str, previous: StoredTokens | None,
                         now: float) -> StoredTokens:
    """A token endpoint answer as a store entry (a refresh keeps the old refresh token if none came back)."""
    refresh = data.get("refresh_token") or (previous.refresh_token if previous else None)
    if not isinstance(data.get("access_token"), str) or not refresh:
        raise StudioError("token endpoint: the answer has no access_token or refresh_token")
    try:
        expires_in = float(data.get("expires_in") or DEFAULT_EXPIRES_IN)
    except (TypeError, ValueError):
        expires_in = DEFAULT_EXPIRES_IN
    return StoredTokens(access_token=data["access_token"], refresh_token=str(refresh), expires_at=now + expires_in,
                        obtained_at=previous.obtained_at if previous else now,
                        refreshed_at=now if previous else None, client_id=client_id, expires_in=expires_in)


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


def post_token(http: Pool, url: str, form: dict[str, str], invalid_grant: str) -> dict[str, Any]:
    """POST the token endpoint; map its answers onto errors. The body is never logged or put in a message.
    Sent on the program's raw HTTP pool: no httpx (~40 ms of every command's start) for a form and a JSON answer."""
    headers = [("Accept", "application/json"), ("Content-Type", "application/x-www-form-urlencoded"),
               ("User-Agent", f"studio-watch/{__version__}")]
    try:
        response = http.request("POST", url, headers, urlencode(form).encode())
    except Unreachable as exc:
        raise Unreachable(f"token endpoint: {exc}") from None
    except TransientError as exc:
        raise TransientError(f"token endpoint: {exc}") from None
    status = response.status_code
    if status == 429 or status >= 500:
        raise TransientError(f"token endpoint: HTTP {status}", status)
    try:
        data = response.json()
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise StudioError(f"token endpoint: HTTP {status} without a JSON object", status)
    if status == 200:
        return data
    error = str(data.get("error") or f"HTTP {status}")
    if error == "invalid_grant":
        raise AuthError(invalid_grant, status)
    if error == "invalid_client":
        raise AuthError("the token endpoint refused the client (invalid_client): check studio.oauth.client_id "
                        "and the client secret", status)
    raise AuthError(f"the token endpoint refused the request ({error[:80]})", status)


def token_http(studio: cfg.StudioConfig) -> Pool:
    """The token endpoint's connections: the program's one HTTP stack (same TLS checks and proxies)."""
    return http_pool(studio)


class OAuthTokens:
    """A TokenSource over the token store: refreshes early, refreshes once on 401, persists before use."""

    def __init__(self, store: TokenStore, token_url: str, client_id: str, client_secret: str,
                 http: Pool) -> None:
        self.store, self.token_url, self.client_id = store, token_url, client_id
        self._secret, self.http = client_secret, http
        self._lock = threading.RLock()
        self._tokens = store.load()
        self._sig = store.signature()
        self._unsaved: StoredTokens | None = None
        self._early_after = 0.0
        if self._tokens.client_id != client_id:
            raise store.error(f"{store.path} was authorized for client {self._tokens.client_id!r}, but "
                              f"studio.oauth.client_id is {client_id!r}: run studio-watch auth login")

    @classmethod
    def from_config(cls, config: cfg.Config, shared: SharedValues | None = None) -> OAuthTokens:
        """Build from `studio.oauth` (ConfigError without a token store or with a loose secret file). `shared`:
        a cluster's queue, where the nodes keep their one token pair."""
        oauth = config.studio.oauth
        if oauth is None:
            raise ConfigError(f"{config.source}: studio.oauth: not configured")
        secret = cfg.client_secret(config)
        logs.register_secret(secret)
        store = TokenStore(oauth.token_store, config.source) if shared is None else \
            SharedTokenStore(oauth.token_store, config.source, shared)
        return cls(store, config.studio.url + TOKEN_PATH, oauth.client_id, secret, token_http(config.studio))

    def close(self) -> None:
        self.http.close()

    def token(self) -> str:
        """The access token; refreshed first when it is about to expire."""
        with self._lock:
            self._save_unsaved()
            self._sync()
            current = self._tokens
            if current.due() and time.monotonic() >= self._early_after:
                try:
                    self._refresh(current.access_token)
                except (TransientError, AuthError) as exc:
                    if current.remaining() <= 0:
                        raise
                    self._early_after = time.monotonic() + PROACTIVE_PAUSE
                    log.warning("token_refresh_deferred", error=str(exc), expires_in=round(current.remaining()))
            return self._tokens.access_token

    def refresh(self, rejected: str) -> str:
        """Refresh once: concurrent callers holding the same rejected token cause one refresh between them."""
        with self._lock:
            self._save_unsaved()
            self._sync()
            if self._tokens.access_token == rejected:
                self._refresh(rejected)
            return self._tokens.access_token

    def _sync(self) -> None:
        """Adopt the store when another process (auth login, a second command) replaced it."""
        sig = self.store.signature()
        if sig is None or sig == self._sig:
            return
        try:
            tokens = self.store.load()
        except ConfigError as exc:
            log.warning("token_store_unreadable", error=str(exc))
            return
        self._tokens, self._sig = tokens, sig
        log.info("token_store_reloaded", expires_in=round(tokens.remaining()))

    def _refresh(self, rejected: str) -> None:
        """Under the file lock: re-read the store, and refresh only if nobody did in the meantime."""
        with self.store.locked():
            self._sync()
            if self._tokens.access_token != rejected:
                return
            form = {"grant_type": "refresh_token", "refresh_token": self._tokens.refresh_token,
                    "client_id": self.client_id, "client_secret": self._secret}
            data = post_token(self.http, self.token_url, form, AUTH_NEEDED)
            fresh = tokens_from_response(data, self.client_id, self._tokens, time.time())
            fresh.register()
            self._persist(fresh)
        log.info("token_refreshed", expires_in=round(fresh.expires_in))

    def _persist(self, fresh: StoredTokens) -> None:
        """Make the rotated pair durable, then (and only then) use it."""
        try:
            self.store.save(fresh)
        except OSError as exc:
            self._unsaved = fresh
            log.error("token_store_write_failed", path=str(self.store.path), error=exc.strerror)
            raise AuthError(f"cannot save the refreshed tokens to {self.store.path}: {exc.strerror}; make its "
                            "folder writable (the new pair is kept in memory until it is saved)") from None
        self._tokens, self._sig, self._unsaved = fresh, self.store.signature(), None

    def _save_unsaved(self) -> None:
        if self._unsaved is not None:
            with self.store.locked():
                self._persist(self._unsaved)


def make_tokens(config: cfg.Config, queue: SharedValues | None = None) -> TokenSource:
    """The token source the config asks for (raises ConfigError for a missing or loose secret). With a cluster's
    queue, OAuth tokens are shared through it (one refresh at a time across nodes)."""
    if config.studio.oauth is not None:
        tokens: TokenSource = OAuthTokens.from_config(config, queue if queue is not None and queue.shared else None)
    else:
        def read() -> str:
            token = cfg.static_token(config)
            assert token is not None
            logs.register_secret(token)
            return token

        tokens = StaticToken(read)
    logs.register_secret(tokens.token())
    return tokens


# -- authorizing (the `auth login` command in cli/auth.py) ---------------------------------------------------------------------------------------

def authorize_url(studio_url: str, client_id: str, redirect_uri: str) -> str:
    """The address the user opens to allow access."""
    query = urlencode({"client_id": client_id, "response_type": "code", "redirect_uri": redirect_uri})
    return f"{studio_url.rstrip('/')}{AUTHORIZE_PATH}?{query}"


def extract_code(text: str) -> str:
    """The authorization code from a pasted code or a whole redirect URL (`...?code=...`)."""
    text = text.strip()
    if "code=" in text or "error=" in text:
        parts = urlsplit(text)
        params = parse_qs(parts.query or parts.fragment or text.lstrip("?"))
        if "error" in params:
            raise AuthError(f"Studio refused the authorization: {params['error'][0]}")
        codes = params.get("code")
        if codes and codes[0].strip():
            return codes[0].strip()
    if not text or any(c.isspace() for c in text):
        raise ConfigError("command line: --code: expected an authorization code or the redirect URL carrying one")
    return text


def check_redirect_uri(uri: str) -> str:
    """Studio refuses http:// and localhost redirect URIs: say so before the user opens the browser."""
    parts = urlsplit(uri)
    if parts.scheme == "http" or (parts.hostname or "") == "localhost" or \
            (parts.hostname and cfg.is_loopback(parts.hostname)):
        raise ConfigError(f"command line: --redirect-uri: Studio refuses http:// and localhost redirect URIs "
                          f"({uri!r}); register an https:// redirect URI with the Developer Key and pass that")
    if parts.scheme == "urn":
        raise ConfigError(f"command line: --redirect-uri: Studio refuses out-of-band redirect URIs ({uri!r}); "
                          "pass the https:// redirect URI registered with the Developer Key")
    if not parts.scheme:
        raise ConfigError(f"command line: --redirect-uri: expected an absolute URI, got {uri!r}")
    return uri


def oauth_config(config: cfg.Config) -> cfg.OAuthConfig:
    if config.studio.oauth is None:
        raise ConfigError(f"{config.source}: studio.oauth: not configured; auth needs studio.oauth with "
                          "client_id, client_secret_file (or client_secret_env) and token_store")
    return config.studio.oauth


def login(config: cfg.Config, code_text: str, redirect_uri: str | None) -> StoredTokens:
    """Exchange an authorization code (or the redirect URL carrying one) for tokens and store them.
    `redirect_uri`: the one used to authorize (None: a code obtained elsewhere, sent without one)."""
    oauth = oauth_config(config)
    secret = cfg.client_secret(config)
    logs.register_secret(secret)
    redirect = check_redirect_uri(redirect_uri) if redirect_uri else None
    code = extract_code(code_text)
    logs.register_secret(code)
    form = {"grant_type": "authorization_code", "code": code, "client_id": oauth.client_id, "client_secret": secret}
    if redirect:  # the one used to authorize; a code from elsewhere (--code alone) is sent without one
        form["redirect_uri"] = redirect
    http = token_http(config.studio)
    try:
        data = post_token(http, config.studio.url + TOKEN_PATH, form,
                          "Studio refused the authorization code (invalid_grant): codes are single-use and short-"
                          "lived, and redirect_uri must match the one used to authorize; run auth login again")
    finally:
        http.close()
    tokens = tokens_from_response(data, oauth.client_id, None, time.time())
    tokens.register()
    store = TokenStore(oauth.token_store, config.source)
    with store.locked():
        try:
            store.save(tokens)
        except OSError as exc:
            raise ConfigError(f"{config.source}: studio.oauth.token_store: cannot write {store.path}: "
                              f"{exc.strerror}") from None
    log.info("oauth_authorized", client_id=oauth.client_id, expires_in=round(tokens.expires_in))
    return tokens
