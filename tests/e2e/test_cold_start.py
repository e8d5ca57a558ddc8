"""What a cold command imports (behaviour, never time): `--version`, `status`, `jobs` and a quiet `upload` leave
out the modules they do not use; structlog (which pulls in asyncio), the watcher, the sandbox."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

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
                                 "studio_watch.daemon.app"})


def test_a_quiet_upload_never_imports_structlog(tmp_path: Path, sandbox) -> None:
    config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
    f = write_media(tmp_path / "talk.mp4", 10_000, seed=4)
    names = imported("upload", str(f), "--collection", "1", "-c", str(config))
    assert "studio_watch.daemon.pipeline" in names and len(sandbox.completed()) == 1
    assert not names & NEVER
