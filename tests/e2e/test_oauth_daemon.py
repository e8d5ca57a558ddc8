"""OAuth end to end: `auth login --code`, then a daemon whose access tokens expire every few calls."""

from __future__ import annotations

import json
import stat

import yaml

from studio_watch.sandbox.server import Faults, Sandbox

from ..conftest import run_cli, write_config, write_media


def oauth_config(tmp_path, url):
    config = write_config(tmp_path, url, [{"path": "in", "settle_seconds": 0.05}])
    data = yaml.safe_load(config.read_text())
    secret = tmp_path / "client_secret"
    secret.write_text("sandbox-secret")
    secret.chmod(0o600)
    data["studio"].pop("token_file")
    data["studio"]["oauth"] = {"client_id": "sandbox-client", "client_secret_file": "client_secret",
                               "token_store": "token.json"}
    config.write_text(yaml.safe_dump(data))
    return config


def test_tokens_expiring_every_few_calls_refresh_transparently_across_restarts(tmp_path, daemons):
    with Sandbox(faults=Faults(token_ttl_calls=3)) as sb:
        config = oauth_config(tmp_path, sb.url)
        login = run_cli("auth", "login", "--code", sb.issue_auth_code(), "-c", str(config))
        assert login.returncode == 0, login.stderr
        store = tmp_path / "token.json"
        assert stat.S_IMODE(store.stat().st_mode) == 0o600
        tokens = json.loads(store.read_text())
        assert tokens["access_token"] not in login.stdout + login.stderr

        for n in range(4):
            write_media(tmp_path / "in" / f"a{n}.mp4", 20_000, seed=n + 1)
        first = daemons(config)
        assert sb.wait_for(lambda: len(sb.completed()) == 4, timeout=30), first.output()
        assert first.stop() == 0

        for n in range(3):
            write_media(tmp_path / "in" / f"b{n}.mp4", 20_000, seed=n + 11)
        second = daemons(config)
        assert sb.wait_for(lambda: len(sb.completed()) == 7, timeout=30), second.output()
        assert second.stop() == 0

        refreshes = [e for e in sb.events() if e["path"].endswith("/oauth/token")]
        assert len(refreshes) >= 4, "tokens lasting 3 calls must have been refreshed several times"
        assert json.loads(store.read_text())["refresh_token"] != tokens["refresh_token"]  # rotated and stored
        status = run_cli("auth", "status", "-c", str(config))
        assert status.returncode == 0
        final = json.loads(store.read_text())
        for secret in (final["access_token"], final["refresh_token"], "sandbox-secret"):
            assert secret not in status.stdout + status.stderr
            assert secret not in first.output() + second.output()
        assert sb.violations() == []
