"""`studio-watch check` and `studio-watch explain`, against the real sandbox and real folders."""

from __future__ import annotations

import dataclasses
import plistlib
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from studio_watch import config as cfg
from studio_watch.daemon.checks import (FAIL, OK, WARN, check_inotify, check_network_fs, effective_observer, explain,
                                 run_checks)
from studio_watch.cli.main import main
from studio_watch.sandbox.server import Sandbox
from studio_watch.studio.auth import StaticToken
from studio_watch.studio.client import StudioClient


@pytest.fixture
def sb() -> Iterator[Sandbox]:
    with Sandbox(port=0) as sandbox:
        yield sandbox
        assert sandbox.errors() == []


def write_config(tmp_path: Path, url: str, folders: list[dict[str, Any]], **top: Any) -> Path:
    token = tmp_path / "token"
    token.write_text("sandbox-token\n")
    token.chmod(0o600)
    data = {"studio": {"url": url, "token_file": str(token), "timeout_seconds": 5},
            "state_db": str(tmp_path / "state" / "state.db"), "folders": folders,
            "retry": {"initial_seconds": 0.01, "max_seconds": 0.05, "request_tries": 2}, **top}
    (tmp_path / "state").mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def folder(tmp_path: Path, name: str) -> str:
    path = tmp_path / name
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def standard_folders(tmp_path: Path) -> list[dict[str, Any]]:
    return [{"path": folder(tmp_path, "room-101"), "collection_id": 2, "after_upload": "move",
             "move_to": folder(tmp_path, "done"), "title": "{folder} {stem}", "description": "recorded {size} bytes"},
            {"path": folder(tmp_path, "ada"), "user_id": 42, "recursive": True, "auto_caption": True}]


def client_for(config: cfg.Config) -> StudioClient:
    return StudioClient(config.studio, dataclasses.replace(config.retry, request_tries=1),
                        StaticToken(lambda: "sandbox-token"))


def checks(config: cfg.Config, **kw: Any) -> list[Any]:
    client = client_for(config)
    try:
        return run_checks(config, client, **kw)
    finally:
        client.close()


# -- check -------------------------------------------------------------------------------------------------------------

def test_check_passes_on_a_good_setup(sb: Sandbox, tmp_path: Path) -> None:
    config = write_config(tmp_path, sb.url, standard_folders(tmp_path))
    done = subprocess.run([sys.executable, "-m", "studio_watch", "check", "-c", str(config)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[-1].startswith("ok   all checks passed")
    assert all(line.startswith("ok ") for line in lines), done.stdout
    names = {line.split()[1].rstrip(":") for line in lines[:-1]}
    assert {"config", "token", "api", "collection", "user", "folder", "move_to", "state_db"} <= names
    assert "collection 2 (Room 101)" in done.stdout and "user 42 (Ada Lovelace)" in done.stdout


def test_unknown_collection_fails(sb: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = standard_folders(tmp_path)
    folders[0]["collection_id"] = 999
    folders[1]["user_id"] = 77
    config_path = write_config(tmp_path, sb.url, folders)
    failed = [c for c in checks(cfg.load(config_path)) if c.verdict == FAIL]
    assert [c.name for c in failed] == ["collection", "user"]
    assert "collection_id 999 is not a collection the token can see" in failed[0].detail
    assert "user_id 77 does not exist" in failed[1].detail
    assert main(["check", "-c", str(config_path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL collection: folders[0]" in out and out.splitlines()[-1].startswith("FAIL 2 problem(s)")


def test_sandbox_down_fails_ping(sb: Sandbox, tmp_path: Path) -> None:
    config = cfg.load(write_config(tmp_path, sb.url, standard_folders(tmp_path)))
    sb.set_down(True)
    results = {c.name: c for c in checks(config)}
    assert results["api"].verdict == FAIL and "no answer" in results["api"].detail
    assert results["token"].verdict == WARN and "collection" not in results  # targets not checked


def test_a_refused_token_fails_the_token_check(sb: Sandbox, tmp_path: Path) -> None:
    config = cfg.load(write_config(tmp_path, sb.url, standard_folders(tmp_path)))
    client = StudioClient(config.studio, config.retry, StaticToken(lambda: "wrong-token"))
    try:
        results = {c.name: c for c in run_checks(config, client)}
    finally:
        client.close()
    assert results["api"].verdict == OK and results["token"].verdict == FAIL


def test_missing_token_file_is_a_failed_check(sb: Sandbox, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path, sb.url, standard_folders(tmp_path))
    (tmp_path / "token").unlink()
    assert main(["check", "-c", str(config_path)]) == 1
    assert "FAIL token: no token" in capsys.readouterr().out


def test_invalid_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("studio: {url: 'https://s.example', token_file: t}\nstate_db: s.db\nworkrs: 2\n")
    assert main(["check", "-c", str(path)]) == 2


MOUNTINFO = """\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
98 22 0:51 / {nfs} rw,relatime shared:50 - nfs4 filer:/export/capture rw,vers=4.2
"""


def test_network_filesystems_are_flagged(sb: Sandbox, tmp_path: Path) -> None:
    config_path = write_config(tmp_path, sb.url, standard_folders(tmp_path), observer="inotify")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(nfs=tmp_path / "room-101"))
    config = cfg.load(config_path)
    [flagged] = check_network_fs(config, str(mountinfo))
    assert flagged.verdict == WARN and "nfs4" in flagged.detail and "observer: polling" in flagged.detail
    polling = dataclasses.replace(config, observer="polling")
    assert [c.verdict for c in check_network_fs(polling, str(mountinfo))] == [OK]
    auto = dataclasses.replace(config, observer="auto")
    assert effective_observer(auto, config.folders[0], str(mountinfo)) == "polling"
    assert effective_observer(auto, config.folders[1], str(mountinfo)) == "inotify"


def test_inotify_limit_counts_recursive_directories(sb: Sandbox, tmp_path: Path) -> None:
    config = cfg.load(write_config(tmp_path, sb.url, standard_folders(tmp_path)))
    for sub in ("2024/a", "2024/b", ".hidden"):
        (tmp_path / "ada" / sub).mkdir(parents=True)
    limit = tmp_path / "max_user_watches"
    limit.write_text("4\n")
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO.format(nfs="/nowhere"))
    [result] = check_inotify(config, str(limit), str(mountinfo))
    assert result.verdict == FAIL and "5 directories" in result.detail  # room-101, ada, 2024, a, b (not .hidden)
    limit.write_text("100000\n")
    assert [c.verdict for c in check_inotify(config, str(limit), str(mountinfo))] == [OK]


# -- explain -----------------------------------------------------------------------------------------------------------

def explained(tmp_path: Path, path: Path) -> tuple[list[str], int]:
    config = cfg.load(write_config(tmp_path, "https://myschool.instructuremedia.com", standard_folders(tmp_path)))
    return explain(config, str(path))


def test_explain_a_matching_file(tmp_path: Path) -> None:
    media = tmp_path / "room-101" / "Lecture 1.mp4"
    config_path = write_config(tmp_path, "https://myschool.instructuremedia.com", standard_folders(tmp_path))
    media.write_bytes(b"x" * 1234)
    done = subprocess.run([sys.executable, "-m", "studio_watch", "explain", str(media), "-c", str(config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    api = "https://myschool.instructuremedia.com/api/public/v1"
    assert f"POST {api}/media/uploads?collection_id=2" in out
    assert "PUT <upload URL from step 1> (1234 bytes" in out
    assert f"POST {api}/media/uploads/{{media_id}}/complete?title=room-101+Lecture+1&description=recorded+1234+bytes" \
        "&auto_caption=false" in out
    assert "title: room-101 Lecture 1" in out and "description: 'recorded 1234 bytes'" in out
    assert f"move the file to {tmp_path / 'done'}" in out and "settle:" in out and "duplicates: skip" in out


def test_explain_escapes_control_characters_and_shows_the_title_studio_gets(tmp_path: Path) -> None:
    # The name's ANSI escape reached the terminal raw ("title: evil\x1b[2J...": the screen was cleared), and
    # the title shown was not the one sent (the daemon replaces control characters in titles).
    media = tmp_path / "room-101" / "evil\x1b[2J\nname.mp4"
    media.parent.mkdir(parents=True)
    media.write_bytes(b"x" * 100)
    config_path = write_config(tmp_path, "https://myschool.instructuremedia.com", standard_folders(tmp_path))
    done = subprocess.run([sys.executable, "-m", "studio_watch", "explain", str(media), "-c", str(config_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout and "title: room-101 evil [2J name" in done.stdout, done.stdout


def test_explain_date_escapes_control_characters_in_the_files_it_lists(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    import datetime as dt

    from studio_watch.queue import Seen, State, open_queue
    from tests.conftest import ical_event, write_calendar

    start = dt.datetime.now().replace(hour=9, minute=0, second=0, microsecond=0)
    write_calendar(tmp_path / "room.ics", ical_event("u", "CS101", start, start.replace(hour=10)))
    config_path = write_config(tmp_path, "https://myschool.instructuremedia.com",
                               [{"path": folder(tmp_path, "room-101"), "expect": {"calendar": str(tmp_path / "room.ics")}}])
    name = str(tmp_path / "room-101" / "evil\x1b[2J\nname.mp4")
    queue = open_queue(cfg.load(config_path).state_db)
    queue.add(Seen(path=name, folder=str(tmp_path / "room-101"), size=5, mtime_ns=0, inode=1, device=1,
                   collection_id=None, user_id=None, auto_caption=False, after_upload="keep", move_to=None,
                   duplicates="skip", settle_seconds=1), State.SKIPPED, reason="bad\x1b[31m")
    queue.close()
    code = main(["explain", "--date", "today", str(tmp_path / "room-101"), "-c", str(config_path)])
    out = capsys.readouterr()
    assert code in (0, 1), out.err
    out = out.out
    assert "files first seen that day: 1" in out and "evil" in out
    assert "\x1b" not in out and "evil\\x1b[2J\\nname.mp4" in out, out


def test_explain_date_today_is_today_in_the_timetables_zone(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    # explain --date reads a day in the timetable's zone, but "today" was the machine's date: with the machine
    # in Kiritimati (UTC+14) and the room in Pago Pago (UTC-11), 25 hours apart, the two dates always differ, and
    # "today" showed another day's lectures (so did e2e test_recorded_missing_late_across_time_zones, on a UTC
    # machine with a New York timetable, from 00:00 to 05:00 UTC).
    import datetime as dt
    import time
    from zoneinfo import ZoneInfo

    from tests.conftest import ical_event, write_calendar

    room = ZoneInfo("Pacific/Pago_Pago")
    write_calendar(tmp_path / "room.ics", ical_event("d", "Daily", dt.datetime(2026, 1, 1, 9), dt.datetime(2026, 1, 1, 10),
                                                     rrule="FREQ=DAILY", tzid="Pacific/Pago_Pago"))
    config_path = write_config(tmp_path, "https://myschool.instructuremedia.com",
                               [{"path": folder(tmp_path, "room-101"), "expect": {"calendar": str(tmp_path / "room.ics")}}])
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        before = dt.datetime.now(room).date()
        main(["explain", "--date", "today", str(tmp_path / "room-101"), "-c", str(config_path)])
        after = dt.datetime.now(room).date()
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    out = capsys.readouterr().out
    assert any(f"{d:%Y-%m-%d (%A)}: 1 lecture(s) expected" in out for d in (before, after)), out


def test_explain_user_folder_and_captions(tmp_path: Path) -> None:
    lines, code = explained(tmp_path, tmp_path / "ada" / "deep" / "talk.MOV")
    text = "\n".join(lines)
    assert code == 0 and "POST https://myschool.instructuremedia.com/api/public/v1/media/uploads?user_id=42" in text
    assert "(the file does not exist yet" in text and "auto_caption=true" in text


def test_explain_both_ids(tmp_path: Path) -> None:
    folders = [{"path": folder(tmp_path, "both"), "collection_id": 2, "user_id": 42}]
    config = cfg.load(write_config(tmp_path, "https://myschool.instructuremedia.com", folders))
    lines, code = explain(config, str(tmp_path / "both" / "talk.mp4"))
    text = "\n".join(lines)
    assert code == 0 and "media/uploads?collection_id=2&user_id=42" in text
    assert "collection 2 on behalf of user 42" in text


def test_explain_an_excluded_partial_file(tmp_path: Path) -> None:
    lines, code = explained(tmp_path, tmp_path / "room-101" / "Lecture 1.mp4.part")
    assert code == 1 and "matches exclude pattern '*.part'" in lines[-1]


def test_explain_outside_every_folder_and_non_media(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = write_config(tmp_path, "https://myschool.instructuremedia.com", standard_folders(tmp_path))
    assert main(["explain", str(tmp_path / "elsewhere" / "x.mp4"), "-c", str(config_path)]) == 1
    assert "outside every watched folder" in capsys.readouterr().out
    lines, code = explained(tmp_path, tmp_path / "room-101" / "notes.txt")
    assert code == 1 and "matches no include pattern" in lines[-1]
    lines, code = explained(tmp_path, tmp_path / "room-101" / "sub" / "x.mp4")
    assert code == 1 and "not recursive" in lines[-1]


def test_explain_a_link_file(tmp_path: Path) -> None:
    link = tmp_path / "room-101" / "Guest talk.webloc"
    link.parent.mkdir(parents=True)
    link.write_bytes(plistlib.dumps({"URL": "https://youtu.be/abc"}))
    lines, code = explained(tmp_path, link)
    text = "\n".join(lines)
    assert code == 0 and "external YouTube/Vimeo link" in text
    assert "POST https://myschool.instructuremedia.com/api/public/v1/collections/2/media?url=https%3A%2F%2Fyoutu.be" \
        in text and "is_external=true" in text and "title=room-101+Guest+talk" in text


def test_a_collection_the_token_sees_but_may_not_upload_into(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Studio's collection list shows no permissions: check says so plainly; --try-upload asks Studio (403)."""
    from studio_watch.sandbox.server import Faults

    with Sandbox(port=0, faults=Faults(forbidden_collections=frozenset({2}))) as sandbox:
        config_path = write_config(tmp_path, sandbox.url, [{"path": folder(tmp_path, "room-101"), "collection_id": 2},
                                                           {"path": folder(tmp_path, "mine")}])
        assert main(["check", "-c", str(config_path)]) == 0
        out = capsys.readouterr().out
        assert "collection 2 (Room 101) is visible; whether the token may upload into it, Studio's API does not " \
               "say" in out
        assert main(["check", "--try-upload", "-c", str(config_path)]) == 1
        out = capsys.readouterr().out
        assert "FAIL upload: folders[0]: collection 2: generate: not permitted to upload into collection 2 (403)" in out
        assert "ok   upload: folders[1]: the token owner's My Uploads: Studio issued an upload URL" in out
        assert [m for m in sandbox.media() if m["state"] == "completed"] == []  # nothing was uploaded


def test_upload_permission_read_from_a_collection_object_when_it_has_one() -> None:
    from studio_watch.daemon.upload_rights import upload_permission

    assert upload_permission({"id": 1, "name": "x"}) == (None, "")
    assert upload_permission({"id": 1, "can_upload": False}) == (False, "can_upload: false")
    assert upload_permission({"id": 1, "permissions": {"upload": True}}) == (True, "permissions.upload: true")
    assert upload_permission({"id": 1, "role": "viewer"}) == (False, "role: viewer")
    assert upload_permission({"id": 1, "permissions": ["read", "edit"]})[0] is True
