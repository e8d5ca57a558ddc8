"""The units under a real systemd (PID 1 in systemd-nspawn) and the image under a real dockerd.

Each test runs one script of this folder (see its header): it prepares a Debian 12 root once (debootstrap, kept
in $STUDIO_WATCH_SYSTEM_CACHE, default /var/cache/studio-watch-systemtest), installs this checkout as
docs/operations.md says, and prints `PASS name detail` / `FAIL name detail` lines. The test fails on any FAIL
and on any expected check that did not report. They need root, the tools (systemd-nspawn and debootstrap;
dockerd), a Debian mirror and the package index: elsewhere they skip, saying which is missing. Each run is
bounded (MAX_SECONDS), and runs of several checkouts on one machine take turns (a lock in the cache).
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CACHE = Path(os.environ.get("STUDIO_WATCH_SYSTEM_CACHE", "/var/cache/studio-watch-systemtest"))
MAX_SECONDS = int(os.environ.get("STUDIO_WATCH_SYSTEM_SECONDS", "600"))

SYSTEMD_CHECKS = {
    "install-venv", "boot", "install-docs-steps", "start-notify-active", "status-text", "hardening-in-force",
    "load-credential", "upload-and-move", "keep-folder-outside-rw", "status-exit-0", "analyze-verify",
    "security-studio-watch.service", "security-studio-watch@room102.service", "reload-synchronous",
    "reload-sighup", "reload-rejects-bad-config", "stop-clean", "resume-after-stop", "watchdog-restart",
    "restart-on-sigkill", "template-instance", "health", "bad-config-no-restart", "missing-rw-path-fails",
    "journal-json", "journal-priority", "journalctl-p-err", "journal-fatal-json", "poweroff",
    "enabled-after-reboot",
}
DOCKER_CHECKS = {
    "dockerd", "base-image", "build", "image-config", "image-group-10001", "image-config-env", "bad-config-exit-2",
    "upload-and-move", "non-root", "healthcheck", "stop-exit-0", "resume-after-stop", "replaced-container",
    "stop-default-timeout", "logs-json",
}
COMPOSE_CHECKS = {
    "compose-up", "compose-upload", "compose-health", "compose-exec-status-as-doc", "compose-exec-status-c",
    "compose-stop-studio-watch", "compose-stop-recorder",
}


def _missing(*tools: str) -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, debootstrap, dockerd)"
    absent = [t for t in tools if shutil.which(t) is None]
    if absent:
        return f"{', '.join(absent)} not installed (Debian: see .ci/apt-packages; scripts/test.sh installs them as root)"
    if not REPO.joinpath(".git").exists():
        return "not a git checkout (the scripts install its tracked and untracked-not-ignored files)"
    return None


def run_script(name: str) -> dict[str, str]:
    """Run tests/system/`name` and return {check: "PASS detail" | "FAIL detail"}, one run at a time per machine."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = subprocess.run(["bash", str(HERE / name), str(CACHE), str(REPO)], capture_output=True, text=True,
                                timeout=MAX_SECONDS + 120, env={**os.environ, "MAX_SECONDS": str(MAX_SECONDS)})
    (CACHE / f"{name}.out").write_text(result.stdout + result.stderr)
    checks: dict[str, str] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(PASS|FAIL) (\S+)\s*(.*)", line)
        if match:
            verdict, check, detail = match.groups()
            checks[check] = f"{verdict} {detail}"
    if result.returncode >= 100:  # the script could not get that far (no mirror, no package index, ...)
        tail = "\n".join(result.stdout.splitlines()[-5:])
        if not checks:
            pytest.skip(f"{name} could not prepare the machine (exit {result.returncode}): {tail}")
    return checks


def assert_all_passed(checks: dict[str, str], expected: set[str]) -> None:
    failed = {k: v for k, v in checks.items() if v.startswith("FAIL")}
    missing = expected - set(checks)
    assert not failed and not missing, f"failed: {failed}\nnot reported: {sorted(missing)}\nall: {checks}"


@pytest.mark.slow
@pytest.mark.timeout(MAX_SECONDS + 180)
@pytest.mark.skipif(_missing("systemd-nspawn", "debootstrap", "unshare", "nsenter") is not None,
                    reason=str(_missing("systemd-nspawn", "debootstrap", "unshare", "nsenter")))
def test_units_under_a_real_systemd() -> None:
    assert_all_passed(run_script("systemd_boot.sh"), SYSTEMD_CHECKS)


@pytest.mark.slow
@pytest.mark.timeout(MAX_SECONDS + 180)
@pytest.mark.skipif(_missing("dockerd", "docker", "debootstrap") is not None,
                    reason=str(_missing("dockerd", "docker", "debootstrap")))
def test_image_and_compose_under_a_real_dockerd() -> None:
    checks = run_script("docker_image.sh")
    expected = DOCKER_CHECKS | (COMPOSE_CHECKS if "compose-up" in checks else set())
    if "compose-up" not in checks:
        assert shutil.which("docker-compose") is None, "a compose binary is here but compose was not run"
    assert_all_passed(checks, expected)
