"""Who may call the sandbox's API (stdlib only): the static bearer tokens, and OAuth's clients, single-use
authorization codes, expiring access tokens and rotating refresh tokens."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

from studio_watch.sandbox.api import ApiError, Reply
from studio_watch.sandbox.faults import Injector
from studio_watch.sandbox.journal import Journal

DEFAULT_OAUTH_CLIENTS: Mapping[str, str] = {"sandbox-client": "sandbox-secret"}
FIXED_AUTH_CODE = "sandbox-code"


@dataclass
class AccessToken:
    """An issued OAuth access token: valid until `expires_at` (monotonic) or its call budget runs out."""

    expires_at: float
    calls: int = 0


def whole_seconds(value: float) -> float | int:
    """Render integral floats as ints in JSON (7200 rather than 7200.0)."""
    return int(value) if float(value).is_integer() else value


class OAuth:
    """The tokens the API accepts and the OAuth endpoints that issue them, under the journal's lock."""

    def __init__(self, journal: Journal, injector: Injector, tokens: Iterable[str],
                 clients: Mapping[str, str]) -> None:
        """Accept the static bearer `tokens` and the OAuth `clients` (client_id -> secret)."""
        self._journal = journal
        self._injector = injector
        self.static_tokens = frozenset(tokens)
        self.clients = dict(clients)
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, str] = {}
        self._codes: set[str] = set()

    def authorize_bearer(self, token: str | None) -> bool:
        """Is this bearer token accepted right now? Counts the call against an issued token's budget."""
        if token is None:
            return False
        if token in self.static_tokens:
            return True
        with self._journal.lock:
            access = self._access.get(token)
            if access is None or time.monotonic() >= access.expires_at:
                return False
            access.calls += 1
            limit = self._injector.faults.token_ttl_calls
            return not (limit and access.calls > limit)

    def expire_access_tokens(self) -> None:
        """Make every issued access token expire now (static tokens are unaffected)."""
        with self._journal.lock:
            for access in self._access.values():
                access.expires_at = 0.0
            self._journal.notify()

    def issue_auth_code(self) -> str:
        """A new single-use authorization code."""
        with self._journal.lock:
            code = "sbx-code-" + secrets.token_urlsafe(12)
            self._codes.add(code)
            return code

    def authorize(self, query: Mapping[str, str]) -> str:
        """GET /oauth/authorize: the redirect location carrying a new code."""
        if query.get("client_id") not in self.clients:
            raise ApiError(400, "invalid_client")
        if query.get("response_type") != "code":
            raise ApiError(400, "unsupported_response_type")
        redirect = query.get("redirect_uri", "")
        parts = urlsplit(redirect)
        if parts.scheme != "https" or (parts.hostname or "") in ("", "localhost"):
            raise ApiError(400, "invalid_redirect_uri")
        sep = "&" if parts.query else "?"
        return f"{redirect}{sep}code={self.issue_auth_code()}"

    def token(self, form: Mapping[str, str], basic: tuple[str, str] | None) -> Reply:
        """POST /oauth/token: authorization_code or refresh_token grant; refresh tokens rotate."""
        client_id, secret = basic or (form.get("client_id", ""), form.get("client_secret", ""))
        expected = self.clients.get(client_id)
        if expected is None or not secrets.compare_digest(expected, secret):
            raise ApiError(401, "invalid_client")
        grant = form.get("grant_type")
        with self._journal.lock:
            if grant == "authorization_code":
                code = form.get("code", "")
                if code != FIXED_AUTH_CODE and code not in self._codes:
                    raise ApiError(400, "invalid_grant")
                self._codes.discard(code)
            elif grant == "refresh_token":
                if self._refresh.get(form.get("refresh_token", "")) != client_id:
                    raise ApiError(400, "invalid_grant")
                del self._refresh[form["refresh_token"]]
            else:
                raise ApiError(400, "unsupported_grant_type")
            return 200, self._issue_tokens(client_id)

    def _issue_tokens(self, client_id: str) -> dict[str, Any]:
        """A fresh access/refresh pair (lock held)."""
        ttl = self._injector.faults.token_ttl_seconds
        access, refresh = "sbx-at-" + secrets.token_urlsafe(24), "sbx-rt-" + secrets.token_urlsafe(24)
        self._access[access] = AccessToken(expires_at=time.monotonic() + ttl)
        self._refresh[refresh] = client_id
        self._journal.notify()
        return {
            "access_token": access,
            "refresh_token": refresh,
            "expires_in": whole_seconds(ttl),
            "token_type": "Bearer",
        }
