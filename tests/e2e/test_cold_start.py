"""What a cold command imports (behaviour, never time): `--version`, `status`, `jobs` and a quiet `upload` leave
out the modules they do not use; structlog (which pulls in asyncio), the watcher, the sandbox; `upload` builds the
one engine (daemon/engine.py) without the daemon's other parts, and talks to Studio without httpx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ..conftest import write_config, write_media

NEVER = {"asyncio", "structlog", "watchdog", "studio_watch.sandbox.server", "studio_watch.files.watcher"}


def imported(*args: str) -> set[str]:
    """The modules `studio-watch ARGS` imported, from `python -X importtime` (one line per module)."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "studio_watch", *args], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    names = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    assert "studio_watch.cli.main" in names  # the parse worked: this is the command's own list
    return names


def test_version_imports_no_config_queue_or_logging() -> None:
    names = imported("--version")
    assert not names & (NEVER | {"yaml", "sqlite3", "studio_watch.config", "studio_watch.queue.sqlite",
                                 "studio_watch.cli.commands", "logging"})


@pytest.mark.parametrize("command", [["status"], ["status", "--json"], ["jobs"], ["jobs", "--json"]])
def test_reading_commands_import_no_daemon_http_or_structlog(tmp_path: Path, sandbox, command: list[str]) -> None:
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    names = imported(*command, "-c", str(config))
    assert "studio_watch.queue.sqlite" in names
    assert not names & (NEVER | {"studio_watch.daemon.pipeline", "studio_watch.studio.client", "http.client",
                                 "studio_watch.daemon.app", "ssl", "socket", "zoneinfo", "difflib"})


def test_a_quiet_upload_never_imports_structlog(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    f = write_media(tmp_path / "talk.mp4", 10_000, seed=4)
    names = imported("upload", str(f), "--collection", "1", "-c", str(config))
    assert "studio_watch.daemon.pipeline" in names and len(sandbox.completed()) == 1
    assert not names & (NEVER | {"httpx", "studio_watch.daemon.app", "studio_watch.daemon.alerts",
                                 "studio_watch.daemon.statuspage", "studio_watch.daemon.settle", "email.utils",
                                 "plistlib", "platform"})


def test_an_upload_with_oauth_reaches_the_token_endpoint_without_httpx(tmp_path: Path, sandbox) -> None:
    """The token endpoint's form goes over the raw pool: an OAuth `upload` (login, then refresh) imports no httpx."""
    f = write_media(tmp_path / "talk.mp4", 10_000, seed=5)
    secret = tmp_path / "client_secret"
    secret.write_text("sandbox-secret")
    secret.chmod(0o600)
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    data = yaml.safe_load(config.read_text())
    del data["studio"]["token_file"]
    data["studio"]["oauth"] = {"client_id": "sandbox-client", "client_secret_file": str(secret),
                               "token_store": str(tmp_path / "tokens.json")}
    config.write_text(yaml.safe_dump(data))
    login = subprocess.run([sys.executable, "-m", "studio_watch", "auth", "login", "-c", str(config), "--code",
                            sandbox.issue_auth_code()], capture_output=True, text=True, timeout=60)
    assert login.returncode == 0, login.stderr
    sandbox.expire_access_tokens()  # the upload's first call is refused: it refreshes at the token endpoint
    calls = sum(1 for e in sandbox.events() if e["path"].endswith("/oauth/token"))
    names = imported("upload", str(f), "--collection", "1", "-c", str(config))
    assert "httpx" not in names and len(sandbox.completed()) == 1
    assert sum(1 for e in sandbox.events() if e["path"].endswith("/oauth/token")) == calls + 1
