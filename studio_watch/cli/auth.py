"""`studio-watch auth login [--code CODE] [--redirect-uri URI]` and `studio-watch auth status`."""

from __future__ import annotations

import argparse
import sys

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, config_error, human_when, load_config
from studio_watch.errors import ConfigError
from studio_watch.studio.login import authorize_url, check_redirect_uri, login, oauth_config
from studio_watch.studio.tokenstore import TokenStore


def cmd_auth(args: argparse.Namespace) -> int:
    config = load_config(args)
    logs.setup("warning", config.log.format)
    if args.auth_command == "status":
        lines, usable = status_lines(config)
        print("\n".join(lines))
        return EXIT_OK if usable else EXIT_FAILURE
    code, redirect = getattr(args, "code", None), getattr(args, "redirect_uri", None)
    if code is None:
        if not redirect:  # Studio has no out-of-band flow: such a URL cannot work
            raise config_error("auth login", "--redirect-uri is required: the https:// redirect URI registered "
                               "with the Developer Key (Studio refuses out-of-band, http:// and localhost redirect "
                               "URIs); or pass a code obtained elsewhere with --code")
        redirect = check_redirect_uri(redirect)
        code = _read_code(authorize_url(config.studio.url, oauth_config(config).client_id, redirect), redirect)
    tokens = login(config, code, redirect)
    print(f"authorized: tokens stored in {oauth_config(config).token_store} (mode 0600)")
    print(f"the access token expires {human_when(tokens.expires_at)} and is refreshed automatically")
    return EXIT_OK


def _read_code(url: str, redirect_uri: str) -> str:
    print("Open this address in a browser, sign in to Canvas Studio and allow access:\n")
    print(f"  {url}\n")
    print(f"Studio then sends the browser to {redirect_uri} with ?code=... in the address.")
    print("Paste the code, or the whole address the browser was sent to:", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        raise config_error("auth login", "no code given (paste it, or pass --code)")
    return line


def status_lines(config: cfg.Config) -> tuple[list[str], bool]:
    """What `auth status` prints (never a token), and whether the stored token is usable."""
    oauth = oauth_config(config)
    store = TokenStore(oauth.token_store, config.source)
    lines = [f"token store:   {store.path}"]
    try:
        tokens = store.load()
    except ConfigError as exc:
        return lines + [f"token:         none usable: {str(exc).split(': ', 2)[-1]}"], False
    usable = tokens.client_id == oauth.client_id and bool(tokens.refresh_token)
    mismatch = "" if tokens.client_id == oauth.client_id else \
        f" (config says {oauth.client_id!r}: run studio-watch auth login)"
    state = "expired" if tokens.remaining() <= 0 else "valid"
    lines += [f"client id:     {tokens.client_id}{mismatch}",
              f"access token:  {state}, expires {human_when(tokens.expires_at)}" +
              ("; refreshed automatically on next use" if state == "expired" and usable else ""),
              f"refresh token: {'stored' if tokens.refresh_token else 'missing: run studio-watch auth login'}",
              f"obtained:      {human_when(tokens.obtained_at)}",
              f"refreshed:     {human_when(tokens.refreshed_at) if tokens.refreshed_at else 'never'}"]
    return lines, usable
