"""The container image recipe, the compose example and `studio-watch health` (the image's HEALTHCHECK).

There is no Docker engine where these tests run, so the image is not built. Instead: the Dockerfile is parsed
and checked, and its pip step is replayed in a fresh virtualenv against a copy of the build context filtered
by .dockerignore (what `COPY . /src` would see); the command installed there is then run as the image's
ENTRYPOINT and HEALTHCHECK would run it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from studio_watch import config as cfg
from studio_watch.daemon.lock import DaemonLock
from studio_watch.cli.health import cmd_health
from studio_watch.daemon.health import healthz_url
from studio_watch.queue import open_queue
from studio_watch.daemon.metrics import Metrics, MetricsServer
from studio_watch.sandbox.server import Sandbox

from ..conftest import TOKEN, wait_until, write_config

REPO = Path(__file__).resolve().parents[2]
CONFIG_IN_IMAGE = "/config/config.yaml"


# -- the Dockerfile ------------------------------------------------------------------------------------------

def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def one(parsed: list[tuple[str, str]], name: str) -> str:
    """The arguments of the last `name` instruction (the one that takes effect)."""
    found = [args for word, args in parsed if word == name]
    assert found, f"no {name} in the Dockerfile"
    return found[-1]


def pip_step(parsed: list[tuple[str, str]]) -> list[str]:
    """The arguments of the Dockerfile's `pip install` command (after "pip install")."""
    for word, args in parsed:
        if word == "RUN" and "pip install" in args:
            command = next(part for part in args.split("&&") if "pip install" in part)
            tokens = shlex.split(command)
            return tokens[tokens.index("install") + 1:]
    raise AssertionError("no RUN pip install in the Dockerfile")


def test_dockerfile_runs_the_cli_as_a_non_root_user() -> None:
    parsed = instructions(REPO / "Dockerfile")
    assert parsed[0] == ("FROM", "python:3.11-slim")
    user = one(parsed, "USER").split(":")[0]
    assert user == "10001"
    assert one(parsed, "USER") == "10001:10001"
    accounts = next(args for word, args in parsed if word == "RUN" and "useradd" in args)
    # the group named by USER exists: made with that gid before the user joins it
    assert "groupadd --system --gid 10001" in accounts and "--uid 10001 --gid 10001" in accounts
    assert accounts.index("groupadd") < accounts.index("useradd")
    assert "--user-group" not in accounts  # it would pick whatever system gid is free
    env = one(parsed, "ENV")
    assert f"STUDIO_WATCH_CONFIG={CONFIG_IN_IMAGE}" in env.split()  # `docker compose exec ... status` finds it
    assert json.loads(one(parsed, "ENTRYPOINT")) == ["studio-watch"]
    assert json.loads(one(parsed, "CMD")) == ["run", "-c", CONFIG_IN_IMAGE]
    health = one(parsed, "HEALTHCHECK")
    options, _, command = health.partition("CMD ")
    assert json.loads(command) == ["studio-watch", "health", "-c", CONFIG_IN_IMAGE]
    assert "--timeout=" in options and "--start-period=" in options
    assert "/var/lib/studio-watch" in json.loads(one(parsed, "VOLUME"))
    assert ("COPY", ". /src") in parsed
    args = pip_step(parsed)
    assert "--no-cache-dir" in args and "--only-binary=:all:" in args and args[-1] == "/src"
    # USER comes after every RUN that needs root, so the running container never is root.
    words = [word for word, _ in parsed]
    assert max(i for i, w in enumerate(words) if w == "RUN") < words.index("USER")


def dockerignored(patterns: list[str], relative: str) -> bool:
    """Whether .dockerignore `patterns` exclude `relative` (a posix path) or one of its parent folders."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            if any(fnmatch.fnmatchcase(part, tail) for part in parts) or fnmatch.fnmatchcase(relative, tail):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes):
            return True
    return False


def ignore_patterns() -> list[str]:
    """The patterns of .dockerignore (no negations are used)."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "the test's matcher does not handle ! exceptions"
    return patterns


def test_dockerignore_keeps_the_package_and_drops_the_rest() -> None:
    patterns = ignore_patterns()
    for kept in ("pyproject.toml", "studio_watch/__init__.py", "studio_watch/cli.py", "README.md"):
        assert not dockerignored(patterns, kept), kept
    for dropped in (".git/HEAD", ".venv/bin/python", ".pytest_cache/v/x", "studio_watch/__pycache__/cli.pyc",
                    "tests/test_e2e.py", ".mypy_cache/x", "build/lib/x.py", "studio_watch.egg-info/PKG-INFO",
                    "token", "deploy/room.token", "state.db", "state.db-wal", "state.db.lock"):
        assert dockerignored(patterns, dropped), dropped


def build_context(dest: Path) -> Path:
    """Copy the repository to `dest` as `COPY . /src` would, honoring .dockerignore."""
    patterns = ignore_patterns()
    for root, dirs, files in os.walk(REPO):
        rel_root = Path(root).relative_to(REPO)
        dirs[:] = [d for d in dirs if not dockerignored(patterns, (rel_root / d).as_posix())]
        for name in files:
            rel = (rel_root / name).as_posix()
            if not dockerignored(patterns, rel):
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(Path(root) / name, target)
    return dest


# -- the image's pip step, replayed ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ of a fresh virtualenv where the Dockerfile's pip step installed the build context."""
    root = tmp_path_factory.mktemp("image")
    src = build_context(root / "src")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    args = [str(src) if a == "/src" else a for a in pip_step(instructions(REPO / "Dockerfile"))]
    result = subprocess.run([str(root / "venv" / "bin" / "python"), "-m", "pip", "install", *args],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "venv" / "bin"


def image_env() -> dict[str, str]:
    """This environment without anything that would point Python at this checkout (or at systemd)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "NOTIFY_SOCKET")}


def installed_cli(bin_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the installed `studio-watch` as the image would, with nothing of this checkout on the path."""
    return subprocess.run([str(bin_dir / "studio-watch"), *args], capture_output=True, text=True, timeout=timeout,
                          env=image_env(), cwd="/")


@pytest.mark.slow
def test_image_pip_step_installs_a_working_entrypoint(installed: Path) -> None:
    result = installed_cli(installed, "--help")
    assert result.returncode == 0 and "studio-watch" in result.stdout
    located = subprocess.run([str(installed / "python"), "-c", "import studio_watch; print(studio_watch.__file__)"],
                             capture_output=True, text=True, cwd="/", env=image_env(), check=True)
    assert str(installed.parent) in located.stdout  # the copy in the venv, not this checkout
    assert installed_cli(installed, "run", "-c", "/nonexistent/config.yaml").returncode == 2


@pytest.mark.slow
def test_image_healthcheck_follows_the_daemon(installed: Path, tmp_path: Path) -> None:
    """`health` without metrics: 1 before the daemon runs, 0 while it holds the database, 1 after it stops."""
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.2}])
        assert installed_cli(installed, "health", "-c", str(config)).returncode == 1
        daemon = subprocess.Popen([str(installed / "studio-watch"), "run", "-c", str(config)], env=image_env(), cwd="/",
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            assert wait_until(lambda: installed_cli(installed, "health", "-c", str(config)).returncode == 0, 20, 0.2)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=45) == 0
            result = installed_cli(installed, "health", "-c", str(config))
            assert result.returncode == 1 and "no daemon holds" in result.stderr
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait(timeout=10)


@pytest.mark.slow
def test_image_healthcheck_asks_healthz(installed: Path, tmp_path: Path) -> None:
    queue = open_queue(tmp_path / "probe.db")
    healthy = [True]
    server = MetricsServer("127.0.0.1:0", Metrics(queue, lambda: False), lambda: healthy[0], lambda: True).start()
    try:
        config = write_config(tmp_path, "http://127.0.0.1:9", [], metrics={"listen": f"0.0.0.0:{server.port}"})
        assert installed_cli(installed, "health", "-c", str(config)).returncode == 0
        healthy[0] = False
        result = installed_cli(installed, "health", "-c", str(config))
        assert result.returncode == 1 and "answered 503" in result.stderr
    finally:
        server.stop()
        queue.close()
    result = installed_cli(installed, "health", "-c", str(config))
    assert result.returncode == 1 and "unhealthy" in result.stderr


# -- cmd_health in-process ------------------------------------------------------------------------------------

@pytest.fixture
def probe_server(tmp_path: Path) -> Iterator[tuple[MetricsServer, list[bool]]]:
    queue = open_queue(tmp_path / "probe.db")
    healthy = [True]
    server = MetricsServer("127.0.0.1:0", Metrics(queue, lambda: False), lambda: healthy[0], lambda: True).start()
    yield server, healthy
    server.stop()
    queue.close()


def health(config: Path) -> int:
    return cmd_health(argparse.Namespace(config=str(config)))


def test_health_uses_healthz_when_metrics_listen_is_set(tmp_path: Path, probe_server, capsys) -> None:
    server, healthy = probe_server
    config = write_config(tmp_path, "http://127.0.0.1:9", [], metrics={"listen": f"127.0.0.1:{server.port}"})
    assert health(config) == 0
    healthy[0] = False
    assert health(config) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"http://127.0.0.1:{server.port}/healthz answered 503" in err


def test_health_reports_a_dead_listener(tmp_path: Path, capsys) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = write_config(tmp_path, "http://127.0.0.1:9", [], metrics={"listen": f"127.0.0.1:{port}"})
    assert health(config) == 1
    assert "refused" in capsys.readouterr().err.lower()


def test_health_without_metrics_checks_the_database_lock(tmp_path: Path, capsys) -> None:
    config_path = write_config(tmp_path, "http://127.0.0.1:9", [])
    assert health(config_path) == 1
    assert "no daemon holds" in capsys.readouterr().err
    lock = DaemonLock(cfg.load(config_path).state_db)
    lock.acquire()  # a different open file description: flock sees it as another holder
    try:
        assert health(config_path) == 0
    finally:
        lock.release()
    assert health(config_path) == 1


def test_health_with_a_bad_config_is_unhealthy_not_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Docker reserves a HEALTHCHECK's exit 2: a config that cannot be loaded is exit 1, the reason on stderr."""
    assert health(tmp_path / "missing.yaml") == 1
    assert "unhealthy" in capsys.readouterr().err


def test_healthz_url_maps_wildcards_to_loopback() -> None:
    assert healthz_url("0.0.0.0:9464") == "http://127.0.0.1:9464/healthz"
    assert healthz_url("[::]:9464") == "http://[::1]:9464/healthz"
    assert healthz_url("10.1.2.3:80") == "http://10.1.2.3:80/healthz"


# -- compose.example.yaml ----------------------------------------------------------------------------------

def compose() -> dict:
    return yaml.safe_load((REPO / "compose.example.yaml").read_text())


def mounts(service: dict) -> dict[str, str]:
    """Volume name → target for a service's short-syntax volume entries."""
    out = {}
    for entry in service.get("volumes", []):
        source, target = entry.split(":")[:2]
        out[source] = target
    return out


def test_compose_shares_recordings_and_keeps_state_and_secret_apart() -> None:
    doc = compose()
    recorder, watcher = doc["services"]["recorder"], doc["services"]["studio-watch"]
    assert {"recordings", "studio-watch-state"} <= set(doc["volumes"])
    assert mounts(recorder)["recordings"] == mounts(watcher)["recordings"] == "/recordings"
    assert mounts(watcher)["studio-watch-state"] == "/var/lib/studio-watch"
    assert "studio-watch-state" not in mounts(recorder)
    assert watcher["secrets"] == ["studio_token"] and "file" in doc["secrets"]["studio_token"]
    assert "studio_token" not in recorder.get("secrets", [])
    assert watcher["stop_grace_period"] == "45s"
    # the config is a bind-mounted file (every compose version), not inline `configs: content:`
    assert "configs" not in doc and "configs" not in watcher
    assert f"./compose.studio-watch.yaml:{CONFIG_IN_IMAGE}:ro" in watcher["volumes"]

    inner = yaml.safe_load((REPO / "compose.studio-watch.yaml").read_text())
    assert inner["studio"]["token_file"] == "/run/secrets/studio_token"
    assert inner["state_db"].startswith("/var/lib/studio-watch/")
    assert inner["observer"] in ("auto", "polling")
    port = inner["metrics"]["listen"].rsplit(":", 1)[1]
    assert any(str(p).endswith(f":{port}") for p in watcher["ports"])
    content = (REPO / "compose.studio-watch.yaml").read_text()
    assert "polling" in content and "inotify" in content  # the comment saying when to switch


def test_compose_embedded_config_is_valid(tmp_path: Path) -> None:
    """The embedded config passes studio-watch's own validation (paths moved under tmp_path to exist)."""
    text = (REPO / "compose.studio-watch.yaml").read_text()
    for absolute in ("/recordings", "/var/lib/studio-watch", "/run/secrets"):
        text = text.replace(absolute, str(tmp_path) + absolute)
    (tmp_path / "recordings").mkdir()
    config = cfg.parse(tmp_path / "config.yaml", yaml.safe_load(text))
    assert config.metrics.listen == "0.0.0.0:9464" and config.folders[0].collection_id == 1234
    assert config.studio.token_file == tmp_path / "run/secrets/studio_token"


def compose_command() -> list[str] | None:
    """A `docker compose` (plugin) or `docker-compose` (v2) that can run here, if any."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


@pytest.mark.skipif(compose_command() is None, reason="no docker compose here")
def test_compose_file_passes_compose_config(tmp_path: Path) -> None:
    shutil.copy(REPO / "compose.example.yaml", tmp_path / "compose.yaml")
    shutil.copy(REPO / "compose.studio-watch.yaml", tmp_path / "compose.studio-watch.yaml")
    (tmp_path / "studio_token").write_text(TOKEN)
    command = compose_command()
    assert command is not None
    result = subprocess.run([*command, "config", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_compose_recorder_stops_on_sigterm(tmp_path: Path) -> None:
    """The example recorder's script, run by a real sh as compose runs it ($$ unescaped), exits 0 on SIGTERM at
    once: it traps TERM and sleeps in the background (sh as PID 1 has no default action for TERM)."""
    script = compose()["services"]["recorder"]["command"][-1].replace("$$", "$")
    script = script.replace("/recordings", str(tmp_path))
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True)
    try:
        assert wait_until(lambda: any(p.suffix == ".mp4" for p in tmp_path.iterdir()), 20, 0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
        # and it took its background sleep with it
        assert wait_until(lambda: subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True).returncode, 5)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
