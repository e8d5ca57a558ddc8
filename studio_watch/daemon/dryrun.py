"""`explain --all`: every file in every watched folder, and what the daemon would do with it now.

Read only: the folders are listed (never a file opened), and the queue is read only if its database exists
(a dry run must not create one). The verdict for a file the queue knows comes from its newest job, as a
rescan would decide: a completed, failed or skipped file with the same identity is not taken up again.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path

from studio_watch import config as cfg
from studio_watch.files import sources
from studio_watch.files.rules import classify, own_file, rule_for, walk
from studio_watch.daemon.statedb import queue_for
from studio_watch.queue import show_path

VERDICTS = ("upload", "queued", "done", "failed", "ignored")


@dataclass(frozen=True)
class Verdict:
    verdict: str  # upload | queued | done | failed | ignored
    path: str
    folder: str
    why: str
    target: str | None = None
    title: str | None = None


def _target(rule: cfg.FolderRule) -> str:
    if rule.collection_id is not None:
        return f"collection {rule.collection_id}" + (f" (for user {rule.user_id})" if rule.user_id else "")
    if rule.user_id is not None:
        return f"user {rule.user_id}'s My Uploads"
    return "My Uploads"


def explain_all(config: cfg.Config) -> tuple[list[Verdict], list[str]]:
    """(a verdict per file, the folders that could not be read)."""
    found: list[tuple[cfg.FolderRule, str, os.stat_result]] = []
    unreadable: list[str] = []
    for rule in config.folders:
        if not os.access(rule.path, os.R_OK | os.X_OK) or not rule.path.is_dir():
            unreadable.append(str(rule.path))
            continue
        # Every entry, links and special files too (they are judged), but not the daemon's own files (its folder
        # lock, probes, files taken aside), which are no one's upload.
        for entry in walk(rule, own_file, ordered=True, quiet=True):
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone since it was listed
            if rule_for(config.folders, entry.path) is rule:  # a nested folder's own rule decides for it
                found.append((rule, entry.path, st))
    known: dict[bytes, tuple[str, tuple[int | None, int | None, int | None]]] = {}
    if found and (config.shared_state or Path(config.state_db).exists()):  # a dry run never creates a SQLite file
        queue = queue_for(config)
        try:
            known = queue.latest_by_path([path for _, path, _ in found])  # the files present, not every job ever
        finally:
            queue.close()
    verdicts = [_judge(rule, path, st, known.get(os.fsencode(path))) for rule, path, st in found]
    return verdicts, unreadable


def _judge(rule: cfg.FolderRule, path: str, st: os.stat_result,
           known: tuple[str, tuple[int | None, int | None, int | None]] | None) -> Verdict:
    shown, folder = show_path(path), str(rule.path)
    if not stat_mod.S_ISREG(st.st_mode):
        what = "a symbolic link (never followed)" if stat_mod.S_ISLNK(st.st_mode) else "not a regular file"
        return Verdict("ignored", shown, folder, what)
    kind, why = classify(rule, path)
    if kind is None:
        return Verdict("ignored", shown, folder, why)
    if known is not None:
        state, identity = known
        same = identity == sources.identity_of(st)
        if state in ("settling", "ready", "url_issued", "uploaded"):
            return Verdict("queued", shown, folder, f"in the queue ({state.replace('_', ' ')})", _target(rule))
        if same and state == "completed":
            return Verdict("done", shown, folder, "already uploaded; not sent again", _target(rule))
        if same and state == "failed":
            return Verdict("failed", shown, folder, "failed; `studio-watch retry` would send it again",
                           _target(rule))
        if same and state == "skipped":
            return Verdict("ignored", shown, folder, "skipped before (duplicate content or empty)")
    if st.st_size == 0:
        return Verdict("ignored", shown, folder, "empty: skipped once it settles")
    title = cfg.render(rule.title, Path(path), rule.path, st.st_size, st.st_mtime)
    note = "a link file: imported as a URL" if kind == "link" else why
    if kind == "file" and st.st_size > cfg.MAX_UPLOAD_BYTES:
        return Verdict("failed", shown, folder, "over Studio's 10 GB limit: would fail", _target(rule), title)
    return Verdict("upload", shown, folder, note, _target(rule), title)
