"""The watchdog observers behind the watched folders: which kind each folder gets, and when it falls back to polling.

A folder is watched by inotify or by polling as `observer:` and its filesystem say (files/mounts.py). inotify
has to prove itself: a probe file written at start must make an event, and a folder that needs more watches than
are left (or whose new subfolders went unwatched at the limit) is polled instead, saying why. Network
filesystems mounted inside a recursive inotify folder are polled besides. What an event means is the watcher's
business (files/watcher.py hands in each folder's event handler); whether a folder is there is too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from watchdog.events import (DirCreatedEvent, DirMovedEvent, FileClosedEvent, FileCreatedEvent, FileDeletedEvent,
                             FileModifiedEvent, FileMovedEvent, FileSystemEventHandler)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from studio_watch.logs import get_logger
from studio_watch.config import FolderRule
from studio_watch.files import inotify_limits
from studio_watch.files.writers import unseen_message
from studio_watch.files.mounts import choose_observer, filesystem_type, is_network_fs, network_mounts_under
from studio_watch.files.rules import count_dirs

log = get_logger(__name__)

PROBE_SECONDS = 3.0  # how long the startup self-test waits for inotify to report its probe file
# What the kernel is asked to report: a file appearing, being renamed in, written, closed after writing, or
# deleted. Writes only mark the file as being written (files/writers.py), without a stat; never opens or reads:
# our own reads of each upload would otherwise flood the observer with events.
EVENTS = [FileCreatedEvent, FileMovedEvent, FileClosedEvent, FileModifiedEvent, FileDeletedEvent, DirCreatedEvent,
          DirMovedEvent]


class Observers:
    """The observer threads (one per kind, started when first needed) and, per folder, its kind, its watch, and
    why it is polled where inotify was wanted. Not thread-safe by itself: the watcher holds its lock around it."""

    def __init__(self, setting: str, mountinfo: str, handler: Callable[[FolderRule], FileSystemEventHandler]) -> None:
        self.setting = setting
        self.mountinfo = mountinfo
        self.handler = handler
        self.threads: dict[str, BaseObserver] = {}
        self.kinds: dict[Path, str] = {}
        self.watches: dict[Path, Any] = {}
        self.extra: dict[Path, list[tuple[Path, Any]]] = {}  # network mounts inside a recursive folder: polled
        self.polling_reason: dict[Path, str] = {}  # folders polled instead of inotify, and why
        self.warnings: dict[Path, str] = {}  # what the operator should know about a folder's watch
        self.dirs_appeared: set[Path] = set()
        self.probes: dict[str, threading.Event] = {}
        self.forced_polling: set[Path] = set()
        self.probe_seconds = PROBE_SECONDS
        self._unseen_said: set[Path] = set()

    def kind_for(self, rule: FolderRule) -> str:
        if self.setting == "auto" and rule.path in self.forced_polling:  # its probe file made no event
            return "polling"
        return choose_observer(self.setting, rule.path, self.mountinfo)

    def inotify(self, path: Path) -> bool:
        """Does the kernel report this folder's changes (inotify), rather than a poll finding them?"""
        return self.kinds.get(path) == "inotify"

    # -- scheduling ---------------------------------------------------------------------------------------------

    def schedule(self, rule: FolderRule) -> None:
        kind = self.kind_for(rule)
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
            watch = self._observer(kind).schedule(self.handler(rule), str(rule.path), recursive=rule.recursive,
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
            watch = self._observer(kind).schedule(self.handler(rule), str(rule.path), recursive=rule.recursive,
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

    def _observer(self, kind: str) -> BaseObserver:
        """The observer of this kind, started (so that scheduling a watch raises its errors right there)."""
        observer = self.threads.get(kind)
        if observer is None:
            observer = self.threads[kind] = PollingObserver(timeout=1.0) if kind == "polling" else Observer()
            observer.daemon = True
        if not observer.is_alive():
            observer.start()
        return observer

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
            watch = self._observer("polling").schedule(self.handler(rule), str(mount), recursive=True,
                                                       event_filter=EVENTS)
            self.extra.setdefault(rule.path, []).append((mount, watch))
            log.info("network_mount_polled", folder=str(rule.path), mount=str(mount), filesystem=fs)

    def unschedule(self, path: Path) -> None:
        kind, watch = self.kinds.pop(path, None), self.watches.pop(path, None)
        extra = self.extra.pop(path, [])
        for observer_kind, handle in [(kind, watch)] + [("polling", w) for _, w in extra]:
            if observer_kind is not None and handle is not None and observer_kind in self.threads:
                with contextlib.suppress(KeyError):  # already gone with its observer
                    self.threads[observer_kind].unschedule(handle)

    def _switch_to_polling(self, rule: FolderRule) -> None:
        self.unschedule(rule.path)
        self.forced_polling.add(rule.path)
        self.schedule(rule)

    # -- proving inotify, and its limits ---------------------------------------------------------------------------

    def self_test(self, rules: list[FolderRule]) -> None:
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

    def check_watches(self, rules: tuple[FolderRule, ...], force: bool = False) -> list[Path]:
        """Recursive inotify folders whose every subfolder is not watched (the watch limit was reached) switch to
        polling. Runs at start, when directories appeared (`force` or `dirs_appeared`). Returns the switched."""
        todo = [r for r in rules if self.inotify(r.path) and r.recursive and (force or r.path in self.dirs_appeared)]
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

    # -- health ------------------------------------------------------------------------------------------------

    def status(self, rule: FolderRule) -> dict[str, Any]:
        """The folder's watch, as daemon.snapshot.FolderStatus shows it: its observer kind, whether that is alive,
        why it is polled where inotify was wanted, the network mounts polled inside it, a warning."""
        kind = self.kinds.get(rule.path)
        return {"observer": kind, "alive": bool(kind in self.threads and self.threads[kind].is_alive()),
                "polling_reason": self.polling_reason.get(rule.path) if kind == "polling" else None,
                "polled_mounts": [str(p) for p, _ in self.extra.get(rule.path, [])],
                "warning": self.warnings.get(rule.path)}

    def polled_because(self, rule: FolderRule) -> str | None:
        """Why this folder is polled although inotify was wanted, or None."""
        if self.kinds.get(rule.path) == "polling":
            return self.polling_reason.get(rule.path)
        return None

    def alive(self) -> bool:
        return all(o.is_alive() for o in self.threads.values())

    def forget_dead(self) -> list[str]:
        """The kinds whose observer thread died, forgotten (the next `schedule` of that kind starts a fresh one)."""
        dead = [kind for kind, o in self.threads.items() if not o.is_alive()]
        for kind in dead:
            log.error("observer_died", observer=kind)
            del self.threads[kind]
        return dead

    def uses(self, path: Path, kind: str) -> bool:
        """Is the folder at `path` watched (in part) by the observer of this kind?"""
        return self.kinds.get(path) == kind or (kind == "polling" and path in self.extra)

    def stop(self) -> None:
        # watchdog's emitter threads may log a spurious error while they are being stopped: not ours to show.
        quiet = logging.getLogger("watchdog")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            for observer in self.threads.values():
                observer.stop()
            for observer in self.threads.values():
                if observer.is_alive():
                    observer.join(timeout=5)
        finally:
            quiet.setLevel(level)


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
