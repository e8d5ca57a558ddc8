"""Clock steps: a wall clock stepped back while the daemon runs, and a restart after running a day fast.

The daemon runs under libfaketime (Debian's `faketime` package) with the monotonic clock left real
(FAKETIME_DONT_FAKE_MONOTONIC=1), as after an NTP step. libfaketime 0.9.10 then fails time.sleep() with EINVAL;
the daemon itself never sleeps (it waits on events); watchdog's inotify emitter does, so these daemons poll.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from studio_watch.sandbox.server import Faults

from ..conftest import run_cli, write_config, write_media

LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1")
pytestmark = pytest.mark.skipif(not LIBFAKETIME.exists(), reason="libfaketime missing (Debian package faketime)")


def faked(offset_file: Path | None = None, offset: str | None = None) -> dict[str, str]:
    env = {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    if offset_file is not None:
        env.update(FAKETIME_TIMESTAMP_FILE=str(offset_file), FAKETIME_NO_CACHE="1")
    else:
        env["FAKETIME"] = offset or "+0"
    return env


def test_clock_stepped_back_three_hours_while_running(tmp_path, sandbox, daemons):
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    # Polled: watchdog's inotify emitter calls time.sleep() (its move-event grouper), which libfaketime breaks.
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 2}], observer="polling")
    daemon = daemons(config, env=faked(offset))
    daemon.wait_ready()
    write_media(tmp_path / "in" / "before.mp4", 2000, seed=1)
    assert daemon.wait_event("file_found"), daemon.output()
    offset.write_text("-3h\n")  # NTP corrects a fast clock, or a VM snapshot is restored
    assert daemon.wait_event("clock_stepped", 10), daemon.output()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), daemon.output()
    write_media(tmp_path / "in" / "after.mp4", 2100, seed=2)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 2, 20), daemon.output()
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.output()


def test_restart_with_the_right_time_after_running_a_day_fast(tmp_path, sandbox, daemons):
    sandbox.faults = Faults(error_rate=1.0, error_endpoints=frozenset({"generate"}))
    config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}], observer="polling")
    write_media(tmp_path / "in" / "fast.mp4", 2000, seed=3)
    fast = daemons(config, env=faked(offset="+1d"))
    fast.wait_ready()
    assert fast.wait_event("job_retry_scheduled", 20), fast.output()
    fast.kill()

    status = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
    assert status["oldest_waiting"] is not None and status["oldest_waiting_seconds"] >= 1  # never 0 or negative
    human = run_cli("status", "-c", str(config)).stdout
    assert "oldest waiting" in human and " 0s:" not in human, human

    sandbox.faults = Faults()
    right = daemons(config)
    right.wait_ready()
    assert right.wait_event("clock_times_clamped", 5), right.output()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, 20), right.output()  # not in 24 h
    assert right.stop() == 0
