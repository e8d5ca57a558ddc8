"""An operator's commands, run as the installed command line: -c anywhere, run --once, a synchronous reload,
status exit codes, health's exit codes, explain --all, and the daemon's last word as a log line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from studio_watch.sandbox.server import Faults, Sandbox

from ..conftest import run_cli, wait_until, write_config, write_media
from .test_systemd import NotifySocket


def test_config_option_before_or_after_the_subcommand(tmp_path: Path) -> None:
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in"}])
        before = run_cli("-c", str(config), "status", "--json")
        after = run_cli("status", "--json", "-c", str(config))
        assert before.returncode == after.returncode == 0, before.stderr + after.stderr
        assert json.loads(before.stdout)["jobs"] == json.loads(after.stdout)["jobs"]
        # the subcommand's own -c wins over one given before it
        other = run_cli("-c", str(tmp_path / "nope.yaml"), "status", "-c", str(config))
        assert other.returncode == 0, other.stderr


def test_run_once_uploads_what_is_there_and_exits(tmp_path: Path) -> None:
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1}])
        for n in range(3):
            write_media(tmp_path / "in" / f"talk{n}.mp4", 50_000 + n, seed=n + 1)
        result = run_cli("run", "--once", "-c", str(config), timeout=60)
        assert result.returncode == 0, result.stderr
        assert sorted(m["title"] for m in sandbox.completed()) == ["talk0", "talk1", "talk2"]
        assert any(json.loads(line).get("event") == "run_once_finished" for line in result.stderr.splitlines())
        # again: nothing new, nothing sent twice
        assert run_cli("run", "--once", "-c", str(config), timeout=60).returncode == 0
        assert len(sandbox.completed()) == 3


def test_run_once_exits_1_when_a_job_failed(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(forbidden_collections=frozenset({7}))) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1, "collection_id": 7}])
        write_media(tmp_path / "in" / "refused.mp4", 10_000)
        result = run_cli("run", "--once", "-c", str(config), timeout=60)
        assert result.returncode == 1, result.stderr
        status = run_cli("status", "--json", "-c", str(config))
        assert json.loads(status.stdout)["jobs"]["failed"] == 1


def test_run_log_level_option_overrides_the_config(tmp_path: Path) -> None:
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in"}], log={"level": "warning"})
        quiet = run_cli("run", "--once", "-c", str(config))
        loud = run_cli("run", "--once", "-v", "-c", str(config))
        assert quiet.returncode == loud.returncode == 0
        assert "daemon_ready" not in quiet.stderr
        levels = {json.loads(line)["level"] for line in loud.stderr.splitlines()}
        assert "debug" in levels


def test_reload_waits_for_the_daemon_and_tells_the_truth(tmp_path: Path, daemons) -> None:
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1}])
        notify = NotifySocket(str(tmp_path / "notify"))
        try:
            daemon = daemons(config, env={"NOTIFY_SOCKET": notify.address})
            daemon.wait_ready()
            data = yaml.safe_load(config.read_text())
            data["folders"].append({"path": str(tmp_path / "second"), "settle_seconds": 0.1})
            (tmp_path / "second").mkdir()
            config.write_text(yaml.safe_dump(data))
            result = run_cli("reload", "-c", str(config))
            assert result.returncode == 0, result.stderr
            assert "reloaded: 2 folder(s)" in result.stdout
            # synchronous: by the time reload returned, the daemon had applied it (logged before answering)
            assert any(e.get("event") == "config_reloaded" and e.get("folders") == 2 for e in daemon.events)
            assert notify.wait_for("RELOADING=1", 5) is not None
            reloading = notify.wait_for("RELOADING=1", 0)
            assert any(m == "READY=1" and t >= reloading for t, m in notify.messages)
            write_media(tmp_path / "second" / "new.mp4", 20_000)
            assert wait_until(lambda: len(sandbox.completed()) == 1, 20)
            # as ExecReload= (its output is the unit's journal): one JSON log line with its priority
            code, lines = reload_in_journal(tmp_path, config)
            assert code == 0 and [(p, e["event"], e["folders"]) for p, e in lines] == [("<6>", "reload_applied", 2)]

            data["bogus_key"] = 1
            config.write_text(yaml.safe_dump(data))
            rejected = run_cli("reload", "-c", str(config), "--pid", str(daemon.proc.pid))
            assert rejected.returncode == 2 and "bogus_key" in rejected.stderr
            code, lines = reload_in_journal(tmp_path, config, "--pid", str(daemon.proc.pid))
            assert code == 2 and [(p, e["event"]) for p, e in lines] == [("<3>", "reload_rejected")]
            assert "bogus_key" in lines[0][1]["error"]
            assert daemon.wait_event("config_reload_rejected", 10) and daemon.proc.poll() is None
            assert daemon.stop() == 0
            # no daemon: nothing to reload, said plainly
            del data["bogus_key"]
            config.write_text(yaml.safe_dump(data))
            gone = run_cli("reload", "-c", str(config))
            assert gone.returncode == 1 and "no daemon" in gone.stderr
        finally:
            notify.close()


def reload_in_journal(tmp_path: Path, config: Path, *extra: str) -> tuple[int, list[tuple[str, dict]]]:
    """`reload` with stdout and stderr on a stream that $JOURNAL_STREAM names (as systemd runs ExecReload=):
    its exit code and its lines as (priority prefix, JSON object)."""
    out = tmp_path / "journal.txt"
    with out.open("w") as stream:
        st = os.fstat(stream.fileno())
        code = subprocess.run([sys.executable, "-m", "studio_watch", "reload", "-c", str(config), *extra],
                              stdout=stream, stderr=stream, timeout=90,
                              env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}).returncode
    lines = out.read_text().splitlines()
    assert all(line[:3] in ("<6>", "<3>") for line in lines), lines
    return code, [(line[:3], json.loads(line[3:])) for line in lines]


def test_status_exit_code_says_whether_a_person_is_needed(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(forbidden_collections=frozenset({7}))) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1}])
        fine = run_cli("status", "-c", str(config))
        assert fine.returncode == 0, fine.stdout + fine.stderr
        assert "daemon:  not running" in fine.stdout
        assert "queue:   not being worked on (no daemon running)" in fine.stdout
        assert json.loads(run_cli("status", "--json", "-c", str(config)).stdout)["attention"] == []
        data = yaml.safe_load(config.read_text())
        data["folders"][0]["collection_id"] = 7
        config.write_text(yaml.safe_dump(data))
        write_media(tmp_path / "in" / "refused.mp4", 10_000)
        assert run_cli("run", "--once", "-c", str(config)).returncode == 1
        failed = run_cli("status", "-c", str(config))
        assert failed.returncode == 3 and "NEEDS ATTENTION: 1 failed job(s)" in failed.stdout


def test_status_attention_rules() -> None:
    """What needs a person, from the facts `status` gathers (a missing folder and a dead observer included,
    which a daemon of this machine cannot be made to show on demand)."""
    from studio_watch.cli.status import attention

    def data(**changes):
        base = {"daemon": {"running": True, "healthy": True}, "upload_by_hand_pid": None, "paused": False,
                "pause_reason": None, "storage_paused": None, "jobs": {"failed": 0},
                "folders": [{"path": "/srv/a", "available": True, "unavailable_reason": None, "watching": True}]}
        for key, value in changes.items():
            base[key] = value
        return base

    assert attention(data()) == []
    assert attention(data(paused=True, pause_reason="Studio unreachable")) == ["queue paused: Studio unreachable"]
    # a pause left in the database by a daemon that is gone is not a live pause
    assert attention(data(daemon={"running": False, "healthy": None}, paused=True, pause_reason="x")) == []
    assert attention(data(storage_paused="the disk under the state database is full")) == \
        ["queue paused: the disk under the state database is full"]
    assert attention(data(folders=[{"path": "/srv/a", "available": False, "unavailable_reason": "missing",
                                    "watching": None}])) == ["folder unavailable (missing): /srv/a"]
    assert attention(data(folders=[{"path": "/srv/a", "available": False, "unavailable_reason": "not mounted",
                                    "watching": False}])) == ["folder unavailable (not mounted): /srv/a"]
    assert attention(data(folders=[{"path": "/srv/a", "available": True, "unavailable_reason": None,
                                    "watching": False}])) == \
        ["folder not watched (its observer is dead): /srv/a"]
    assert attention(data(daemon={"running": True, "healthy": False})) == \
        ["daemon unhealthy: a watcher or worker is dead or stuck"]


def test_health_never_exits_2(tmp_path: Path) -> None:
    """Docker reserves a HEALTHCHECK's exit 2: a broken config is unhealthy (1), said on stderr."""
    (tmp_path / "bad.yaml").write_text("studio: {url: 'https://x.example'}\nbogus: 1\n")
    result = run_cli("health", "-c", str(tmp_path / "bad.yaml"))
    assert result.returncode == 1 and "unhealthy" in result.stderr and "bogus" in result.stderr
    assert run_cli("health", "-c", str(tmp_path / "missing.yaml")).returncode == 1


def test_the_fatal_config_message_of_run_is_a_json_log_line(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("studio: {url: 'https://x.example', token_env: T}\nstate_db: s.db\nworkers: 0\n")
    result = run_cli("run", "-c", str(tmp_path / "bad.yaml"))
    assert result.returncode == 2
    line = json.loads(result.stderr.strip())
    assert line["event"] == "config_invalid" and line["level"] == "critical" and "workers" in line["error"]


def test_journal_priority_prefix_from_the_real_daemon(tmp_path: Path) -> None:
    """With $JOURNAL_STREAM naming its stderr (as systemd sets it), each line starts with its priority."""
    (tmp_path / "bad.yaml").write_text("studio: {url: 'https://x.example', token_env: T}\nstate_db: s.db\nworkers: 0\n")
    out = tmp_path / "journal"
    with open(out, "w") as stream:
        st = os.fstat(stream.fileno())
        code = subprocess.run([sys.executable, "-m", "studio_watch", "run", "-c", str(tmp_path / "bad.yaml")],
                              stderr=stream, stdout=subprocess.DEVNULL, timeout=60,
                              env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}).returncode
    assert code == 2
    text = out.read_text()
    assert text.startswith("<2>{") and json.loads(text[3:])["event"] == "config_invalid"


def test_explain_all_judges_every_file(tmp_path: Path) -> None:
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1, "collection_id": 3}])
        write_media(tmp_path / "in" / "done.mp4", 10_000, seed=1)
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        write_media(tmp_path / "in" / "new.mp4", 10_000, seed=2)
        (tmp_path / "in" / "notes.txt").write_text("x")
        (tmp_path / "in" / "half.mp4.part").write_bytes(b"x")
        os.symlink("/etc/passwd", tmp_path / "in" / "link.mp4")
        result = run_cli("explain", "--all", "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert list((tmp_path / "in").glob(".studio-watch-*"))  # the daemon's own (folder lock): not listed
        lines = {line.split()[1].rstrip(":"): line.split()[0] for line in result.stdout.splitlines()[:-1]}
        base = str(tmp_path / "in")
        assert lines == {f"{base}/done.mp4": "done", f"{base}/new.mp4": "upload", f"{base}/notes.txt": "ignored",
                         f"{base}/half.mp4.part": "ignored", f"{base}/link.mp4": "ignored"}
        assert "→ collection 3, title 'new'" in result.stdout
        assert result.stdout.splitlines()[-1].startswith("5 file(s): 1 upload, 0 queued, 1 done")
        assert run_cli("explain", "-c", str(config)).returncode == 2  # neither PATH nor --all


# -- managing the queue ------------------------------------------------------------------------------------------

def test_cancel_stops_a_job_in_flight_at_its_next_step(tmp_path: Path, daemons) -> None:
    # 24 MB at 2 MB/s: more than loopback's socket buffers hold, so the client is still sending when cancelled
    with Sandbox(faults=Faults(put_bytes_per_second=2_000_000)) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1}])
        daemon = daemons(config)
        daemon.wait_ready()
        write_media(tmp_path / "in" / "long.mp4", 24_000_000)
        write_media(tmp_path / "in" / "later.mp4", 24_000_000, seed=9)
        assert daemon.wait_event("upload_url_issued", 20), daemon.output()
        jobs = json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)
        flying = next(j["id"] for j in jobs if j["state"] == "url_issued")
        waiting = next(j["id"] for j in jobs if j["id"] != flying)
        result = run_cli("cancel", str(flying), str(waiting), "-c", str(config))
        assert result.returncode == 0, result.stderr
        assert f"job {flying}: in flight" in result.stdout
        assert daemon.wait_event("job_cancelled", 30), daemon.output()
        after = {j["id"]: j for j in json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)}
        assert after[flying]["state"] == after[waiting]["state"] == "skipped"
        assert after[flying]["reason"] == after[waiting]["reason"] == "cancelled"
        assert sandbox.completed() == []  # never completed in Studio
        assert daemon.wait_event("upload_cut_short", 0), daemon.output()
        # the PUT was cut short too (it takes 12 s): Studio never received the whole file
        states = [m["state"] for m in sandbox.media()]
        assert states and set(states) == {"pending"}, states
        # a rescan does not take them up again
        assert daemon.stop() == 0
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        assert sandbox.completed() == []


def test_forget_and_prune_never_upload_twice(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(forbidden_collections=frozenset({9}))) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "keep", "settle_seconds": 0.1},
                                                      {"path": "gone", "settle_seconds": 0.1, "after_upload": "delete"}])
        write_media(tmp_path / "keep" / "kept.mp4", 10_000, seed=1)
        write_media(tmp_path / "gone" / "deleted.mp4", 10_000, seed=2)
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        assert len(sandbox.completed()) == 2
        jobs = {Path(j["path"]).name: j for j in json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)}
        refused = run_cli("forget", str(jobs["kept.mp4"]["id"]), "-c", str(config))
        assert refused.returncode == 1 and "would upload it again" in refused.stderr
        def prune() -> str:
            return run_cli("prune", "--older-than", "1s", "-c", str(config)).stdout

        assert wait_until(lambda: prune().startswith("pruned 1 "), 10, 0.5)  # once the rows are a second old
        assert "pruned 0 " in (again := prune()) and "kept 1 whose files are still in place" in again
        left = [Path(j["path"]).name for j in json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)]
        assert left == ["kept.mp4"]
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        assert len(sandbox.completed()) == 2  # the kept file was not uploaded again


def test_forget_a_failed_job_lets_the_next_scan_take_the_file_up_again(tmp_path: Path) -> None:
    with Sandbox(faults=Faults(forbidden_collections=frozenset({2}))) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1, "collection_id": 2}])
        write_media(tmp_path / "in" / "talk.mp4", 10_000)
        assert run_cli("run", "--once", "-c", str(config)).returncode == 1
        failed = json.loads(run_cli("jobs", "--json", "--state", "failed", "-c", str(config)).stdout)
        assert len(failed) == 1 and failed[0]["tries"] == 1
        sandbox.faults.forbidden_collections = frozenset()
        assert run_cli("forget", str(failed[0]["id"]), "-c", str(config)).returncode == 0
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        assert [m["title"] for m in sandbox.completed()] == ["talk"]


def test_jobs_table_for_people(tmp_path: Path) -> None:
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "a", "settle_seconds": 0.1, "collection_id": 3},
                                                      {"path": "b", "settle_seconds": 0.1}])
        write_media(tmp_path / "a" / "first.mp4", 10_000, seed=1)
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        write_media(tmp_path / "b" / "second.mp4", 10_000, seed=2)
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        lines = run_cli("jobs", "-c", str(config)).stdout.splitlines()
        assert lines[0].split()[:6] == ["ID", "STATE", "CREATED", "TRIES", "MEDIA", "TARGET"]
        assert "second.mp4" in lines[1] and "first.mp4" in lines[2]  # newest first
        assert " done " in lines[1] and " today " in lines[1] and "My Uploads" in lines[1] and "'second'" in lines[1]
        assert "collection 3" in lines[2] and lines[2].split()[4] == "1"  # TRIES: one attempt made
        only_a = run_cli("jobs", "--folder", str(tmp_path / "a"), "--state", "done", "-c", str(config)).stdout
        assert "first.mp4" in only_a and "second.mp4" not in only_a
        assert "first.mp4" not in run_cli("jobs", "--older-than", "1h", "-c", str(config)).stdout
        assert len(run_cli("jobs", "--newer-than", "1h", "--limit", "1", "-c", str(config)).stdout.splitlines()) == 2


def test_the_daemon_prunes_by_itself_with_prune_after(tmp_path: Path, daemons) -> None:
    with Sandbox() as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1, "after_upload": "delete"}],
                              prune_after="1s")
        write_media(tmp_path / "in" / "talk.mp4", 10_000)
        assert run_cli("run", "--once", "-c", str(config)).returncode == 0
        assert len(json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout)) == 1

        def pruned_at_start() -> bool:  # the housekeeper prunes when the daemon starts (then hourly)
            daemon = daemons(config)
            daemon.wait_ready()
            found = daemon.wait_event("jobs_pruned", 3)
            assert daemon.stop() == 0
            return found

        assert wait_until(pruned_at_start, 30, 0.5)  # once the row is more than a second old
        assert json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout) == []


# -- paged, and told when it is over ---------------------------------------------------------------------------------

def _alert_log(tmp_path: Path) -> tuple[str, Path]:
    """A notify.command appending each alert (JSON on stdin) as one line of a file."""
    out = tmp_path / "alerts.jsonl"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read().strip() + '\\n')"
    return f"{sys.executable} -c \"{script}\"", out


def _alerts(out: Path) -> list[dict]:
    return [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []


def test_every_alert_with_an_end_sends_its_resolution(tmp_path: Path, daemons) -> None:
    command, out = _alert_log(tmp_path)
    with Sandbox(faults=Faults(forbidden_collections=frozenset({2}))) as sandbox:
        config = write_config(tmp_path, sandbox.url, [{"path": "in", "settle_seconds": 0.1, "collection_id": 2},
                                                      {"path": "other", "settle_seconds": 0.1}],
                              notify={"command": command, "paused_after_seconds": 0.5,
                                      "folder_missing_after_seconds": 0.5},
                              retry={"initial_seconds": 0.2, "max_seconds": 0.5, "max_attempts": 30,
                                     "request_tries": 1})
        daemon = daemons(config)
        daemon.wait_ready()
        # a permanent failure: the alert says the job's state now
        write_media(tmp_path / "in" / "refused.mp4", 10_000)
        assert wait_until(lambda: any(a["event"] == "job_failed" for a in _alerts(out)), 20), daemon.output()
        failed = next(a for a in _alerts(out) if a["event"] == "job_failed")
        assert failed["status"] == "firing" and failed["job"]["state"] == "failed"
        assert failed["job"]["failed_state"] == "ready" and failed["alert_key"] == f"job_failed:{failed['job']['id']}"
        # retried: resolved
        sandbox.faults.forbidden_collections = frozenset()
        assert run_cli("retry", "--failed", "-c", str(config)).returncode == 0
        assert wait_until(lambda: any(a["event"] == "job_failed_resolved" for a in _alerts(out)), 20), daemon.output()
        resolved = next(a for a in _alerts(out) if a["event"] == "job_failed_resolved")
        assert resolved["status"] == "resolved" and resolved["resolves"] == "job_failed"
        assert resolved["alert_key"] == failed["alert_key"] and resolved["resolution"] == "retried"
        # a watched folder goes away, and comes back
        shutil.rmtree(tmp_path / "other")  # with the daemon's folder lock in it
        assert wait_until(lambda: any(a["event"] == "folder_unavailable" for a in _alerts(out)), 20), daemon.output()
        (tmp_path / "other").mkdir()
        assert wait_until(lambda: any(a["event"] == "folder_available" for a in _alerts(out)), 20), daemon.output()
        back = next(a for a in _alerts(out) if a["event"] == "folder_available")
        assert back["folder"] == str(tmp_path / "other") and back["status"] == "resolved"
        assert back["alert_key"] == f"folder_unavailable:{tmp_path / 'other'}" and back["resolves"] == "folder_unavailable"
        # Studio down long enough to page, then back
        sandbox.faults.error_rate = 1.0
        write_media(tmp_path / "in" / "during-outage.mp4", 10_000, seed=5)
        assert wait_until(lambda: any(a["event"] == "queue_paused" for a in _alerts(out)), 30), daemon.output()
        sandbox.faults.error_rate = 0.0
        assert wait_until(lambda: any(a["event"] == "queue_resumed" for a in _alerts(out)), 30), daemon.output()
        assert daemon.stop() == 0
    events = [a["event"] for a in _alerts(out)]
    assert events.count("job_failed") == events.count("job_failed_resolved") == 1
    assert events.count("queue_paused") == events.count("queue_resumed") == 1
    assert events.count("folder_unavailable") == events.count("folder_available") == 1


# -- the demo, left watching -----------------------------------------------------------------------------------------

def test_demo_keeps_watching_and_keeps_the_users_files(tmp_path: Path) -> None:
    import re
    import signal
    import threading

    proc = subprocess.Popen([sys.executable, "-m", "studio_watch", "demo", "--files", "1"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    root = None
    try:
        assert wait_until(lambda: any(line.startswith("Still watching ") for line in lines), 60), "".join(lines)
        drop = Path(re.search(r"^Still watching (\S+):", next(l for l in lines if l.startswith("Still")))[1])
        root = drop.parent
        write_media(drop / "mine.mp4", 20_000)
        assert wait_until(lambda: any("done" in line and "mine.mp4" in line for line in lines), 60), "".join(lines)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=60) == 0
        reader.join(timeout=10)
        out = "".join(lines)
        assert f"Your 1 file(s) are kept in {root}" in out
        assert (root / "uploaded" / "mine.mp4").is_file()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if root is not None:
            import shutil

            shutil.rmtree(root, ignore_errors=True)


def test_demo_once_leaves_nothing_behind(tmp_path: Path) -> None:
    """`demo --once` works in a folder of its own under $TMPDIR (it says where) and removes it (a private $TMPDIR:
    demos other runs start meanwhile are not counted)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run([sys.executable, "-m", "studio_watch", "demo", "--once", "--files", "1"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "TMPDIR": str(tmp)})
    assert done.returncode == 0, done.stderr
    assert f"drop folder:     {tmp}/studio-watch-demo-" in done.stdout
    assert list(tmp.iterdir()) == []


# -- init -------------------------------------------------------------------------------------------------------------

def test_init_non_interactive_writes_a_config_that_passes_check(tmp_path: Path) -> None:
    with Sandbox() as sandbox:
        (tmp_path / "room-101").mkdir()
        (tmp_path / "ada").mkdir()
        (tmp_path / "uploaded").mkdir()
        token = tmp_path / "token"
        token.write_text("sandbox-token")
        token.chmod(0o600)
        out = tmp_path / "etc" / "config.yaml"
        result = run_cli("init", "--non-interactive", "--url", sandbox.url, "--token-file", str(token),
                         "--folder", f"{tmp_path / 'room-101'}=collection:2", "--folder", f"{tmp_path / 'ada'}=user:42",
                         "--after-upload", "move", "--move-to", str(tmp_path / "uploaded"),
                         "--state-db", str(tmp_path / "state.db"), "-o", str(out))
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"wrote {out}" in result.stdout and "ok   all checks passed" in result.stdout
        assert oct(out.stat().st_mode & 0o777) == "0o640"
        data = yaml.safe_load(out.read_text())
        assert data["folders"] == [{"path": str(tmp_path / "room-101"), "collection_id": 2},
                                   {"path": str(tmp_path / "ada"), "user_id": 42}]
        assert data["defaults"] == {"after_upload": "move", "move_to": str(tmp_path / "uploaded")}
        # the daemon takes it as it is
        write_media(tmp_path / "room-101" / "talk.mp4", 10_000)
        assert run_cli("run", "--once", "-c", str(out)).returncode == 0
        assert [m["title"] for m in sandbox.completed()] == ["talk"]
        # an existing file is not replaced without --force; a missing flag is named
        again = run_cli("init", "--non-interactive", "--url", sandbox.url, "--token-file", str(token),
                        "--folder", str(tmp_path / "ada"), "-o", str(out))
        assert again.returncode == 2 and "exists (use --force" in again.stderr
        missing = run_cli("init", "--non-interactive", "--url", sandbox.url, "--folder", str(tmp_path / "ada"),
                          "-o", str(tmp_path / "other.yaml"))
        assert missing.returncode == 2 and "--token-file" in missing.stderr


def test_init_asks_when_interactive(tmp_path: Path) -> None:
    with Sandbox() as sandbox:
        (tmp_path / "in").mkdir()
        token = tmp_path / "token"
        token.write_text("sandbox-token")
        token.chmod(0o600)
        out = tmp_path / "config.yaml"
        answers = "\n".join([sandbox.url, "file", str(token), str(tmp_path / "in"), "collection:3", "",
                             "keep", str(tmp_path / "state.db")]) + "\n"
        result = run_cli("init", "-o", str(out), input=answers)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "Studio address" in result.stdout and "Folder to watch" in result.stdout
        data = yaml.safe_load(out.read_text())
        assert data["studio"] == {"url": sandbox.url, "token_file": str(token)}
        assert data["folders"] == [{"path": str(tmp_path / "in"), "collection_id": 3}]
        cut_short = run_cli("init", "-o", str(tmp_path / "x.yaml"), input=sandbox.url + "\n")
        assert cut_short.returncode == 2 and "input ended" in cut_short.stderr


def test_the_example_config_passes_check_apart_from_reachability(tmp_path: Path) -> None:
    """config.example.yaml as shipped, its paths moved under tmp_path (so they can exist) and Studio's address
    pointed at a closed port: every check passes but the one that needs Studio."""
    repo = Path(__file__).resolve().parents[2]
    text = (repo / "config.example.yaml").read_text()
    for absolute in ("/srv/capture", "/var/lib/studio-watch", "/run/credentials/studio-watch.service"):
        text = text.replace(absolute, str(tmp_path) + absolute)
    with socket_closed() as url:
        text = text.replace("https://myschool.instructuremedia.com", url)
    for folder in ("srv/capture/room-101", "srv/capture/room-101-uploaded", "var/lib/studio-watch",
                   "run/credentials/studio-watch.service"):
        (tmp_path / folder).mkdir(parents=True)
    token = tmp_path / "run/credentials/studio-watch.service/token"
    token.write_text("t0ken")
    token.chmod(0o600)
    (tmp_path / "config.yaml").write_text(text)
    result = run_cli("check", "-c", str(tmp_path / "config.yaml"))
    failed = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert result.returncode == 1 and failed[0].startswith("FAIL api:"), result.stdout
    # what fails is reaching the network: Studio (a closed port) and the example's timetable URL (no such host)
    unreachable = ("cannot reach", "ConnectError", "Name or service not known")
    assert all(any(word in line for word in unreachable) for line in failed[:-1]), result.stdout


class socket_closed:
    """An http:// URL on loopback where nothing listens (bound, then closed)."""

    def __enter__(self) -> str:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"http://127.0.0.1:{s.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        pass
