"""Unit tests for studio_watch.files.watcher: name rules, scans, filesystem types and real observers."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from studio_watch.config import FolderRule
from studio_watch.files.mounts import filesystem_type, is_network_fs
from studio_watch.files.rules import Found, classify, rule_for, scan
from studio_watch.files.watcher import Watcher

WAIT = 10.0  # the longest any test waits for an event


# -- classify ---------------------------------------------------------------------------------------------------

@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "in"
    path.mkdir()
    return path


@pytest.mark.parametrize("name", ["a.mp4", "A.MP4", "lecture.Mov", "talk.m4v", "x.mpeg", "audio.mp3", "v.WAV",
                                  "name with spaces.mp4", "café.mp4"])
def test_media_names_qualify(folder: Path, name: str) -> None:
    assert classify(FolderRule(path=folder), str(folder / name))[0] == "file"


@pytest.mark.parametrize("name, pattern", [(".hidden.mp4", ".*"), ("~lecture.mp4", "~*"), ("a.mp4.part", "*.part"),
                                           ("a.mp4.tmp", "*.tmp"), ("a.mp4.crdownload", "*.crdownload"),
                                           (".a.mp4.part", ".*")])
def test_excludes_win(folder: Path, name: str, pattern: str) -> None:
    kind, why = classify(FolderRule(path=folder), str(folder / name))
    assert kind is None and repr(pattern) in why
    # Even when an include would match the name.
    kind, _ = classify(FolderRule(path=folder, include=("*",)), str(folder / name))
    assert kind is None


@pytest.mark.parametrize("name", ["notes.txt", "slides.pdf", "a.mp4.bak", "mp4", "noext"])
def test_non_media_is_refused_with_a_reason(folder: Path, name: str) -> None:
    kind, why = classify(FolderRule(path=folder), str(folder / name))
    assert kind is None and "include" in why and name in why


def test_custom_include_and_exclude(folder: Path) -> None:
    rule = FolderRule(path=folder, include=("*.mkv",), exclude=("draft-*",))
    assert classify(rule, str(folder / "a.MKV"))[0] == "file"
    assert classify(rule, str(folder / "a.mp4"))[0] is None
    assert classify(rule, str(folder / "draft-a.mkv"))[0] is None
    assert classify(rule, str(folder / ".a.mkv"))[0] == "file"  # the default excludes are replaced


def test_subfolders_only_when_recursive(folder: Path) -> None:
    flat, deep = FolderRule(path=folder), FolderRule(path=folder, recursive=True)
    nested = str(folder / "week1" / "day2" / "a.mp4")
    kind, why = classify(flat, nested)
    assert kind is None and "not recursive" in why
    assert classify(deep, nested)[0] == "file"
    for hidden in (folder / ".Trash-1000" / "files" / "a.mp4", folder / "week1" / ".sync" / "a.mp4",
                   folder / "~tmpdir" / "a.mp4"):
        assert classify(deep, str(hidden))[0] is None, hidden
    assert classify(deep, str(folder.parent / "elsewhere" / "a.mp4"))[0] is None
    assert classify(deep, str(folder))[0] is None


def test_link_files_only_when_links_enabled(folder: Path) -> None:
    for name in ("Recording.url", "talk.WEBLOC"):
        assert classify(FolderRule(path=folder), str(folder / name))[0] == "link"
        assert classify(FolderRule(path=folder, links=False), str(folder / name))[0] is None
    assert classify(FolderRule(path=folder), str(folder / ".hidden.url"))[0] is None


def test_own_files_never_qualify_whatever_the_patterns(tmp_path: Path) -> None:
    rule = FolderRule(path=tmp_path, include=("*",), exclude=())
    for name in (".studio-watch-3.taken", ".studio-watch-probe-99"):
        (tmp_path / name).write_bytes(b"x")
        assert classify(rule, str(tmp_path / name))[0] is None
    assert [f.path for f in scan(rule)] == []


def test_rule_for_picks_the_innermost_folder(tmp_path: Path) -> None:
    outer, inner = FolderRule(path=tmp_path / "a"), FolderRule(path=tmp_path / "a" / "b")
    assert rule_for([outer, inner], str(tmp_path / "a" / "b" / "x.mp4")) is inner
    assert rule_for([inner, outer], str(tmp_path / "a" / "x.mp4")) is outer
    assert rule_for([inner, outer], str(tmp_path / "ab" / "x.mp4")) is None
    assert rule_for([inner, outer], str(tmp_path / "a")) is outer  # the folder itself
    root = FolderRule(path=Path("/"))
    assert rule_for([root, outer], str(tmp_path / "a" / "x.mp4")) is outer
    assert rule_for([root, outer], "/elsewhere/x.mp4") is root


# -- scan ---------------------------------------------------------------------------------------------------------

def _tree(folder: Path) -> None:
    for rel in ("a.mp4", "B.MOV", "link.url", "notes.txt", ".hidden.mp4", "c.mp4.part", "week1/d.mp4",
                "week1/deeper/e.wav", ".trash/f.mp4", "~old/g.mp4", "week1/.cache/h.mp4"):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 3)
    (folder / "dir.mp4").mkdir()  # a directory with a media name is not a file
    (folder / "dangling.mp4").symlink_to(folder / "absent")


def test_scan_flat(folder: Path) -> None:
    _tree(folder)
    found = {os.path.relpath(f.path, folder): f for f in scan(FolderRule(path=folder))}
    assert set(found) == {"a.mp4", "B.MOV", "link.url"}
    assert found["link.url"].kind == "link" and found["a.mp4"].kind == "file"
    assert found["a.mp4"].stat.st_size == 3


def test_scan_recursive(folder: Path) -> None:
    _tree(folder)
    rule = FolderRule(path=folder, recursive=True, links=False)
    found = {os.path.relpath(f.path, folder) for f in scan(rule)}
    assert found == {"a.mp4", "B.MOV", "week1/d.mp4", "week1/deeper/e.wav"}
    assert all(f.rule is rule for f in scan(rule))


def test_scan_of_a_missing_folder_finds_nothing(tmp_path: Path) -> None:
    assert list(scan(FolderRule(path=tmp_path / "gone"))) == []


# -- filesystem types -------------------------------------------------------------------------------------------

def test_filesystem_type_from_mountinfo(tmp_path: Path) -> None:
    root = os.path.realpath(tmp_path)
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text("\n".join([
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
        f"30 22 0:40 / {root}/nfs rw,relatime shared:5 - nfs4 server:/export rw,vers=4.2",
        f"31 30 253:1 / {root}/nfs/local rw,relatime - ext4 /dev/vdb rw",
        f"32 22 0:41 / {root}/cifs rw,relatime - cifs //fileserver/capture rw",
        f"33 22 0:42 / {root}/ssh rw,nosuid,nodev shared:7 master:2 - fuse.sshfs user@host: rw",
        f"34 22 0:43 / {root}/with\\040space rw - nfs server:/x rw",
        f"35 22 0:44 / {root}/Hörsaal rw - cifs //fileserver/hoersaal rw",
        "garbage line",
        "",
    ]) + "\n", encoding="utf-8")

    def fs(rel: str) -> str | None:
        return filesystem_type(Path(root) / rel, mountinfo=str(mountinfo))

    assert fs("nfs") == "nfs4"
    assert fs("nfs/room-101/a.mp4") == "nfs4"
    assert fs("nfs/local/room") == "ext4"  # the longest mount point wins
    assert fs("nfsish/room") == "ext4"  # a name prefix is not a path prefix
    assert fs("cifs/x") == "cifs"
    assert fs("ssh/x") == "fuse.sshfs"
    assert fs("with space/x") == "nfs"
    assert fs("Hörsaal/x") == "cifs"
    assert fs("local/x") == "ext4"
    assert filesystem_type(tmp_path, mountinfo=str(tmp_path / "absent")) is None
    assert [is_network_fs(t) for t in ("nfs4", "cifs", "fuse.sshfs", "ext4", None)] == [True, True, True, False,
                                                                                          False]


# -- real observers ---------------------------------------------------------------------------------------------

class Collector:
    """The on_found callable: remembers every report, lets a test wait for one with a bounded timeout."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.reports: list[tuple[Found, bool]] = []

    def __call__(self, found: list[Found], is_scan: bool) -> None:
        with self.cond:
            self.reports.extend((f, is_scan) for f in found)
            self.cond.notify_all()

    def names(self) -> set[str]:
        with self.cond:
            return {os.path.basename(f.path) for f, _ in self.reports}

    def wait_for(self, test: Callable[[Found, bool], bool], what: str) -> Found:
        with self.cond:
            ok = self.cond.wait_for(lambda: any(test(f, s) for f, s in self.reports), timeout=WAIT)
            assert ok, f"not reported within {WAIT}s: {what}; got {[(f.path, s) for f, s in self.reports]}"
            return next(f for f, s in self.reports if test(f, s))


@contextlib.contextmanager
def watching(rules: list[FolderRule], observer: str) -> Iterator[tuple[Watcher, Collector]]:
    collector = Collector()
    stop = threading.Event()
    watcher = Watcher(rules, observer=observer, rescan_seconds=3600, on_found=collector, stop=stop)
    try:
        watcher.start()
        yield watcher, collector
    finally:
        stop.set()
        watcher.close()


def _event(path: Path, size: int | None = None) -> Callable[[Found, bool], bool]:
    return lambda f, is_scan: (not is_scan and f.path == str(path)
                               and (size is None or f.stat.st_size == size))


def test_start_scans_files_already_present(folder: Path) -> None:
    (folder / "early.mp4").write_bytes(b"1234")
    (folder / "notes.txt").write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "deep.mp4").write_bytes(b"x")
    rule = FolderRule(path=folder)
    with watching([rule], "inotify") as (watcher, collector):
        assert watcher.alive()
        assert watcher.observers.kinds == {folder: "inotify"}
        with collector.cond:
            assert [(os.path.basename(f.path), s, f.rule) for f, s in collector.reports] == [("early.mp4", True, rule)]
        assert folder in watcher.last_scan


def test_inotify_reports_a_created_file(folder: Path) -> None:
    with watching([FolderRule(path=folder)], "inotify") as (_, collector):
        data = b"v" * 4096
        (folder / "new.mp4").write_bytes(data)
        found = collector.wait_for(_event(folder / "new.mp4", len(data)), "new.mp4 with its full size")
        assert found.kind == "file"


def test_inotify_reports_a_rename_from_a_partial_name(folder: Path) -> None:
    with watching([FolderRule(path=folder)], "inotify") as (_, collector):
        part = folder / "x.mp4.part"
        part.write_bytes(b"partial")
        part.rename(folder / "x.mp4")
        collector.wait_for(_event(folder / "x.mp4"), "x.mp4 after the rename")
        assert "x.mp4.part" not in collector.names()


def test_inotify_reports_a_file_moved_in(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "y.mp4").write_bytes(b"moved")
    with watching([FolderRule(path=folder)], "inotify") as (_, collector):
        (outside / "y.mp4").rename(folder / "y.mp4")
        found = collector.wait_for(_event(folder / "y.mp4", 5), "y.mp4 moved in")
        assert found.kind == "file"


def test_inotify_recursive_reports_a_folder_moved_in_but_not_into_a_hidden_one(folder: Path,
                                                                                tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    for name in ("deleted", "week2"):
        (outside / name / "inner").mkdir(parents=True)
        (outside / name / "inner" / f"{name}.mp4").write_bytes(b"z")
    (folder / ".Trash-1000").mkdir()
    with watching([FolderRule(path=folder, recursive=True)], "inotify") as (_, collector):
        # A file manager "deleting" a folder moves it into the trash; the watcher must not upload its content.
        (outside / "deleted").rename(folder / ".Trash-1000" / "deleted")
        (outside / "week2").rename(folder / "week2")
        collector.wait_for(_event(folder / "week2" / "inner" / "week2.mp4"), "week2.mp4 in a folder moved in")
        assert "deleted.mp4" not in collector.names()


def test_polling_reports_a_created_file(folder: Path) -> None:
    with watching([FolderRule(path=folder)], "polling") as (watcher, collector):
        assert watcher.observers.kinds == {folder: "polling"}
        (folder / "polled.mp4").write_bytes(b"p" * 10)
        (folder / "ignored.txt").write_bytes(b"p")
        collector.wait_for(_event(folder / "polled.mp4"), "polled.mp4")
        assert "ignored.txt" not in collector.names()


def test_rescan_loop_finds_what_events_missed_and_stops(folder: Path) -> None:
    collector = Collector()
    stop = threading.Event()
    # Polling with a 1 s snapshot interval: a 0.05 s rescan reports the file first, as a scan.
    watcher = Watcher([FolderRule(path=folder)], observer="polling", rescan_seconds=0.05, on_found=collector,
                      stop=stop)
    try:
        watcher.start()
        (folder / "later.mp4").write_bytes(b"r")
        collector.wait_for(lambda f, is_scan: is_scan and f.path == str(folder / "later.mp4"),
                           "later.mp4 from a rescan")
    finally:
        stop.set()
        started = time.monotonic()
        watcher.close()
    assert time.monotonic() - started < 5
    assert not watcher.alive()


# -- self-healing: the probe that proves inotify works, and dead observers ---------------------------------------

def _collecting_watcher(rule, observer: str = "auto"):
    from studio_watch.files.watcher import Watcher

    found: list = []
    cond = threading.Condition()

    def on_found(items, is_scan):
        with cond:
            found.extend(items)
            cond.notify_all()

    stop = threading.Event()
    return Watcher([rule], observer, 3600, on_found, stop), found, cond, stop


def _wait_for_name(found, cond, name: str, timeout: float = 10) -> bool:
    with cond:
        return cond.wait_for(lambda: any(os.path.basename(f.path) == name for f in found), timeout)


def test_probe_without_an_event_switches_the_folder_to_polling(tmp_path):
    rule = FolderRule(path=tmp_path, settle_seconds=0)
    watcher, found, cond, stop = _collecting_watcher(rule)
    watcher.observers.probe_seconds = 0.3
    try:
        watcher.observers.schedule(rule)  # starts the observer too
        observers = watcher.observers
        observers.threads["inotify"].unschedule(observers.watches[rule.path])  # inotify now sees nothing here
        watcher.observers.self_test([rule])
        assert watcher.observers.kinds[rule.path] == "polling"
        assert not list(tmp_path.iterdir()), "the probe file was left behind"
        (tmp_path / "after.mp4").write_bytes(b"x")
        assert _wait_for_name(found, cond, "after.mp4")
    finally:
        stop.set()
        watcher.close()


def test_a_fall_back_to_polling_is_no_change_of_the_folder(tmp_path):
    rule = FolderRule(path=tmp_path, settle_seconds=0)
    released: list[FolderRule] = []
    stop = threading.Event()
    watcher = Watcher([rule], "auto", 3600, lambda items, is_scan: None, stop, release=released.append)
    watcher.observers.probe_seconds = 0.3
    try:
        watcher.start()
        observers = watcher.observers
        observers.threads["inotify"].unschedule(observers.watches[rule.path])
        observers.self_test([rule])  # no event: polled from now on
        watcher.check_folders()  # the same folder, so still watched and still claimed
        assert observers.kinds[rule.path] == "polling" and released == []
    finally:
        stop.set()
        watcher.close()


def test_probe_with_working_inotify_keeps_inotify(tmp_path):
    rule = FolderRule(path=tmp_path, settle_seconds=0)
    watcher, found, cond, stop = _collecting_watcher(rule)
    try:
        watcher.start()
        assert watcher.observers.kinds[rule.path] == "inotify"
        assert not list(tmp_path.iterdir())
        assert found == []  # the hidden probe is never reported as a file
    finally:
        stop.set()
        watcher.close()


def test_dead_observer_is_restarted_and_folder_rescanned(tmp_path):
    rule = FolderRule(path=tmp_path, settle_seconds=0)
    watcher, found, cond, stop = _collecting_watcher(rule, "inotify")
    try:
        watcher.start()
        dead = watcher.observers.threads["inotify"]
        dead.stop()
        dead.join(5)
        (tmp_path / "while-dead.mp4").write_bytes(b"x")
        assert not watcher.alive()
        assert watcher.restart_dead() is True
        assert watcher.alive() and watcher.observers.threads["inotify"] is not dead
        assert _wait_for_name(found, cond, "while-dead.mp4")  # found by the rescan that follows a restart
        (tmp_path / "after.mp4").write_bytes(b"y")
        assert _wait_for_name(found, cond, "after.mp4")  # and events flow again
    finally:
        stop.set()
        watcher.close()


def test_the_probe_never_writes_through_a_link_planted_at_its_old_name(tmp_path):
    drop, victim = tmp_path / "drop", tmp_path / "victim"
    drop.mkdir()
    victim.write_bytes(b"precious")
    planted = drop / f".studio-watch-probe-{os.getpid()}"  # the name the probe used to have
    planted.symlink_to(victim)
    watcher, found, cond, stop = _collecting_watcher(FolderRule(path=drop, settle_seconds=0))
    try:
        watcher.start()
        assert watcher.observers.kinds[drop] == "inotify"  # the probe was written and seen: under a name of its own
        assert victim.read_bytes() == b"precious" and planted.is_symlink()
        assert [p.name for p in drop.iterdir()] == [planted.name]
    finally:
        stop.set()
        watcher.close()


def test_a_probe_on_a_full_filesystem_is_not_left_behind(full_filesystem):
    watcher, found, cond, stop = _collecting_watcher(FolderRule(path=full_filesystem, settle_seconds=0))
    try:
        watcher.start()
        assert sorted(p.name for p in full_filesystem.iterdir()) == ["filler"]
    finally:
        stop.set()
        watcher.close()


def test_scan_and_events_never_report_symlinks_or_fifos(tmp_path):
    drop, outside = tmp_path / "drop", tmp_path / "outside.mp4"
    drop.mkdir()
    outside.write_bytes(b"not in the folder")
    (drop / "before.mp4").symlink_to(outside)
    os.mkfifo(drop / "pipe-before.mp4")
    watcher, found, cond, stop = _collecting_watcher(FolderRule(path=drop, settle_seconds=0))
    try:
        watcher.start()
        (drop / "after.mp4").symlink_to(outside)
        os.mkfifo(drop / "pipe-after.mp4")
        (drop / "real.mp4").write_bytes(b"a recording")  # the control: this one is reported
        assert _wait_for_name(found, cond, "real.mp4")
        watcher.scan_all()
        with cond:
            names = {os.path.basename(f.path) for f in found}
        assert names == {"real.mp4"}
    finally:
        stop.set()
        watcher.close()
