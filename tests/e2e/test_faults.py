"""Fault injection: every fault the sandbox can raise, alone and all at once, with and without SIGKILLs."""

from __future__ import annotations

import json
import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from studio_watch.sandbox.server import Faults, Sandbox

from ..conftest import TOKEN, run_cli, sha256_of, wait_until, write_config, write_media


def drop(folder: Path, count: int, seed: int) -> set[str]:
    rnd = random.Random(seed)
    return {sha256_of(write_media(folder / f"rec-{seed}-{n:02d}.mp4", rnd.randint(50_000, 400_000), seed=seed + n))
            for n in range(count)}


def assert_exactly_once(sandbox: Sandbox, hashes: set[str]) -> None:
    by_hash = Counter(m["content_sha256"] for m in sandbox.completed())
    assert set(by_hash) == hashes, f"missing: {len(hashes - set(by_hash))}"
    assert all(n == 1 for n in by_hash.values()), f"duplicated: {[h for h, n in by_hash.items() if n > 1]}"
    assert sandbox.violations() == []


def jobs_of(config: Path) -> list[dict]:
    return json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)


@pytest.mark.parametrize("faults", [
    Faults(error_rate=0.3, seed=1),
    Faults(rate_limit_rate=0.3, retry_after="1", seed=2),
    Faults(reset_rate=0.4, seed=3),
    Faults(expire_first_put=True, seed=4),
    Faults(lose_complete_rate=0.5, seed=5),
], ids=["errors", "429", "resets", "expired-urls", "lost-completes"])
def test_each_fault_alone(tmp_path, daemons, faults):
    with Sandbox(faults=faults) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}])
        hashes = drop(tmp_path / "in", 6, seed=len(tmp_path.name))
        daemon = daemons(config)
        assert sandbox.wait_for(lambda: len(sandbox.completed()) >= len(hashes), timeout=60), daemon.output()
        assert wait_until(lambda: Counter(j["state"] for j in jobs_of(config)) == {"completed": 6}, 15)
        assert daemon.stop() == 0
        assert_exactly_once(sandbox, hashes)


def test_captions_disabled_completes_without_captions_and_warns_once(tmp_path, daemons):
    with Sandbox(faults=Faults(captions_disabled=True)) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05, "auto_caption": True}])
        hashes = drop(tmp_path / "in", 3, seed=9)
        daemon = daemons(config)
        assert sandbox.wait_for(lambda: len(sandbox.completed()) == 3, timeout=30), daemon.output()
        assert wait_until(lambda: all(j["captions_skipped"] for j in jobs_of(config) if j["state"] == "completed")
                          and len(jobs_of(config)) == 3, 10)
        assert daemon.stop() == 0
        assert_exactly_once(sandbox, hashes)
        assert sum(1 for e in daemon.events if e.get("event") == "captions_disabled") == 1


def test_outage_pauses_queue_without_burning_attempts(tmp_path, daemons):
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.05}],
                              retry={"max_attempts": 2, "initial_seconds": 0.05, "max_seconds": 0.3})
        daemon = daemons(config)
        daemon.wait_ready()
        sandbox.set_down(True)
        hashes = drop(tmp_path / "in", 3, seed=11)
        assert daemon.wait_event("queue_paused", 20), daemon.output()
        status = json.loads(run_cli("status", "--json", "-c", str(config)).stdout)
        assert status["paused"] is True and status["pause_reason"]
        time.sleep(1.0)  # stay down for a while: many probes, and with max_attempts 2 nothing may fail
        sandbox.set_down(False)
        assert sandbox.wait_for(lambda: len(sandbox.completed()) == 3, timeout=30), daemon.output()
        assert daemon.wait_event("queue_resumed", 10)
        assert daemon.stop() == 0
        assert_exactly_once(sandbox, hashes)
        assert all(j["state"] == "completed" for j in jobs_of(config))
        assert json.loads(run_cli("status", "--json", "-c", str(config)).stdout)["paused"] is False


@pytest.mark.slow
def test_every_fault_at_once_with_sigkills(tmp_path, daemons):
    """Errors, 429s, resets, expired URLs, lost completes, no captions, an outage and SIGKILLs together."""
    faults = Faults(error_rate=0.15, rate_limit_rate=0.1, retry_after="1", reset_rate=0.2, expire_first_put=True,
                    lose_complete_rate=0.25, captions_disabled=True, put_bytes_per_second=4_000_000, seed=42)
    rnd = random.Random(7)
    with Sandbox(faults=faults) as sandbox:
        config = write_config(tmp_path, sandbox.url, [
            {"path": "in", "settle_seconds": 0.05, "auto_caption": True, "after_upload": "move", "move_to": "done"}],
            log={"level": "debug", "format": "json"})
        hashes = drop(tmp_path / "in", 10, seed=21)
        outputs = []
        for round_ in range(6):
            daemon = daemons(config)
            daemon.wait_ready()
            if round_ == 2:
                sandbox.set_down(True)
            time.sleep(rnd.uniform(0.1, 0.7))  # a random moment to kill at
            sandbox.set_down(False)
            daemon.kill()
            outputs.append(daemon.output())
        final = daemons(config)
        final.wait_ready()
        assert sandbox.wait_for(lambda: len(sandbox.completed()) >= len(hashes), timeout=90), final.output()
        assert wait_until(lambda: len(list((tmp_path / "done").iterdir())) == len(hashes), 30), final.output()
        assert final.stop() == 0
        outputs.append(final.output())
        assert_exactly_once(sandbox, hashes)
        assert Counter(j["state"] for j in jobs_of(config)) == {"completed": len(hashes)}
        logs = "\n".join(outputs)
        assert TOKEN not in logs
        assert not re.search(r"signature=[0-9a-f]", logs), "an upload URL's signature reached the logs"
