"""Authorizing: the `auth login` flow (cli/auth.py) from the address the user opens to the stored first pair.

`authorize_url` is the address; `check_redirect_uri` refuses, before the browser is opened, the redirect URIs
Studio refuses; `extract_code` takes the code from what the user pastes (the code or the whole redirect URL);
`login` exchanges it at the token endpoint and writes the token store.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.errors import AuthError, ConfigError
from studio_watch.logs import get_logger
from studio_watch.studio.auth import TOKEN_PATH, post_token, tokens_from_response
from studio_watch.studio.connections import http_pool
from studio_watch.studio.tokenstore import StoredTokens, TokenStore

log = get_logger(__name__)

AUTHORIZE_PATH = "/api/public/oauth/authorize"


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
    http = http_pool(config.studio)
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
