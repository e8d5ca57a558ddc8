"""OAuth: login, status, rotation persisted before use, one refresh for many callers, against the real sandbox."""

from __future__ import annotations

import errno
import functools
import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml

from studio_watch import config as cfg
from studio_watch.errors import AuthError, ConfigError
from studio_watch.studio.auth import OAuthTokens, make_tokens
from studio_watch.studio.login import check_redirect_uri, extract_code, login
from studio_watch.studio.tokenstore import StoredTokens, TokenStore
from studio_watch.cli.auth import status_lines
from studio_watch.sandbox.server import Faults, Sandbox
from studio_watch.studio.client import StudioClient
from studio_watch.studio.connections import http_pool

from ..conftest import at_once

CLIENT, SECRET = "sandbox-client", "sandbox-secret"


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(port=0) as sandbox:
        yield sandbox
        assert sandbox.errors() == []


def write_config(tmp_path: Path, url: str, secret_mode: int = 0o600) -> Path:
    secret = tmp_path / "client_secret"
    secret.write_text(SECRET + "\n")
    secret.chmod(secret_mode)
    data = {"studio": {"url": url, "timeout_seconds": 5,
                       "oauth": {"client_id": CLIENT, "client_secret_file": str(secret),
                                 "token_store": str(tmp_path / "store" / "token.json")}},
            "state_db": str(tmp_path / "state.db"),
            "retry": {"initial_seconds": 0.01, "max_seconds": 0.05, "request_tries": 3}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def logged_in(sb: Sandbox, tmp_path: Path) -> cfg.Config:
    config = cfg.load(write_config(tmp_path, sb.url))
    login(config, sb.issue_auth_code(), None)
    return config


def stored(config: cfg.Config) -> dict[str, Any]:
    assert config.studio.oauth is not None
    data: dict[str, Any] = json.loads(config.studio.oauth.token_store.read_text())
    return data


def token_calls(sb: Sandbox) -> int:
    return sum(1 for e in sb.events() if e["path"].endswith("/oauth/token"))


def cli(config: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "studio_watch", *argv, "-c", str(config)], input=stdin,
                          capture_output=True, text=True, timeout=60)


# -- auth login / status ---------------------------------------------------------------------------------------------

def test_auth_login_with_code_stores_tokens_0600_and_prints_none(sb: Sandbox, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, sb.url)
    done = cli(config_path, "auth", "login", "--code", sb.issue_auth_code())
    assert done.returncode == 0, done.stderr
    store = tmp_path / "store" / "token.json"
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    data = json.loads(store.read_text())
    assert data["access_token"] and data["refresh_token"] and data["expires_at"] > time.time() + 7000
    assert data["client_id"] == CLIENT and data["refreshed_at"] is None
    assert "expires" in done.stdout
    for secret in (data["access_token"], data["refresh_token"], SECRET):
        assert secret not in done.stdout + done.stderr
    status = cli(config_path, "auth", "status")
    assert status.returncode == 0, status.stderr
    assert CLIENT in status.stdout and "valid, expires" in status.stdout and "refreshed:     never" in status.stdout
    for secret in (data["access_token"], data["refresh_token"], SECRET):
        assert secret not in status.stdout + status.stderr


def test_auth_login_reads_a_pasted_redirect_url(sb: Sandbox, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, sb.url)
    pasted = f"https://lms.example.edu/studio-watch/callback?code={sb.issue_auth_code()}&state=x\n"
    done = cli(config_path, "auth", "login", "--redirect-uri", "https://lms.example.edu/studio-watch/callback",
               stdin=pasted)
    assert done.returncode == 0, done.stderr
    assert f"{sb.url}/api/public/oauth/authorize?client_id={CLIENT}&response_type=code&redirect_uri=https" \
        in done.stdout
    assert (tmp_path / "store" / "token.json").exists()


def test_auth_login_without_a_redirect_uri_says_it_is_needed_before_printing_a_url(sb: Sandbox,
                                                                                   tmp_path: Path) -> None:
    done = cli(write_config(tmp_path, sb.url), "auth", "login", stdin="")
    assert done.returncode == 2
    assert "--redirect-uri is required" in done.stderr and "Developer Key" in done.stderr
    assert "authorize" not in done.stdout and "urn:" not in done.stdout + done.stderr
    assert sb.events() == []


def test_auth_status_without_a_token_fails(sb: Sandbox, tmp_path: Path) -> None:
    done = cli(write_config(tmp_path, sb.url), "auth", "status")
    assert done.returncode == 1 and "auth login" in done.stdout


def test_a_refused_code_is_a_clear_failure(sb: Sandbox, tmp_path: Path) -> None:
    config = cfg.load(write_config(tmp_path, sb.url))
    with pytest.raises(AuthError, match="single-use"):
        login(config, "not-a-code", None)


def test_codes_and_redirect_uris() -> None:
    assert extract_code("abc123") == "abc123"
    assert extract_code("https://x.example/cb?state=1&code=abc123") == "abc123"
    assert extract_code("  ?code=abc123\n") == "abc123"
    with pytest.raises(AuthError, match="access_denied"):
        extract_code("https://x.example/cb?error=access_denied")
    for bad in ("http://x.example/cb", "https://localhost/cb", "https://127.0.0.1/cb"):
        with pytest.raises(ConfigError, match="https://"):
            check_redirect_uri(bad)
    with pytest.raises(ConfigError, match="out-of-band"):
        check_redirect_uri("urn:ietf:wg:oauth:2.0:oob")


# -- tokens ------------------------------------------------------------------------------------------------------------

def test_no_token_store_says_run_auth_login(sb: Sandbox, tmp_path: Path) -> None:
    config = cfg.load(write_config(tmp_path, sb.url))
    with pytest.raises(ConfigError, match="auth login"):
        OAuthTokens.from_config(config)


def test_loose_client_secret_file_is_refused(sb: Sandbox, tmp_path: Path) -> None:
    config = cfg.load(write_config(tmp_path, sb.url, secret_mode=0o644))
    with pytest.raises(ConfigError, match="chmod 600"):
        OAuthTokens.from_config(config)


def test_rotation_is_persisted_and_the_old_refresh_token_is_dead(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    before = stored(config)
    tokens = OAuthTokens.from_config(config)
    try:
        fresh = tokens.refresh(before["access_token"])
    finally:
        tokens.close()
    after = stored(config)
    assert fresh == after["access_token"] != before["access_token"]
    assert after["refresh_token"] != before["refresh_token"] and after["refreshed_at"] is not None
    assert stat.S_IMODE(config.studio.oauth.token_store.stat().st_mode) == 0o600  # type: ignore[union-attr]
    old = httpx.post(f"{sb.url}/api/public/oauth/token", data={
        "grant_type": "refresh_token", "refresh_token": before["refresh_token"], "client_id": CLIENT,
        "client_secret": SECRET})
    assert old.status_code == 400 and old.json()["error"] == "invalid_grant"
    assert httpx.get(f"{sb.api_url}/ping", headers={"Authorization": f"Bearer {fresh}"}).status_code == 200


class FlakyStore(TokenStore):
    """A token store whose disk refuses writes while `broken` is set (a full or read-only disk)."""

    broken = True

    def save(self, tokens: StoredTokens) -> None:
        if self.broken:
            raise OSError(errno.EROFS, "Read-only file system")
        super().save(tokens)


def test_a_refreshed_pair_is_not_used_until_it_is_saved(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    assert config.studio.oauth is not None
    before = stored(config)
    store = FlakyStore(config.studio.oauth.token_store, config.source)
    tokens = OAuthTokens(store, f"{sb.url}/api/public/oauth/token", CLIENT, SECRET, http_pool(None))
    try:
        with pytest.raises(AuthError, match="cannot save"):
            tokens.refresh(before["access_token"])
        with pytest.raises(AuthError, match="cannot save"):
            tokens.token()  # the new pair exists only in memory: not used
        assert stored(config) == before
        store.broken = False
        fresh = tokens.token()
    finally:
        tokens.close()
    assert fresh == stored(config)["access_token"] != before["access_token"]
    assert token_calls(sb) == 2  # login + one refresh: the unsaved pair was kept, not refreshed again


def test_concurrent_refreshes_make_one_token_call(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    rejected = stored(config)["access_token"]
    tokens = OAuthTokens.from_config(config)
    calls = token_calls(sb)
    results = at_once(*[functools.partial(tokens.refresh, rejected)] * 8)
    tokens.close()
    assert token_calls(sb) - calls == 1
    assert len(results) == 8 and set(results) == {stored(config)["access_token"]}


def test_eight_threads_hitting_401_cause_one_refresh(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    client = StudioClient(config.studio, config.retry, make_tokens(config))
    calls = token_calls(sb)
    sb.expire_access_tokens()
    outcomes = at_once(*[client.ping] * 8)
    client.close()
    assert outcomes == [None] * 8 and token_calls(sb) - calls == 1
    assert sum(e["status"] == 401 for e in sb.events()) >= 1


def test_invalid_grant_asks_for_auth_login(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    data = stored(config)
    spent = httpx.post(f"{sb.url}/api/public/oauth/token", data={  # someone else spends the refresh token
        "grant_type": "refresh_token", "refresh_token": data["refresh_token"], "client_id": CLIENT,
        "client_secret": SECRET})
    assert spent.status_code == 200
    tokens = OAuthTokens.from_config(config)
    try:
        with pytest.raises(AuthError, match="run studio-watch auth login"):
            tokens.refresh(data["access_token"])
    finally:
        tokens.close()


def test_expiring_tokens_are_refreshed_transparently(tmp_path: Path) -> None:
    with Sandbox(port=0, faults=Faults(token_ttl_calls=3)) as sb:
        config = logged_in(sb, tmp_path)
        client = StudioClient(config.studio, config.retry, make_tokens(config))
        try:
            for _ in range(20):
                client.ping()
        finally:
            client.close()
        assert token_calls(sb) - 1 >= 6  # a new token every 3 calls
        last = [e for e in sb.events() if e["path"].endswith("/ping")][-1]
        assert last["status"] == 200
        assert sb.errors() == []


def test_a_token_about_to_expire_is_refreshed_before_use(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    assert config.studio.oauth is not None
    store = TokenStore(config.studio.oauth.token_store, config.source)
    old = store.load()
    store.save(StoredTokens(old.access_token, old.refresh_token, time.time() + 60, old.obtained_at, None, CLIENT,
                            7200.0))  # 1 minute left of 2 hours: under the 5-minute margin
    tokens = OAuthTokens.from_config(config)
    try:
        fresh = tokens.token()
    finally:
        tokens.close()
    assert fresh != old.access_token and token_calls(sb) == 2
    assert not any(e["status"] == 401 for e in sb.events())


def test_a_pair_rotated_by_another_process_is_adopted(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    rejected = stored(config)["access_token"]
    first, second = OAuthTokens.from_config(config), OAuthTokens.from_config(config)
    try:
        rotated = first.refresh(rejected)
        calls = token_calls(sb)
        assert second.refresh(rejected) == rotated  # re-read the store instead of spending a dead token
        assert second.token() == rotated
    finally:
        first.close()
        second.close()
    assert token_calls(sb) == calls


def test_status_of_an_expired_token(sb: Sandbox, tmp_path: Path) -> None:
    config = logged_in(sb, tmp_path)
    assert config.studio.oauth is not None
    store = TokenStore(config.studio.oauth.token_store, config.source)
    old = store.load()
    store.save(StoredTokens(old.access_token, old.refresh_token, time.time() - 10, old.obtained_at, None, CLIENT))
    lines, usable = status_lines(config)
    text = "\n".join(lines)
    assert usable and "expired" in text and "refreshed automatically" in text
    assert old.access_token not in text and old.refresh_token not in text


def test_a_cluster_shares_one_token_pair_and_refreshes_it_once(sb: Sandbox, tmp_path: Path, pg_uri: str) -> None:
    """Three nodes, one database: one login (on node 0), one refresh for all of them after a 401, the new
    refresh token stored in the database, and nobody left holding a dead one."""
    from studio_watch.queue import open_queue

    homes = [tmp_path / f"node{n}" for n in range(3)]
    configs = []
    for home in homes:
        home.mkdir()
        configs.append(cfg.load(write_config(home, sb.url)))
    login(configs[0], sb.issue_auth_code(), None)
    first = stored(configs[0])
    queues = [open_queue(pg_uri, node=f"node{n}") for n in range(3)]
    sources = [OAuthTokens.from_config(c, shared=q) for c, q in zip(configs, queues)]
    try:
        assert {s.token() for s in sources} == {first["access_token"]}  # nodes 1 and 2 have no file of their own
        calls = token_calls(sb)
        results = at_once(*[functools.partial(s.refresh, first["access_token"]) for s in sources for _ in range(2)])
        assert token_calls(sb) - calls == 1, "more than one node spent the refresh token"
        shared = json.loads(queues[2].meta("oauth_tokens") or "{}")
        assert set(results) == {shared["access_token"]} and shared["refresh_token"] != first["refresh_token"]
        # The next rotation starts from the shared pair, on any node: it is the live one.
        again = sources[1].refresh(shared["access_token"])
        assert again != shared["access_token"]
        # Another node sees it within the store's signature cache (a second), or at once when it is refused.
        assert sources[2].refresh(shared["access_token"]) == again and token_calls(sb) - calls == 2
    finally:
        for s in sources:
            s.close()
        for q in queues:
            q.close()
