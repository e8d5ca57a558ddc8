"""The drop folder as a trust boundary, end to end: the daemon runs as the unprivileged service user, the
recordings belong to another user (the recorder), as in production. Nothing but a finished recording of the
folder ever reaches Studio, and no secret reaches the database, the terminal or an alert."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from studio_watch.sandbox.server import Faults

from ..conftest import TOKEN, run_cli, sha256_of, wait_until, write_config, write_media

MiB = 1 << 20

# A recorder as its own user: writes 1 MiB, pauses with the file open (a pause in the lecture), writes 1 MiB
# more, and reports whether the file was still linked in its folder when it closed it.
RECORDER = r"""
import hashlib, json, os, sys, time
path, hold = sys.argv[1], float(sys.argv[2])
digest = hashlib.sha256()
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
for part in (os.urandom(1 << 20), None, os.urandom(1 << 20)):
    if part is None:
        time.sleep(hold)  # the lecture pauses; the file stays open
        continue
    os.write(fd, part)
    digest.update(part)
linked = os.fstat(fd).st_nlink
os.close(fd)
print(json.dumps({"sha256": digest.hexdigest(), "linked_at_close": linked}))
"""


def as_service(root: Path, service, url: str, folders: list[dict], **top) -> Path:
    """A config the service user can run: its own 0600 token and state folder; drop folders writable by all
    (the daemon owns neither them nor the files in them)."""
    state = root / "state"
    state.mkdir()
    config = write_config(root, url, folders, state_db="state/state.db", **top)
    service.chown(state, root / "token")
    for folder in folders:
        (root / folder["path"]).chmod(0o777)
    return config


def test_a_recording_held_open_by_another_user_goes_up_whole_and_is_deleted_only_after_it_closed(
        open_tmp, sandbox, daemons, service_account, recorder_account):
    config = as_service(open_tmp, service_account, sandbox.url,
                        [{"path": "drop", "settle_seconds": 2, "after_upload": "delete"}])
    daemon = daemons(config, user=service_account)
    daemon.wait_ready()
    assert daemon.events and not any(e.get("event") == "open_writers_unseen" for e in daemon.events)
    path = open_tmp / "drop" / "lecture.mp4"
    hold = 7.0  # longer than settle_seconds (2) and than a settle pass after it: the half file looks finished
    recorder = subprocess.run([sys.executable, "-c", RECORDER, str(path), str(hold)], capture_output=True,
                              text=True, timeout=60, **recorder_account.popen_args())
    assert recorder.returncode == 0, recorder.stderr
    wrote = json.loads(recorder.stdout)
    assert wrote["linked_at_close"] == 1, "the file was unlinked while its writer still had it open"
    assert path.stat().st_uid == recorder_account.uid or not path.exists()
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=30), daemon.output()
    assert wait_until(lambda: not path.exists(), 15), daemon.output()  # deleted, once whole in Studio
    media = sandbox.media()
    assert [(m["bytes_received"], m["content_sha256"]) for m in media] == [(2 * MiB, wrote["sha256"])], media
    assert daemon.wait_event("file_found") and sandbox.violations() == []
    assert daemon.stop() == 0


def test_a_polled_folder_says_it_cannot_see_writers_and_holds_its_delete(open_tmp, sandbox, daemons,
                                                                         service_account):
    config = as_service(open_tmp, service_account, sandbox.url,
                        [{"path": "share", "settle_seconds": 0.5, "after_upload": "delete"}], observer="polling")
    daemon = daemons(config, user=service_account)
    daemon.wait_ready()
    [said] = [e for e in daemon.events if e.get("event") == "open_writers_unseen"]
    assert said["message"] == "open writers cannot be seen here: relying on settle_seconds=0.5"
    path = write_media(open_tmp / "share" / "lecture.mp4", 50_000)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), daemon.output()
    assert daemon.wait_event("after_upload_waiting", 10), daemon.output()
    assert path.exists()  # uploaded, but not deleted: a writer it cannot see may still be adding to it
    status = run_cli("status", "-c", str(config), user=service_account)
    assert "open writers cannot be seen here: relying on settle_seconds=0.5" in status.stdout, status.stdout
    check = run_cli("check", "-c", str(config), user=service_account)
    assert "open writers cannot be seen here: relying on settle_seconds=0.5" in check.stdout, check.stdout
    assert daemon.stop() == 0


def test_links_and_fifos_in_a_drop_folder_are_never_followed(open_tmp, sandbox, daemons, service_account):
    config = as_service(open_tmp, service_account, sandbox.url,
                        [{"path": "drop", "settle_seconds": 0.3, "recursive": True}], rescan_seconds=1,
                        log={"format": "json", "level": "debug"})
    drop = open_tmp / "drop"
    (open_tmp / "outside").mkdir()
    outside = write_media(open_tmp / "outside" / "elsewhere.mp4", 5000)
    (drop / "token.mp4").symlink_to(open_tmp / "token")  # present at startup: the scan
    (drop / "outside.mp4").symlink_to(outside)
    (drop / "linked-folder").symlink_to(open_tmp / "outside", target_is_directory=True)
    daemon = daemons(config, user=service_account)
    daemon.wait_ready()
    (drop / "state.mp4").symlink_to(open_tmp / "state" / "state.db")  # arriving later: the events
    (drop / "passwd.mp4").symlink_to("/etc/passwd")
    os.mkfifo(drop / "pipe.mp4")
    control = write_media(drop / "real.mp4", 4000, seed=3)
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), daemon.output()
    scans = sum(e.get("event") == "folders_scanned" for e in daemon.events)
    assert daemon.wait_event("folders_scanned", 10, count=scans + 2)  # two more rescans: they must add nothing
    assert [m["content_sha256"] for m in sandbox.media()] == [sha256_of(control)]
    listed = run_cli("jobs", "--json", "-c", str(config), user=service_account)
    assert listed.returncode == 0, listed.stderr
    jobs = json.loads(listed.stdout)
    assert [j["path"] for j in jobs] == [str(control)]
    for name, why in (("token.mp4", "symbolic link"), ("pipe.mp4", "FIFO"),
                      ("linked-folder/elsewhere.mp4", "leads out of")):
        explained = run_cli("explain", str(drop / name), "-c", str(config), user=service_account)
        assert explained.returncode == 1 and why in explained.stdout, explained.stdout
    assert daemon.stop() == 0


class _Hook(BaseHTTPRequestHandler):
    bodies: list[str] = []

    def do_POST(self) -> None:  # noqa: N802
        type(self).bodies.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_a_server_echoing_the_request_leaks_no_token_and_no_signature_anywhere(open_tmp, sandbox, daemons,
                                                                               service_account):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    alerts = open_tmp / "state" / "alerts.jsonl"
    command = f"{sys.executable} -c \"import sys; open({str(alerts)!r}, 'a').write(sys.stdin.read() + chr(10))\""
    try:
        config = as_service(open_tmp, service_account, sandbox.url, [{"path": "drop", "settle_seconds": 0.2}],
                            notify={"command": command, "webhook": f"http://127.0.0.1:{server.server_port}/h"},
                            log={"format": "json", "level": "debug"})
        daemon = daemons(config, user=service_account)
        daemon.wait_ready()
        sandbox.faults = Faults(echo_status=400, error_endpoints=frozenset({"generate"}))
        write_media(open_tmp / "drop" / "one.mp4", 3000, seed=1)
        assert wait_until(lambda: len(_Hook.bodies) == 1, 20), daemon.output()
        sandbox.faults = Faults(echo_status=400, error_endpoints=frozenset({"put"}))
        write_media(open_tmp / "drop" / "two\n\x1b[2Jname.mp4", 3000, seed=2)
        assert wait_until(lambda: len(_Hook.bodies) == 2, 20), daemon.output()
        assert wait_until(lambda: alerts.exists() and alerts.read_text().count('"event": "job_failed"') == 2, 10)
        signatures = [u.signature for u in sandbox._state.media._urls.values()]
        assert signatures and sum(e.get("fault") == "echo" for e in sandbox.events()) == 2
        shown = [run_cli(*args, "-c", str(config), user=service_account).stdout
                 for args in (("jobs",), ("jobs", "--json"), ("status",), ("status", "--json"))]
        assert "RequestURI" in shown[0] and "\x1b" not in shown[0] and "\x1b" not in shown[2]
        assert daemon.stop() == 0
        raw = "".join(p.read_bytes().decode("latin-1") for p in (open_tmp / "state").glob("state.db*"))
        assert TOKEN not in raw
        errors = "\n".join(str(v) for row in sqlite3.connect(open_tmp / "state" / "state.db").execute(
            "SELECT last_error, reason FROM jobs") for v in row)  # (a job failed in url_issued keeps its URL
        assert errors.count("RequestURI") >= 2                    # for `retry`: only error text is checked)
        everywhere = {"jobs/status": "\n".join(shown), "webhook": "\n".join(_Hook.bodies),
                      "alert command": alerts.read_text(), "log": daemon.output(), "database errors": errors}
        for where, text in everywhere.items():
            assert TOKEN not in text, where
            for signature in signatures:
                assert signature not in text, where
    finally:
        server.shutdown()


def test_a_refused_upload_leaves_nothing_queued(open_tmp, sandbox):
    config = write_config(open_tmp, sandbox.url, [{"path": "drop"}])
    movie = write_media(open_tmp / "talk.mp4", 2000)
    (open_tmp / "token").chmod(0o644)
    refused = run_cli("upload", str(movie), "-c", str(config))
    assert refused.returncode == 2 and "readable by group or others" in refused.stderr
    (open_tmp / "token").chmod(0o600)
    jobs = run_cli("jobs", "--json", "-c", str(config))
    assert jobs.returncode == 0 and json.loads(jobs.stdout) == []
    notes = open_tmp / "notes.txt"
    notes.write_text("shopping list")
    refused = run_cli("upload", str(notes), "-c", str(config))
    assert refused.returncode == 2 and "matches no include pattern" in refused.stderr and "--force" in refused.stderr
    assert json.loads(run_cli("jobs", "--json", "-c", str(config)).stdout) == [] and sandbox.media() == []
    forced = run_cli("upload", str(notes), "--force", "-c", str(config))
    assert forced.returncode == 0, forced.stderr
    assert [m["bytes_received"] for m in sandbox.completed()] == [len("shopping list")]


def test_folders_the_daemon_creates_are_private_under_umask_000(open_tmp, sandbox):
    config = write_config(open_tmp, sandbox.url, [{"path": "drop"}], state_db="var/lib/sw/state.db")
    movie = write_media(open_tmp / "drop" / "talk.mp4", 2000)
    done = subprocess.run([sys.executable, "-m", "studio_watch", "upload", str(movie), "-c", str(config)],
                          capture_output=True, text=True, timeout=60, umask=0)
    assert done.returncode == 0, done.stderr
    for folder in ("var", "var/lib", "var/lib/sw"):
        assert (open_tmp / folder).stat().st_mode & 0o777 == 0o700, folder


def test_a_hard_link_to_a_file_not_everyone_may_read_is_never_uploaded(open_tmp, sandbox, daemons, service_account,
                                                                       recorder_account):
    # O_NOFOLLOW cannot see a hard link: it is the file itself. Where fs.protected_hardlinks is 0 (or for anyone
    # who may write the file), `ln /etc/studio-watch/config.yaml drop/x.mp4` makes the daemon's own config, with
    # its client secret, a recording. A linked file only everyone may read is published; a private one is not.
    config = as_service(open_tmp, service_account, sandbox.url,
                        [{"path": "drop", "settle_seconds": 0.3}], rescan_seconds=1,
                        log={"format": "json", "level": "debug"})
    drop = open_tmp / "drop"
    private = open_tmp / "etc-sw"
    private.mkdir()
    secret = private / "config.yaml"
    secret.write_text("client_secret: cs-0123456789abcdef\n")
    os.chown(secret, 0, service_account.gid)
    secret.chmod(0o640)  # the daemon's group may read it; the recorder may not
    os.link(secret, drop / "at-start.mp4")  # present at startup: the scan
    daemon = daemons(config, user=service_account)
    daemon.wait_ready()
    os.link(secret, drop / "later.mp4")  # arriving later: the events
    shared = write_media(open_tmp / "shared.mp4", 4000, seed=5)  # world-readable: a hard link of it is fine
    os.link(shared, drop / "shared.mp4")
    assert sandbox.wait_for(lambda: len(sandbox.completed()) == 1, timeout=20), daemon.output()
    scans = sum(e.get("event") == "folders_scanned" for e in daemon.events)
    assert daemon.wait_event("folders_scanned", 10, count=scans + 2)
    assert [m["content_sha256"] for m in sandbox.media()] == [sha256_of(shared)]
    explained = run_cli("explain", str(drop / "later.mp4"), "-c", str(config), user=service_account)
    assert explained.returncode == 1 and "hard link" in explained.stdout, explained.stdout
    assert daemon.stop() == 0
