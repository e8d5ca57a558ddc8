"""The installed command behind a campus proxy: HTTPS_PROXY in the environment, a Studio host only the proxy can
resolve, its certificate from a private CA named by studio.ca_bundle (see tests/netstubs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from studio_watch.sandbox.server import Sandbox

from ..conftest import write_config, write_media
from ..netstubs import STUDIO_NAME, ConnectProxy, TlsFront, make_ca


def cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return subprocess.run([sys.executable, "-m", "studio_watch", *args, "-c", str(config)], capture_output=True,
                          text=True, timeout=60, env={**clean, **env})


def test_check_and_upload_on_behalf_into_a_collection_behind_a_proxy(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    with Sandbox() as sb, TlsFront(ca.server_context(), sb.port) as front, \
            ConnectProxy({STUDIO_NAME: "127.0.0.1"}) as proxy:
        url = f"https://{STUDIO_NAME}:{front.port}"
        sb._state.base_url = url  # upload URLs on the TLS name too (until the sandbox serves TLS itself)
        config = write_config(tmp_path, url, [{"path": "in", "collection_id": 2, "user_id": 42}])
        data = yaml.safe_load(config.read_text())
        data["studio"]["ca_bundle"] = str(ca.ca)
        config.write_text(yaml.safe_dump(data))
        media = write_media(tmp_path / "in" / "lecture.mp4", 2_000_000, seed=5)
        env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.1"}

        checked = cli(config, env, "check")
        assert f"ok   proxy: requests to {url} go through proxy {proxy.url} (from HTTPS_PROXY)" in checked.stdout
        assert "ok   api: " in checked.stdout, checked.stdout + checked.stderr
        # both ids: each is checked (the user exists, the collection is one the token sees)
        assert "ok   user: folders[0]" in checked.stdout and "ok   collection: folders[0]" in checked.stdout

        done = cli(config, env, "upload", str(media), "--collection", "3", "--user", "43")
        assert done.returncode == 0, done.stdout + done.stderr
        [uploaded] = sb.media()
        assert uploaded["state"] == "completed" and (uploaded["collection_id"], uploaded["user_id"]) == (3, 43)
        assert [e["endpoint"] for e in sb.events()].count("generate") == 1  # one generate carried both ids

        direct = cli(config, {}, "check")  # without the proxy the name does not even resolve
        assert direct.returncode != 0 and f"no answer from {url}" in direct.stdout and STUDIO_NAME in direct.stdout
        assert sb.violations() == []
    assert proxy.tunnels() and set(proxy.tunnels()) == {f"{STUDIO_NAME}:{front.port}"}


def test_the_daemon_and_auth_login_behind_a_proxy(tmp_path: Path, daemons: Any) -> None:
    """The reproduction of the issue: with HTTPS_PROXY set and a host only the proxy resolves, `run` used to
    pause with "Name or service not known" while the proxy saw nothing."""
    ca = make_ca(tmp_path / "ca")
    with Sandbox() as sb, TlsFront(ca.server_context(), sb.port) as front, \
            ConnectProxy({STUDIO_NAME: "127.0.0.1"}) as proxy:
        url = f"https://{STUDIO_NAME}:{front.port}"
        sb._state.base_url = url
        secret = tmp_path / "client_secret"
        secret.write_text("sandbox-secret\n")
        secret.chmod(0o600)
        config = write_config(tmp_path, url, [{"path": "in", "settle_seconds": 0.1}])
        data = yaml.safe_load(config.read_text())
        data["studio"] = {"url": url, "ca_bundle": str(ca.ca), "timeout_seconds": 5,
                          "oauth": {"client_id": "sandbox-client", "client_secret_file": str(secret),
                                    "token_store": str(tmp_path / "store" / "token.json")}}
        config.write_text(yaml.safe_dump(data))
        env = {"HTTPS_PROXY": proxy.url}

        login = cli(config, env, "auth", "login", "--code", sb.issue_auth_code())
        assert login.returncode == 0, login.stdout + login.stderr
        assert len(proxy.tunnels()) == 1  # the token endpoint, through the proxy

        write_media(tmp_path / "in" / "lecture.mp4", 1_500_000, seed=8)
        daemon = daemons(config, env={**env, "NO_PROXY": ""})
        daemon.wait_ready()
        assert sb.wait_for(lambda: len(sb.completed()) == 1, timeout=30), daemon.output()
        assert daemon.stop() == 0
        assert not [e for e in daemon.events if e.get("event") == "queue_paused"]
    assert set(proxy.tunnels()) == {f"{STUDIO_NAME}:{front.port}"} and len(proxy.tunnels()) >= 2
