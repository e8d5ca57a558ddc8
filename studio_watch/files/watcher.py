"""Finding files: the folders' event handling, their availability, the startup scan and the periodic rescan.

Which names qualify is files/rules.py's decision, and which observer watches a folder is files/observers.py's;
the watcher only reports qualifying paths (with one stat each) to a callable, and deciding what a file means for
the queue is the daemon's business. Events can be lost (inotify overflow, network filesystems), so a periodic
rescan is the safety net and a startup scan finds what arrived while the daemon was down.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from watchdog.events import FileSystemEvent, FileSystemEventHandler

from studio_watch.logs import get_logger
from studio_watch.config import FolderRule
from studio_watch.files.writers import OpenWriters
from studio_watch.files.mounts import MOUNTINFO
from studio_watch.files.observers import Observers
from studio_watch.files.rules import Found, classify, in_excluded_folder, scan

log = get_logger(__name__)


class _Handler(FileSystemEventHandler):
    """One folder's events: writes tracked for files/writers.py, probes answered, qualifying paths reported."""

    def __init__(self, watcher: "Watcher", rule: FolderRule) -> None:
        self.watcher, self.rule = watcher, rule

    def on_any_event(self, event: FileSystemEvent) -> None:
        kind = event.event_type
        writers = self.watcher.writers
        if not event.is_directory and self.watcher.sees_writers(self.rule):  # polling makes no close events
            if kind == "modified":  # cheap, and every write of a recording comes here: no stat, no report
                writers.modified(os.fsdecode(event.src_path))
                return
            if kind == "closed":
                writers.closed(os.fsdecode(event.src_path))
            elif kind in ("deleted", "created"):
                writers.closed(os.fsdecode(event.src_path))  # a new file at the path starts unwritten
            elif kind == "moved":
                writers.moved(os.fsdecode(event.src_path), os.fsdecode(event.dest_path))
        if kind in ("deleted", "closed_no_write", "opened", "modified"):
            return
        path = os.fsdecode(event.dest_path if kind == "moved" else event.src_path)
        probe = self.watcher.observers.probes.get(path)
        if probe is not None:
            probe.set()
            return
        if event.is_directory:
            if kind in ("created", "moved") and self.rule.recursive:
                self.watcher.observers.dirs_appeared.add(self.rule.path)  # its watches are counted again
                self.watcher.scan_folder(self.rule, path)  # files moved in with a directory make no events
            return
        self.watcher.report_path(self.rule, path)


@dataclass
class Unavailable:
    """A folder not watched right now, why, and since when (wall clock, for humans and alerts)."""

    reason: str
    since: float


class Watcher:
    """Every folder watched (files/observers.py), the startup scan and the periodic rescan.

    A folder that is missing (a late or lost mount), not a directory any more, or owned by another daemon
    (`claim` says so) is not watched: it is reported in `unavailable`, and `check_folders`, called about once a
    second, picks it up (watch + scan) as soon as it is there, and notices one that went away or was mounted
    over (its st_dev/st_ino changed)."""

    def __init__(self, rules: Iterable[FolderRule], observer: str, rescan_seconds: float,
                 on_found: Callable[[list[Found], bool], None], stop: threading.Event,
                 claim: Callable[[FolderRule], str | None] | None = None,
                 release: Callable[[FolderRule], None] | None = None, mountinfo: str = MOUNTINFO) -> None:
        self.rules = tuple(rules)
        self.rescan_seconds = rescan_seconds
        self.on_found = on_found
        self.stop = stop
        self.claim = claim or (lambda rule: None)
        self.release = release or (lambda rule: None)
        self.observers = Observers(observer, mountinfo, lambda rule: _Handler(self, rule))
        self.identity: dict[Path, tuple[int, int]] = {}  # st_dev, st_ino of each watched folder when scheduled
        self.unavailable: dict[Path, Unavailable] = {}
        self.mount_points: set[Path] = set()  # folders seen as mount points: unmounted, they are unavailable
        self.last_scan: dict[Path, float] = {}
        self.writers = OpenWriters()
        self._lock = threading.RLock()
        self._rescanner: threading.Thread | None = None

    def local_clock(self, rule: FolderRule) -> bool:
        """Do file times in this folder come from this machine's clock? Where the kernel reports changes
        (inotify) the folder is local; on a polled (network) filesystem they come from the server's clock."""
        return self.observers.inotify(rule.path)

    def sees_writers(self, rule: FolderRule) -> bool:
        """Can a writer that holds a file of this folder open be seen? Only where this kernel reports the
        folder's writes (inotify); on a polled folder only the settle time speaks."""
        return self.observers.inotify(rule.path)

    def writing(self, path: str) -> bool:
        """Is `path` open for writing, as far as can be seen (modified since its last close-write)?"""
        return self.writers.writing(path)

    def active(self) -> list[FolderRule]:
        return [rule for rule in self.rules if rule.path in self.observers.kinds]

    def start(self) -> None:
        """Start observing, then scan every folder once (files that arrived while we were down)."""
        for rule in self.rules:
            self._activate(rule)
        if self.observers.setting == "auto":
            self.observers.self_test([rule for rule in self.rules if self.observers.inotify(rule.path)])
        self.check_watches(force=True)
        self.scan_all(full=True)
        self._rescanner = threading.Thread(target=self._rescan_loop, name="rescan", daemon=True)
        self._rescanner.start()

    # -- folders coming and going ----------------------------------------------------------------------------

    def _activate(self, rule: FolderRule) -> bool:
        """Watch `rule`'s folder if it is there and ours; else record why not. True when it is now watched."""
        try:
            st = os.stat(rule.path)
            reason = None if stat.S_ISDIR(st.st_mode) else "not a directory"
        except FileNotFoundError:
            reason = "missing"
        except OSError as exc:
            reason = f"cannot be read: {exc.strerror}"
        if reason is None and os.path.ismount(rule.path):
            self.mount_points.add(rule.path)
        elif reason is None and rule.path in self.mount_points:
            reason = "not mounted (the empty mount point is there; it was a mount point)"
        if reason is None:
            reason = self.claim(rule)
        if reason is not None:
            self._mark_unavailable(rule, reason)
            return False
        self.identity[rule.path] = (st.st_dev, st.st_ino)
        self.observers.schedule(rule)
        gone = self.unavailable.pop(rule.path, None)
        if gone is not None:
            log.info("folder_available", folder=str(rule.path), was=gone.reason,
                     unavailable_seconds=round(max(0.0, time.time() - gone.since), 1))
        return True

    def _mark_unavailable(self, rule: FolderRule, reason: str) -> None:
        known = self.unavailable.get(rule.path)
        if known is not None and known.reason == reason:
            return
        self.unavailable[rule.path] = Unavailable(reason, known.since if known else time.time())
        if reason == "missing":
            log.error("folder_missing", folder=str(rule.path),
                      message="the watched folder does not exist (a late or lost mount?); the others go on, and "
                              "this one is watched as soon as it appears")
        elif reason.startswith("watched by another"):
            log.error("folder_held_elsewhere", folder=str(rule.path), reason=reason)
        else:
            log.error("folder_unavailable", folder=str(rule.path), reason=reason)

    def check_folders(self) -> None:
        """Notice folders that went away (or were mounted over) and pick up ones that are back. Cheap: one stat
        per folder; about once a second."""
        with self._lock:
            for rule in self.rules:
                if rule.path in self.observers.kinds:
                    try:
                        st = os.stat(rule.path)
                        now = (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None
                    except OSError:
                        now = None
                    if now == self.identity.get(rule.path):
                        continue
                    self._unschedule(rule.path)
                    self.release(rule)
                    if now is None:
                        self._mark_unavailable(rule, "missing")
                        continue
                    log.warning("folder_replaced", folder=str(rule.path),
                                reason="another filesystem was mounted on it, or it was recreated")
                if self._activate(rule):
                    self.scan_folder(rule, str(rule.path), is_scan=True)

    def check_watches(self, force: bool = False) -> list[Path]:
        """Recursive inotify folders whose subfolders are not all watched (the watch limit) switch to polling
        (files/observers.py). Returns the switched."""
        with self._lock:
            return self.observers.check_watches(self.rules, force)

    def _unschedule(self, path: Path) -> None:
        self.identity.pop(path, None)
        self.observers.unschedule(path)

    def update_rules(self, rules: Iterable[FolderRule]) -> None:
        """Apply a reloaded config: stop watching removed folders, start on new or changed ones, scan those."""
        with self._lock:
            new = {rule.path: rule for rule in rules}
            old = {rule.path: rule for rule in self.rules}
            for path, rule in old.items():
                if new.get(path) != rule:
                    self._unschedule(path)
                    self.unavailable.pop(path, None)
                    if path not in new:
                        self.release(rule)
                    log.info("folder_unwatched", folder=str(path), reason="removed" if path not in new else "changed")
            self.rules = tuple(new.values())
            for path, rule in new.items():
                if old.get(path) != rule and self._activate(rule):
                    self.scan_folder(rule, str(path), is_scan=True)

    def folder_status(self) -> list[dict[str, Any]]:
        """Per folder: observer kind, whether its observer is alive, when it was last scanned, whether it is
        available (and if not, why and since when), why it is polled when inotify was wanted (the fields of
        daemon.snapshot.FolderStatus)."""
        result = []
        for rule in self.rules:
            gone = self.unavailable.get(rule.path)
            result.append({
                "path": str(rule.path), **self.observers.status(rule),
                "last_scan": self.last_scan.get(rule.path), "available": gone is None,
                "unavailable_reason": gone.reason if gone else None, "unavailable_since": gone.since if gone else None,
                "open_writers_seen": self.sees_writers(rule)})
        return result

    def degraded(self) -> list[str]:
        """One short line per folder that is not watched as it should be (for STATUS= lines and /healthz)."""
        lines = []
        for rule in self.rules:
            gone, polled = self.unavailable.get(rule.path), self.observers.polled_because(rule)
            if gone is not None:
                lines.append(f"folder {rule.path} {gone.reason}")
            elif polled is not None:
                lines.append(f"folder {rule.path} polled: {polled}")
        return lines

    def alive(self) -> bool:
        return self.observers.alive() and (self._rescanner is None or self._rescanner.is_alive())

    def restart_dead(self) -> bool:
        """Replace any observer thread that died, and rescan (its events are lost). True if one was restarted."""
        with self._lock:
            dead = self.observers.forget_dead()
            for kind in dead:
                for rule in self.rules:
                    if self.observers.uses(rule.path, kind):
                        self._unschedule(rule.path)
                        self._activate(rule)  # a fresh observer, started by Observers.schedule
        if dead:
            self.scan_all()
        return bool(dead)

    def close(self) -> None:
        self.observers.stop()
        if self._rescanner is not None:
            self._rescanner.join(timeout=5)
        for rule in self.rules:
            self.release(rule)


    def report_path(self, rule: FolderRule, path: str) -> None:
        kind, _ = classify(rule, path)
        if kind is None:
            return
        try:
            st = os.lstat(path)  # a symlink is never followed, and never reported
        except OSError:
            return
        if stat.S_ISREG(st.st_mode):
            self.on_found([Found(path, st, rule, kind)], False)

    def scan_folder(self, rule: FolderRule, folder: str, is_scan: bool = False) -> None:
        """Scan `folder` (the rule's folder or a subfolder of it) and report what qualifies."""
        if in_excluded_folder(rule, folder):
            return  # inside an excluded subfolder (a trash, a hidden sync folder): nothing there qualifies
        found = list(scan(rule, folder))
        if found or is_scan:
            self.on_found(found, is_scan)
        if is_scan:
            self.last_scan[rule.path] = time.time()

    def scan_all(self, full: bool = False) -> int:
        """Scan every watched folder and report everything found at once; returns the number of qualifying files.
        Folders not watched right now (missing, owned elsewhere) are left out: they are scanned when they come."""
        started = time.monotonic()
        found: list[Found] = []
        rules = self.active()
        for rule in rules:
            found.extend(scan(rule))
        self.on_found(found, True)
        now = time.time()
        for rule in rules:
            self.last_scan[rule.path] = now
        log.debug("folders_scanned", folders=len(rules), files=len(found),
                  seconds=round(time.monotonic() - started, 3))
        return len(found)

    def _rescan_loop(self) -> None:
        while not self.stop.wait(self.rescan_seconds):
            try:
                self.scan_all()
            except Exception:  # the safety net itself must not die
                log.exception("rescan_failed")
