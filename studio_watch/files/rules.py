"""Which files count: the one qualification engine, used by events, scans, `check` and `explain`.

A name qualifies under a folder rule when it is inside the folder (in a subfolder only if the rule is
recursive), no part of its path matches an exclude pattern (nor studio-watch's own hidden names), and it is a
browser link file (when `links` is on) or its name, case-folded, matches an include pattern. Scans judge
100,000 names with one precompiled expression per pattern list; `classify` says why, naming the pattern. `walk`
is the one folder walk, beneath scans and `explain --all`.
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from studio_watch.logs import get_logger
from studio_watch.config import FolderRule
from studio_watch.files.links import is_link_name

log = get_logger(__name__)

OWN_FILES = (".studio-watch-*",)  # probes and files taken aside: never recordings, whatever `exclude` says


@dataclass(frozen=True)
class Found:
    path: str
    stat: os.stat_result
    rule: FolderRule
    kind: str = "file"  # file | link (a browser link file: a URL import)


def _compile(patterns: tuple[str, ...], fold: bool) -> Callable[[str], Any] | None:
    """One regular expression for a tuple of glob patterns (folded to lower case for includes)."""
    if not patterns:
        return None
    return re.compile("|".join(fnmatch.translate(p.lower() if fold else p) for p in patterns)).match


class Matcher:
    """A folder rule's patterns, compiled once."""

    def __init__(self, rule: FolderRule) -> None:
        self.rule = rule
        self.excludes = (*rule.exclude, *OWN_FILES)
        self._exclude = _compile(self.excludes, False)
        self._include = _compile(rule.include, True)

    def excluded(self, name: str) -> bool:
        """Does a single path component match an exclude (or own-file) pattern?"""
        return self._exclude is not None and self._exclude(name) is not None

    def excluding_pattern(self, name: str) -> str | None:
        """The first exclude pattern `name` matches, if any."""
        return next((p for p in self.excludes if fnmatch.fnmatchcase(name, p)), None) if self.excluded(name) else None

    def kind(self, name: str) -> str | None:
        """"link", "file" or None for a file's own name (exclusion is `excluded`'s question)."""
        lower = name.lower()
        if self.rule.links and is_link_name(lower):
            return "link"
        return "file" if self._include is not None and self._include(lower) else None


@functools.lru_cache(maxsize=256)
def matcher(rule: FolderRule) -> Matcher:
    return Matcher(rule)


def own_file(name: str) -> bool:
    """Is `name` one of studio-watch's own files (its folder lock, probes, files taken aside)?"""
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in OWN_FILES)


def in_excluded_folder(rule: FolderRule, folder: str) -> bool:
    """Is `folder` (the rule's folder or one below it) inside an excluded subfolder (a trash, a sync folder)?"""
    path = Path(folder)
    parts = path.relative_to(rule.path).parts if path.is_relative_to(rule.path) else ()
    return any(matcher(rule).excluded(part) for part in parts)


def classify(rule: FolderRule, path: str) -> tuple[str | None, str]:
    """Whether `path` qualifies under `rule`: (kind, why). kind is "file", "link" or None (with the reason)."""
    try:
        relative = Path(path).relative_to(rule.path)
    except ValueError:
        return None, f"outside {rule.path}"
    parts = relative.parts
    if not parts:
        return None, "is the watched folder itself"
    if len(parts) > 1 and not rule.recursive:
        return None, f"in a subfolder of {rule.path}, which is not recursive"
    m = matcher(rule)
    for part in parts:
        pattern = m.excluding_pattern(part)
        if pattern is not None:
            return None, f"{part!r} matches exclude pattern {pattern!r}"
    name = parts[-1]
    kind = m.kind(name)
    if kind == "link":
        return "link", "browser link file (imported as a URL)"
    if kind == "file":
        lower = name.lower()
        pattern = next(p for p in rule.include if fnmatch.fnmatchcase(lower, p.lower()))
        return "file", f"matches include pattern {pattern!r}"
    return None, f"{name!r} matches no include pattern (not a media type this folder uploads)"


def rule_for(rules: Iterable[FolderRule], path: str) -> FolderRule | None:
    """The folder rule whose folder holds `path` (the innermost one)."""
    best: FolderRule | None = None
    best_root = ""
    for rule in rules:
        root = str(rule.path)  # absolute and normalised, as are the paths the watcher reports
        inside = path == root or path.startswith(root if root.endswith("/") else root + "/")
        if inside and (best is None or len(root) > len(best_root)):
            best, best_root = rule, root
    return best


def walk(rule: FolderRule, skip: Callable[[str], bool], folder: str | None = None, ordered: bool = False,
         quiet: bool = False) -> Iterator[os.DirEntry[str]]:
    """Every entry but a directory under `folder` (default: the rule's own), links never followed, subfolders
    only when the rule is recursive; a name `skip` says yes to is passed over (a folder so named never entered).
    `ordered`: each folder's entries by name. A folder that cannot be listed is left out, logged unless `quiet`."""
    stack = [str(rule.path) if folder is None else folder]
    while stack:
        current = stack.pop()
        try:
            entries = list(os.scandir(current))
        except OSError as exc:
            if not quiet:
                log.warning("scan_failed", folder=current, error=str(exc))
            continue
        for entry in sorted(entries, key=lambda e: e.name) if ordered else entries:
            if skip(entry.name):
                continue
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue  # vanished between listing and looking: the next event or scan will tell
            if not is_dir:
                yield entry
            elif rule.recursive:
                stack.append(entry.path)


def scan(rule: FolderRule, folder: str | None = None) -> Iterator[Found]:
    """Every qualifying file under `folder` (default: the rule's own), one stat each, skipping excluded
    subfolders; each Found carries `rule`."""
    m = matcher(rule)
    for entry in walk(rule, m.excluded, folder):
        kind = m.kind(entry.name)
        if kind is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):  # never a link, a FIFO, a device
                continue
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue  # vanished between listing and stat: the next event or scan will tell
        yield Found(entry.path, st, rule, kind)


def count_dirs(rule: FolderRule, limit: int) -> int:
    """Directories an inotify observer watches for this folder (stops counting past `limit`)."""
    if not rule.recursive:
        return 1
    count = 0
    for _, dirs, _ in os.walk(rule.path):
        dirs[:] = [d for d in dirs if not matcher(rule).excluded(d)]
        count += 1
        if count > limit:
            break
    return count
