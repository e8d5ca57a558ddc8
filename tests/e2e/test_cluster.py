"""End-to-end cluster: three `studio-watch run` processes with three node names, one PostgreSQL queue (started by
the suite) and one shared drop folder watched by polling, as on a network share."""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest

from studio_watch.sandbox.server import Faults, Sandbox

from ..conftest import PostgresServer, run_cli, sha256_of, wait_until, write_config, write_media

pytestmark = pytest.mark.slow
LEASE = 2.0


def node_config(root: Path, name: str, url: str, uri: str, share: Path, **top: object) -> Path:
    home = root / name
    home.mkdir()
    return write_config(home, url, [{"path": str(share / "in"), "settle_seconds": 0.3, "after_upload": "move",
                                     "move_to": str(share / "done")}],
                        state_db=uri, node_name=name, observer="polling", rescan_seconds=1, lease_seconds=LEASE,
                        workers=2, **top)


def test_three_nodes_one_share_every_file_once_through_kills_and_a_database_restart(
        tmp_path: Path, daemons, pg_uri: str, postgres_server: PostgresServer) -> None:
    rnd = random.Random(20261201)
    share = tmp_path / "share"
    with Sandbox(faults=Faults(put_bytes_per_second=4_000_000, seed=3)) as sandbox:
        configs = {name: node_config(tmp_path, name, sandbox.url, pg_uri, share) for name in ("n1", "n2", "n3")}
        running = {name: daemons(path) for name, path in configs.items()}
        every = list(running.values())
        for d in running.values():
            d.wait_ready()
        files: list[Path] = []
        hashes: set[str] = set()
        kills = restarts = 0
        for burst in range(3):
            files += [write_media(share / "in" / f"b{burst}-{n:02d}.mp4", rnd.randint(100_000, 600_000),
                                  seed=100 * burst + n + 1) for n in range(10)]
            hashes |= {sha256_of(f) for f in files[-10:]}
            for _ in range(2):  # kill one node at a random moment, start it again
                time.sleep(rnd.uniform(0.2, 1.2))
                victim = rnd.choice(sorted(running))
                running[victim].kill()
                kills += 1
                running[victim] = daemons(configs[victim])
                every.append(running[victim])
                running[victim].wait_ready()
            if burst == 1:  # the database goes away under them: they wait, then go on
                postgres_server.restart("fast")
                restarts += 1
        done = share / "done"
        assert sandbox.wait_for(lambda: len(sandbox.completed()) >= len(files), timeout=60), \
            "\n".join(d.output()[-3000:] for d in running.values())
        assert wait_until(lambda: done.is_dir() and len(list(done.iterdir())) == len(files), 20)
        status = json.loads(run_cli("status", "--json", "-c", str(configs["n2"])).stdout)
        # the shared queue makes each file one job: no node takes a folder lock, so none finds the share held
        assert not (share / "in" / ".studio-watch-lock").exists()
        assert [f["available"] for f in status["folders"]] == [True]
        for d in running.values():
            assert d.stop() == 0

    by_hash = Counter(m["content_sha256"] for m in sandbox.completed())
    assert set(by_hash) == hashes, "a file is missing or was uploaded with the wrong bytes"
    assert all(n == 1 for n in by_hash.values()), f"completed more than once: {by_hash}"
    assert sandbox.violations() == [], "a complete came before its PUT, or a PUT was malformed"
    assert sorted(p.name for p in done.iterdir()) == sorted(f.name for f in files)  # each moved, once
    assert list((share / "in").iterdir()) == []
    jobs = json.loads(run_cli("jobs", "--json", "-c", str(configs["n1"])).stdout)
    assert Counter(j["state"] for j in jobs) == {"completed": len(files)}
    assert {n["name"] for n in status["nodes"]} == {"n1", "n2", "n3"} and status["node"] == "n2"
    assert kills == 6 and restarts == 1
    assert any(e.get("event") == "database_unavailable" for d in every for e in d.events), \
        "no daemon noticed the database restart: the test did not exercise it"


def test_a_killed_nodes_upload_is_finished_by_another_within_the_lease(
        tmp_path: Path, daemons, pg_uri: str) -> None:
    share = tmp_path / "share"
    with Sandbox(faults=Faults(put_bytes_per_second=500_000)) as sandbox:
        one = daemons(node_config(tmp_path, "n1", sandbox.url, pg_uri, share))
        one.wait_ready()
        write_media(share / "in" / "big.mp4", 3_000_000, seed=9)
        assert one.wait_event("upload_url_issued", 20), one.output()
        two = daemons(node_config(tmp_path, "n2", sandbox.url, pg_uri, share))
        two.wait_ready()
        time.sleep(0.5)  # mid-PUT
        one.kill()
        killed_at = time.monotonic()
        sandbox.faults.put_bytes_per_second = 0
        assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=30), two.output()
        took = time.monotonic() - killed_at
        assert wait_until(lambda: (share / "done" / "big.mp4").exists(), 10)
        assert two.stop() == 0
    assert took < LEASE + 5, f"the job resumed {took:.1f}s after the kill (lease {LEASE}s)"
    [media] = sandbox.completed()
    assert media["completed_count"] == 1 and sandbox.violations() == []


def test_two_daemons_with_one_node_name_are_refused(tmp_path: Path, sandbox, daemons, pg_uri: str) -> None:
    share = tmp_path / "share"
    first = daemons(node_config(tmp_path, "n1", sandbox.url, pg_uri, share))
    first.wait_ready()
    second_home = tmp_path / "again"
    second_home.mkdir()
    same = write_config(second_home, sandbox.url, [{"path": str(share / "in")}], state_db=pg_uri, node_name="n1",
                        observer="polling")
    second = daemons(same)
    assert second.proc.wait(timeout=30) == 1
    assert "node_name 'n1' is in use" in second.output()
    assert first.proc.poll() is None
    assert first.stop() == 0
