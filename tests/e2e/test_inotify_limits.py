"""Past the inotify limits: the folder is polled, said so in status, health and STATUS=, and nothing crashes.

The limits are lowered in a user namespace of the daemon's own (`unshare --user --map-root-user`, then
/proc/sys/user/max_inotify_watches or max_inotify_instances): they bind only that namespace, so nothing on the
host, nor any other test running meanwhile, is affected, and there is nothing to restore afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ..conftest import run_cli, wait_until, write_config, write_media


def _userns_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--user", "--map-root-user", "sh", "-c",
                           "echo 5 > /proc/sys/user/max_inotify_watches"], capture_output=True)
    return done.returncode == 0


pytestmark = pytest.mark.skipif(not _userns_works(),
                                reason="no user namespaces here (unshare --user) to lower inotify limits in")


def limited(sysctl: str, value: int) -> tuple[str, ...]:
    """A command prefix: run in a new user namespace whose inotify `sysctl` is `value`."""
    return ("unshare", "--user", "--map-root-user", "sh", "-c",
            f'echo {value} > /proc/sys/user/{sysctl} && exec "$@"', "sh")


def status_folder(config: Path) -> dict:
    done = run_cli("status", "--json", "-c", str(config))
    data = json.loads(done.stdout)
    assert done.returncode == (3 if data["attention"] else 0), done.stderr  # 3: something needs a person
    return data["folders"][0]


def make_tree(root: Path, count: int) -> None:
    for n in range(count):
        (root / f"term-{n // 10}" / f"week-{n}").mkdir(parents=True, exist_ok=True)


def rooms_daemon(tmp_path: Path, sandbox, daemons, subfolders: int, watches: int) -> tuple[Path, Any]:
    """A ready daemon watching the recursive folder `rooms` (`subfolders` of them in it) with `watches`
    inotify watches to its name and no rescan to help; its config and the daemon."""
    config = write_config(tmp_path, sandbox.url, [{"path": "rooms", "settle_seconds": 0.05, "recursive": True}],
                          rescan_seconds=3600)
    make_tree(tmp_path / "rooms", subfolders)
    daemon = daemons(config, prefix=limited("max_inotify_watches", watches))
    daemon.wait_ready()
    return config, daemon


def test_more_subfolders_than_watches_falls_back_to_polling(tmp_path, sandbox, daemons):
    config, daemon = rooms_daemon(tmp_path, sandbox, daemons, subfolders=40, watches=12)
    assert daemon.wait_event("inotify_limit_reached", 5), daemon.output()
    folder = status_folder(config)
    assert folder["observer"] == "polling" and "max_user_watches" in folder["polling_reason"]
    human = run_cli("status", "-c", str(config)).stdout
    assert "instead of inotify" in human, human
    deep = tmp_path / "rooms" / "term-3" / "week-39" / "lecture.mp4"
    write_media(deep, 3000, seed=1)  # in a subfolder inotify could not have watched: found by polling
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), daemon.output()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()


def test_subfolders_appearing_past_the_limit_switch_to_polling(tmp_path, sandbox, daemons):
    config, daemon = rooms_daemon(tmp_path, sandbox, daemons, subfolders=5, watches=30)
    assert status_folder(config)["observer"] == "inotify"
    make_tree(tmp_path / "rooms" / "new-term", 40)  # a new term's folders: more than the watches left
    assert daemon.wait_event("inotify_limit_reached", 15), daemon.output()
    assert wait_until(lambda: status_folder(config)["observer"] == "polling", 15)
    write_media(tmp_path / "rooms" / "new-term" / "term-3" / "week-38" / "late.mp4", 2000, seed=2)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), daemon.output()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()


def test_no_inotify_instance_left_falls_back_to_polling(tmp_path, sandbox, daemons):
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}], rescan_seconds=3600)
    daemon = daemons(config, prefix=limited("max_inotify_instances", 0))
    daemon.wait_ready()
    assert daemon.wait_event("inotify_limit_reached", 5), daemon.output()
    assert status_folder(config)["observer"] == "polling"
    write_media(tmp_path / "in" / "x.mp4", 2000, seed=3)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), daemon.output()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()
