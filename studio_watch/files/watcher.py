"""Finding files: watchdog observers per folder, the startup scan and the periodic rescan.

Which names qualify is files/rules.py's decision; the watcher only reports qualifying paths (with one stat
each) to a callable, and deciding what a file means for the queue is the daemon's business. Events can be lost
(inotify overflow, network filesystems), so a periodic rescan is the safety net and a startup scan finds what
arrived while the daemon was down.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEvent, FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from studio_watch.logs import get_logger
from studio_watch.config import FolderRule
from studio_watch.files import inotify_limits
from studio_watch.files.writers import OpenWriters, unseen_message
from studio_watch.files.mounts import MOUNTINFO, choose_observer, filesystem_type, is_network_fs, network_mounts_under
from studio_watch.files.rules import Found, classify, count_dirs, in_excluded_folder, scan

log = get_logger(__name__)

PROBE_SECONDS = 3.0  # how long the startup self-test waits for inotify to report its probe file
# What the kernel is asked to report: a file appearing, being renamed in, written, closed after writing, or
# deleted. Writes only mark the file as being written (files/writers.py), without a stat; never opens or reads:
# our own reads of each upload would otherwise flood the observer with events.
EVENTS = [FileCreatedEvent, FileMovedEvent, FileClosedEvent, FileModifiedEvent, FileDeletedEvent, DirCreatedEvent,
          DirMovedEvent]


class _Handler(FileSystemEventHandler):
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
        probe = self.watcher.probes.get(path)
        if probe is not None:
            probe.set()
            return
        if event.is_directory:
            if kind in ("created", "moved") and self.rule.recursive:
                self.watcher.dirs_appeared.add(self.rule.path)  # its watches are counted again
                self.watcher.scan_folder(self.rule, path)  # files moved in with a directory make no events
            return
        self.watcher.report_path(self.rule, path)


@dataclass
class Unavailable:
    """A folder not watched right now, why, and since when (wall clock, for humans and alerts)."""

    reason: str
    since: float


class Watcher:
    """Observers for every folder, the startup scan and the periodic rescan.

    A folder that is missing (a late or lost mount), not a directory any more, or owned by another daemon
    (`claim` says so) is not watched: it is reported in `unavailable`, and `check_folders`, called about once a
    second, picks it up (watch + scan) as soon as it is there, and notices one that went away or was mounted
    over (its st_dev/st_ino changed)."""

    def __init__(self, rules: Iterable[FolderRule], observer: str, rescan_seconds: float,
                 on_found: Callable[[list[Found], bool], None], stop: threading.Event,
                 claim: Callable[[FolderRule], str | None] | None = None,
                 release: Callable[[FolderRule], None] | None = None, mountinfo: str = MOUNTINFO) -> None:
        self.rules = tuple(rules)
        self.observer_setting = observer
        self.rescan_seconds = rescan_seconds
        self.on_found = on_found
        self.stop = stop
        self.claim = claim or (lambda rule: None)
        self.release = release or (lambda rule: None)
        self.mountinfo = mountinfo
        self.observers: dict[str, BaseObserver] = {}
        self.kinds: dict[Path, str] = {}
        self.watches: dict[Path, Any] = {}
        self.extra: dict[Path, list[tuple[Path, Any]]] = {}  # network mounts inside a recursive folder: polled
        self.identity: dict[Path, tuple[int, int]] = {}  # st_dev, st_ino of each watched folder when scheduled
        self.unavailable: dict[Path, Unavailable] = {}
        self.polling_reason: dict[Path, str] = {}  # folders polled instead of inotify, and why
        self.warnings: dict[Path, str] = {}  # what the operator should know about a folder's watch
        self.dirs_appeared: set[Path] = set()
        self.mount_points: set[Path] = set()  # folders seen as mount points: unmounted, they are unavailable
        self.probes: dict[str, threading.Event] = {}
        self.forced_polling: set[Path] = set()
        self.probe_seconds = PROBE_SECONDS
        self.last_scan: dict[Path, float] = {}
        self.writers = OpenWriters()
        self._unseen_said: set[Path] = set()
        self._lock = threading.RLock()
        self._rescanner: threading.Thread | None = None

    def local_clock(self, rule: FolderRule) -> bool:
        """Do file times in this folder come from this machine's clock? Where the kernel reports changes
        (inotify) the folder is local; on a polled (network) filesystem they come from the server's clock."""
        return self.kinds.get(rule.path) == "inotify"

    def sees_writers(self, rule: FolderRule) -> bool:
        """Can a writer that holds a file of this folder open be seen? Only where this kernel reports the
        folder's writes (inotify); on a polled folder only the settle time speaks."""
        return self.kinds.get(rule.path) == "inotify"

    def writing(self, path: str) -> bool:
        """Is `path` open for writing, as far as can be seen (modified since its last close-write)?"""
        return self.writers.writing(path)

    def observer_kind(self, rule: FolderRule) -> str:
        if self.observer_setting == "auto" and rule.path in self.forced_polling:  # its probe file made no event
            return "polling"
        return choose_observer(self.observer_setting, rule.path, self.mountinfo)

    def active(self) -> list[FolderRule]:
        return [rule for rule in self.rules if rule.path in self.kinds]

    def start(self) -> None:
        """Start observing, then scan every folder once (files that arrived while we were down)."""
        for rule in self.rules:
            self._activate(rule)
        if self.observer_setting == "auto":
            self._self_test([rule for rule in self.rules if self.kinds.get(rule.path) == "inotify"])
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
        self._schedule(rule)
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
                if rule.path in self.kinds:
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

    # -- inotify limits ----------------------------------------------------------------------------------------

    def check_watches(self, force: bool = False) -> list[Path]:
        """Recursive inotify folders whose every subfolder is not watched (the watch limit was reached) switch to
        polling. Runs at start, when directories appeared (`force` or `dirs_appeared`). Returns the switched."""
        with self._lock:
            todo = [r for r in self.rules if self.kinds.get(r.path) == "inotify" and r.recursive
                    and (force or r.path in self.dirs_appeared)]
            self.dirs_appeared.clear()
            if not todo:
                return []
            watched = inotify_limits.held_watches()
            if watched is None:
                return []
            switched = []
            for rule in todo:
                missing, young = inotify_limits.unwatched_dirs(rule.path, watched)
                if young and not missing:
                    self.dirs_appeared.add(rule.path)  # too soon to tell: again at the next look
                if missing:
                    limit = inotify_limits.watch_limit()
                    self._fall_back(rule, f"inotify watch limit reached (fs.inotify.max_user_watches={limit}): "
                                          f"{len(missing)}{'+' if len(missing) >= 100 else ''} subfolder(s) not "
                                          f"watched, e.g. {missing[0]}")
                    switched.append(rule.path)
            return switched

    def _fall_back(self, rule: FolderRule, reason: str) -> None:
        """Poll this folder instead of inotify, saying why (loudly: the operator should raise the limit)."""
        log.error("inotify_limit_reached", folder=str(rule.path), switched_to="polling", reason=reason,
                  advice="raise it: sysctl fs.inotify.max_user_watches=524288 (and max_user_instances), "
                         "or set observer: polling")
        self.polling_reason[rule.path] = reason
        self._switch_to_polling(rule)

    def _self_test(self, rules: list[FolderRule]) -> None:
        """Write a hidden probe file into each inotify folder; where no event arrives, switch to polling.

        inotify sees nothing of writes made by another machine or VM (network shares, some container
        volumes) even when the filesystem type looks local; this is the proof that events arrive.
        """
        written: dict[Path, str] = {}
        for rule in rules:
            try:
                probe = _write_probe(rule.path, self.probes)
                written[rule.path] = probe
            except OSError as exc:  # a read-only folder (after_upload: keep) cannot be probed
                log.info("observer_probe_skipped", folder=str(rule.path), error=exc.strerror)
        deadline = time.monotonic() + self.probe_seconds
        for rule in rules:
            probe = written.get(rule.path)
            if probe is None:
                continue
            seen = self.probes[probe].wait(max(0.0, deadline - time.monotonic()))
            try:
                os.unlink(probe)
            except OSError:
                pass
            if not seen:
                log.warning("observer_probe_failed", folder=str(rule.path), switched_to="polling",
                            reason=f"inotify reported no event for a probe file within {self.probe_seconds} s")
                self.polling_reason[rule.path] = "inotify reported no event for a probe file"
                self._switch_to_polling(rule)
        for probe in written.values():
            self.probes.pop(probe, None)

    def _switch_to_polling(self, rule: FolderRule) -> None:
        self._unschedule(rule.path)
        self.forced_polling.add(rule.path)
        self._schedule(rule)

    def _observer(self, kind: str) -> BaseObserver:
        """The observer of this kind, started (so that scheduling a watch raises its errors right there)."""
        observer = self.observers.get(kind)
        if observer is None:
            observer = self.observers[kind] = PollingObserver(timeout=1.0) if kind == "polling" else Observer()
            observer.daemon = True
        if not observer.is_alive():
            observer.start()
        return observer

    def _schedule(self, rule: FolderRule) -> None:
        kind = self.observer_kind(rule)
        fs = filesystem_type(rule.path, self.mountinfo)
        if kind == "inotify" and is_network_fs(fs):
            self.warnings[rule.path] = (f"observer: inotify on {fs}, a network filesystem: files written by other "
                                        "machines wait for the rescan (set observer: auto or polling)")
            log.warning("inotify_on_network_fs", folder=str(rule.path), filesystem=fs,
                        message=self.warnings[rule.path])
        if kind == "inotify" and rule.path not in self.polling_reason:
            reason = self._over_limit(rule)
            if reason is not None:
                self.polling_reason[rule.path] = reason
                log.error("inotify_limit_reached", folder=str(rule.path), switched_to="polling", reason=reason,
                          advice="raise fs.inotify.max_user_watches, or set observer: polling")
                self.forced_polling.add(rule.path)
                kind = "polling"
        try:
            watch = self._observer(kind).schedule(_Handler(self, rule), str(rule.path), recursive=rule.recursive,
                                                  event_filter=EVENTS)
        except OSError as exc:
            if kind != "inotify":
                raise
            # ENOSPC (watch limit) or EMFILE (instance limit), or the folder went away just now
            self.polling_reason[rule.path] = f"inotify refused: {exc.strerror or exc}"
            log.error("inotify_limit_reached", folder=str(rule.path), switched_to="polling", error=str(exc),
                      advice="raise fs.inotify.max_user_watches / max_user_instances, or set observer: polling")
            self.forced_polling.add(rule.path)
            kind = "polling"
            watch = self._observer(kind).schedule(_Handler(self, rule), str(rule.path), recursive=rule.recursive,
                                                  event_filter=EVENTS)
        self.watches[rule.path] = watch
        self.kinds[rule.path] = kind
        if kind == "inotify" and rule.recursive:
            self._schedule_network_mounts(rule)
        log.info("folder_watched", folder=str(rule.path), observer=kind, recursive=rule.recursive,
                 collection_id=rule.collection_id, user_id=rule.user_id, polled_mounts=[
                     str(p) for p, _ in self.extra.get(rule.path, [])] or None)
        if kind != "inotify" and rule.path not in self._unseen_said:
            self._unseen_said.add(rule.path)  # once per folder, not at every restart of its observer
            log.warning("open_writers_unseen", folder=str(rule.path), settle_seconds=rule.settle_seconds,
                        message=unseen_message(rule.settle_seconds))

    def _over_limit(self, rule: FolderRule) -> str | None:
        """Why this folder cannot have inotify (it needs more watches than are left), or None."""
        limit = inotify_limits.watch_limit()
        if limit is None or not rule.recursive:
            return None
        held = inotify_limits.held_watches()
        needed = count_dirs(rule, limit)
        if len(held or ()) + needed > limit:
            return (f"needs {needed} inotify watches, {len(held or ())} already held, "
                    f"fs.inotify.max_user_watches is {limit}")
        return None

    def _schedule_network_mounts(self, rule: FolderRule) -> None:
        """Network filesystems mounted inside a recursive inotify folder are polled besides (inotify there sees
        only this machine's writes); the inotify watch still covers the rest of the tree."""
        for mount, fs in network_mounts_under(rule.path, self.mountinfo):
            watch = self._observer("polling").schedule(_Handler(self, rule), str(mount), recursive=True,
                                                       event_filter=EVENTS)
            self.extra.setdefault(rule.path, []).append((mount, watch))
            log.info("network_mount_polled", folder=str(rule.path), mount=str(mount), filesystem=fs)

    def _unschedule(self, path: Path) -> None:
        kind, watch = self.kinds.pop(path, None), self.watches.pop(path, None)
        self.identity.pop(path, None)
        extra = self.extra.pop(path, [])
        for observer_kind, handle in [(kind, watch)] + [("polling", w) for _, w in extra]:
            if observer_kind is not None and handle is not None and observer_kind in self.observers:
                with contextlib.suppress(KeyError):  # already gone with its observer
                    self.observers[observer_kind].unschedule(handle)

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
            kind = self.kinds.get(rule.path)
            gone = self.unavailable.get(rule.path)
            result.append({
                "path": str(rule.path), "observer": kind,
                "alive": bool(kind in self.observers and self.observers[kind].is_alive()),
                "last_scan": self.last_scan.get(rule.path), "available": gone is None,
                "unavailable_reason": gone.reason if gone else None, "unavailable_since": gone.since if gone else None,
                "polling_reason": self.polling_reason.get(rule.path) if kind == "polling" else None,
                "polled_mounts": [str(p) for p, _ in self.extra.get(rule.path, [])],
                "warning": self.warnings.get(rule.path), "open_writers_seen": self.sees_writers(rule)})
        return result

    def degraded(self) -> list[str]:
        """One short line per folder that is not watched as it should be (for STATUS= lines and /healthz)."""
        lines = []
        for rule in self.rules:
            gone = self.unavailable.get(rule.path)
            if gone is not None:
                lines.append(f"folder {rule.path} {gone.reason}")
            elif self.kinds.get(rule.path) == "polling" and rule.path in self.polling_reason:
                lines.append(f"folder {rule.path} polled: {self.polling_reason[rule.path]}")
        return lines

    def alive(self) -> bool:
        return all(o.is_alive() for o in self.observers.values()) and (
            self._rescanner is None or self._rescanner.is_alive())

    def restart_dead(self) -> bool:
        """Replace any observer thread that died, and rescan (its events are lost). True if one was restarted."""
        with self._lock:
            dead = [kind for kind, o in self.observers.items() if not o.is_alive()]
            for kind in dead:
                log.error("observer_died", observer=kind)
                del self.observers[kind]
                for rule in self.rules:
                    if self.kinds.get(rule.path) == kind or (kind == "polling" and rule.path in self.extra):
                        self._unschedule(rule.path)
                        self._activate(rule)  # a fresh observer, started by _schedule
        if dead:
            self.scan_all()
        return bool(dead)

    def close(self) -> None:
        # watchdog's emitter threads may log a spurious error while they are being stopped: not ours to show.
        quiet = logging.getLogger("watchdog")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            for observer in self.observers.values():
                observer.stop()
            for observer in self.observers.values():
                if observer.is_alive():
                    observer.join(timeout=5)
        finally:
            quiet.setLevel(level)
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


def _write_probe(folder: Path, probes: dict[str, threading.Event]) -> str:
    """A probe file under a name nobody can predict (mkstemp: O_CREAT|O_EXCL|O_NOFOLLOW, 0600), written and
    closed (the close-write is the event waited for); removed again if anything fails on the way."""
    fd, probe = tempfile.mkstemp(prefix=".studio-watch-probe-", dir=folder)
    probes[probe] = threading.Event()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"probe")
    except BaseException:
        probes.pop(probe, None)
        with contextlib.suppress(OSError):
            os.unlink(probe)
        raise
    return probe
