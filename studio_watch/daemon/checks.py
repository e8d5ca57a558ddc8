"""Operator tools: `studio-watch check` (is everything in place?) and `studio-watch explain PATH` (what would
happen to this file?).

`run_checks(config, client)` returns one `Check` per fact, so each can be tested on its own; `cli/check.py`
prints them as `ok`/`warn`/`FAIL` lines and a verdict. `explain` needs no network: it renders what the daemon
would send from the folder rule that matches a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import urlencode

from studio_watch import config as cfg, logs
from studio_watch.daemon.statedb import queue_for
from studio_watch.errors import AuthError, StudioError, StudioWatchError, TransientError
from studio_watch.studio.client import IMPORT_PATH, StudioClient
from studio_watch.files import sources
from studio_watch.files.links import parse_link_file
from studio_watch.studio.imports import validate_import
from studio_watch.files.mounts import MOUNTINFO, choose_observer, filesystem_type, is_network_fs
from studio_watch.files.rules import classify, count_dirs, rule_for
from studio_watch.files.writers import after_upload_quiet, unseen_message
from studio_watch.daemon.upload_rights import describe, targets, try_upload, upload_permission

OK, WARN, FAIL = "ok", "warn", "FAIL"
MAX_WATCHES = "/proc/sys/fs/inotify/max_user_watches"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # ok | warn | FAIL
    detail: str

    def line(self) -> str:
        return f"{self.verdict:<4} {self.name}: {self.detail}"


def _where(i: int, rule: cfg.FolderRule) -> str:
    return f"folders[{i}] {rule.path}"


# -- the API ------------------------------------------------------------------------------------------------------

def check_api(client: StudioClient) -> list[Check]:
    """GET /ping answers pong (reachability), and the token is accepted (ping is authenticated); which proxy,
    if any, the requests went through."""
    route = client.route()
    proxy = Check("proxy", FAIL if route.startswith("nowhere") else OK,
                  f"requests to {client.studio.url} go {route}")
    try:
        client.ping()
    except AuthError as exc:
        return [proxy, Check("api", OK, f"{client.studio.api_url} answers"), Check("token", FAIL, str(exc))]
    except TransientError as exc:
        return [proxy, Check("api", FAIL, f"no answer from {client.studio.api_url}: {exc}"),
                Check("token", WARN, "not checked: the API did not answer")]
    except StudioError as exc:
        return [proxy, Check("api", FAIL, f"{client.studio.api_url}: {exc}"),
                Check("token", WARN, "not checked: the API did not answer pong")]
    return [proxy, Check("api", OK, f"GET {client.studio.api_url}/ping answered pong"),
            Check("token", OK, "accepted by the API")]


def check_collections(config: cfg.Config, client: StudioClient) -> list[Check]:
    """Every folder's collection_id is one the token can see (all pages of GET /collections)."""
    wanted = {(i, r.collection_id) for i, r in enumerate(config.folders) if r.collection_id is not None}
    if not wanted:
        return []
    try:
        objects = {int(c["id"]): c for c in client.collections() if "id" in c}
        visible = {cid: str(c.get("name", "")) for cid, c in objects.items()}
    except StudioError as exc:
        return [Check("collections", FAIL, f"cannot list collections: {exc}")]
    results = []
    for i, cid in sorted(wanted):
        where = _where(i, config.folders[i])
        if cid in visible:
            allowed, field = upload_permission(objects[cid])
            if allowed is False:
                results.append(Check("collection", FAIL, f"{where}: collection {cid} ({visible[cid]}) is visible to "
                                     f"the token, but it may not upload into it ({field})"))
            elif allowed:
                results.append(Check("collection", OK, f"{where}: collection {cid} ({visible[cid]}), upload "
                                     f"permitted ({field})"))
            else:
                results.append(Check("collection", OK, f"{where}: collection {cid} ({visible[cid]}) is visible; "
                                     "whether the token may upload into it, Studio's API does not say "
                                     "(`check --try-upload` asks Studio)"))
        else:
            shown = ", ".join(str(c) for c in sorted(visible)[:20]) + (" ..." if len(visible) > 20 else "")
            results.append(Check("collection", FAIL, f"{where}: collection_id {cid} is not a collection the token "
                                 f"can see (visible: {shown or 'none'})"))
    return results


def check_users(config: cfg.Config, client: StudioClient) -> list[Check]:
    """Every folder's user_id exists (GET /users/{id}; looking users up may need an admin token)."""
    results = []
    for i, rule in enumerate(config.folders):
        if rule.user_id is None:
            continue
        where = _where(i, rule)
        try:
            user = client.user(rule.user_id)
        except StudioError as exc:
            results.append(Check("user", FAIL, f"{where}: cannot look up user {rule.user_id}: {exc}"))
            continue
        if user is None:
            results.append(Check("user", FAIL, f"{where}: user_id {rule.user_id} does not exist (404)"))
        else:
            name = user.get("full_name") or user.get("display_name") or ""
            results.append(Check("user", OK, f"{where}: user {rule.user_id} ({name})"))
    return results


# -- the machine ----------------------------------------------------------------------------------------------------

def _access(path: Path, write: bool) -> str | None:
    """None when `path` is a folder we may read (and write); else what is wrong."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is not a folder"
    if not os.access(path, os.R_OK | os.X_OK):
        return f"{path} is not readable"
    if write and not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def check_folders(config: cfg.Config) -> list[Check]:
    """Folders exist and are readable, writable where after_upload moves or deletes; move_to is writable."""
    if not config.folders:
        return [Check("folders", WARN, "no folders configured: only `upload` and `import-url` by hand")]
    results = []
    for i, rule in enumerate(config.folders):
        where = _where(i, rule)
        write = rule.after_upload in ("move", "delete")
        problem = _access(rule.path, write)
        need = "readable and writable" if write else "readable"
        results.append(Check("folder", FAIL, f"{where}: {problem} (after_upload: {rule.after_upload})") if problem
                       else Check("folder", OK, f"{where}: {need} (after_upload: {rule.after_upload})"))
        if rule.after_upload == "move" and rule.move_to is not None:
            results.append(_check_move_to(where, rule))
    return results


def _check_move_to(where: str, rule: cfg.FolderRule) -> Check:
    assert rule.move_to is not None
    problem = _access(rule.move_to, write=True)
    if problem:
        return Check("move_to", FAIL, f"{where}: move_to {problem}")
    if rule.path.exists() and rule.path.stat().st_dev != rule.move_to.stat().st_dev:
        return Check("move_to", WARN, f"{where}: move_to {rule.move_to} is on another filesystem: every move "
                     "copies the whole file")
    return Check("move_to", OK, f"{where}: move_to {rule.move_to} is writable")


def effective_observer(config: cfg.Config, rule: cfg.FolderRule, mountinfo: str = MOUNTINFO) -> str:
    """What the watcher will use for this folder (auto polls network filesystems)."""
    return choose_observer(config.observer, rule.path, mountinfo)


def check_inotify(config: cfg.Config, max_watches: str = MAX_WATCHES, mountinfo: str = MOUNTINFO) -> list[Check]:
    """The inotify watch limit covers every directory the inotify observers will watch."""
    rules = [r for r in config.folders if r.path.is_dir() and effective_observer(config, r, mountinfo) == "inotify"]
    if not rules:
        return []
    try:
        limit = int(Path(max_watches).read_text().strip())
    except (OSError, ValueError):
        return [Check("inotify", WARN, f"cannot read {max_watches} (not Linux?): the watch limit is unknown")]
    needed = sum(count_dirs(r, limit) for r in rules)
    advice = f"raise it: sysctl fs.inotify.max_user_watches={max(2 * needed, 65536)}, or set observer: polling"
    if needed > limit:
        return [Check("inotify", FAIL, f"{needed} directories to watch, but max_user_watches is {limit}; {advice}")]
    if needed > limit // 2:
        return [Check("inotify", WARN, f"{needed} directories to watch use over half of max_user_watches "
                      f"({limit}), which other programs share; {advice}")]
    return [Check("inotify", OK, f"{needed} directories to watch, max_user_watches is {limit}")]


def check_network_fs(config: cfg.Config, mountinfo: str = MOUNTINFO) -> list[Check]:
    """Folders on network filesystems: inotify misses changes made by other machines there."""
    results = []
    for i, rule in enumerate(config.folders):
        fs = filesystem_type(rule.path, mountinfo)
        if not is_network_fs(fs):
            continue
        where = _where(i, rule)
        if config.observer == "inotify":
            results.append(Check("network_fs", WARN, f"{where} is on {fs}, a network filesystem: inotify misses "
                                 "files written by other machines; set observer: polling (or auto)"))
        else:
            results.append(Check("network_fs", OK, f"{where} is on {fs}, a network filesystem: watched by polling "
                                 f"(observer: {config.observer})"))
    return results


def check_open_writers(config: cfg.Config, mountinfo: str = MOUNTINFO) -> list[Check]:
    """Folders watched by polling: a writer holding a file open cannot be seen there (files/writers.py)."""
    results = []
    for i, rule in enumerate(config.folders):
        if effective_observer(config, rule, mountinfo) != "polling":
            continue
        results.append(Check("open_writers", WARN, f"{_where(i, rule)}: {unseen_message(rule.settle_seconds)}; "
                             f"delete and move to another filesystem wait until a file has been unchanged for "
                             f"{after_upload_quiet(rule.settle_seconds):g} s"))
    return results


def check_state_db(config: cfg.Config) -> list[Check]:
    """The state database's folder (and the database, if it exists) is writable."""
    if config.shared_state:  # a cluster's PostgreSQL: reachable, schema known, node name free or this node's
        try:
            queue_for(config).close()
        except StudioWatchError as exc:
            return [Check("state_db", FAIL, str(exc))]
        return [Check("state_db", OK, f"{config.state_db_display} answers (node {config.node_name})")]
    db = Path(config.state_db)
    problem = _access(db.parent, write=True)
    if problem is None and db.exists() and not os.access(db, os.R_OK | os.W_OK):
        problem = f"{db} is not writable"
    if problem:
        return [Check("state_db", FAIL, f"{problem} (state_db: {db})")]
    return [Check("state_db", OK, f"{db} can be written")]


def check_try_upload(config: cfg.Config, client: StudioClient) -> list[Check]:
    """`--try-upload`: step 1 of an upload for every target (Studio refuses a target the token may not use)."""
    results = []
    for target, folders in sorted(targets(config).items(), key=str):
        ok, detail = try_upload(client, target)
        where = ", ".join(f"folders[{i}]" for i in folders)
        results.append(Check("upload", OK if ok else FAIL, f"{where}: {describe(target)}: {detail}"))
    return results


def run_checks(config: cfg.Config, client: StudioClient | None, *, max_watches: str = MAX_WATCHES,
               mountinfo: str = MOUNTINFO, try_uploads: bool = False) -> list[Check]:
    """Every check after the config and the token: API, targets, folders, inotify, network filesystems, state."""
    results: list[Check] = []
    if client is not None:
        api = check_api(client)
        results += api
        if all(c.verdict == OK for c in api):
            results += check_collections(config, client) + check_users(config, client)
            if try_uploads:
                results += check_try_upload(config, client)
    results += check_folders(config)
    results += check_inotify(config, max_watches, mountinfo)
    results += check_network_fs(config, mountinfo)
    results += check_open_writers(config, mountinfo)
    results += check_state_db(config)
    return results  # the timetables' checks: daemon/timetable_report.py (it builds on these), run by cli/check.py


def verdict(results: Iterable[Check]) -> tuple[str, int]:
    """The final line and the exit code: 1 if anything failed."""
    results = list(results)
    failed = sum(c.verdict == FAIL for c in results)
    warned = sum(c.verdict == WARN for c in results)
    note = f", {warned} warning(s)" if warned else ""
    if failed:
        return f"FAIL {failed} problem(s){note}", 1
    return f"ok   all checks passed{note}", 0


# -- explain ---------------------------------------------------------------------------------------------------------

def _find_rule(config: cfg.Config, path: str) -> tuple[int, cfg.FolderRule, str] | None:
    """The folder rule for `path`, trying the path as given and with symlinks resolved."""
    for candidate, rules in ((path, config.folders),
                             (os.path.realpath(path),
                              [dataclasses.replace(r, path=Path(os.path.realpath(r.path))) for r in config.folders])):
        rule = rule_for(rules, candidate)
        if rule is not None:
            return list(rules).index(rule), rule, candidate
    return None


def _upload_lines(api: str, rule: cfg.FolderRule, size: int, title: str, description: str) -> list[str]:
    params = rule.target.params()
    query = f"?{urlencode(params)}" if params else ""
    complete = urlencode({"title": title, "description": description, "auto_caption": str(rule.auto_caption).lower()})
    return ["would send:",
            f"  1. POST {api}/media/uploads{query}",
            f"  2. PUT <upload URL from step 1> ({size} bytes, Content-Length, no Authorization header)",
            f"  3. POST {api}/media/uploads/{{media_id}}/complete?{complete}"]


def _link_lines(api: str, rule: cfg.FolderRule, path: str, title: str, description: str) -> list[str]:
    """Mirrors StudioClient.import_url: query parameters into a collection, a JSON body otherwise."""
    url = parse_link_file(path)
    is_external, title_sent = validate_import(url, rule.collection_id, rule.user_id, title, None)
    fields: dict[str, Any] = {"url": url, "description": description, "auto_caption": rule.auto_caption,
                              "is_external": is_external}
    if title_sent:
        fields["title"] = title_sent
    if rule.user_id is not None:
        fields["user_id"] = rule.user_id
    if rule.collection_id is not None:
        query = urlencode({k: str(v).lower() if isinstance(v, bool) else v for k, v in fields.items()})
        request = f"POST {api}/collections/{rule.collection_id}/media?{query}"
    else:
        request = f"POST {api}{IMPORT_PATH} with JSON body {json.dumps(fields)}"
    kind = "an external YouTube/Vimeo link" if is_external else "media imported from the URL"
    return [f"link file: {url} ({kind})", "would send:", "  POST once; if the answer is lost, search for the "
            "title before sending again", f"  {request}"]


def explain(config: cfg.Config, path: str) -> tuple[list[str], int]:
    """What the daemon would do with `path`: the lines to print and the exit code (0 uploaded, 1 not)."""
    found = _find_rule(config, path)
    if found is None:
        folders = ", ".join(str(r.path) for r in config.folders) or "none configured"
        return [f"not uploaded: {path} is outside every watched folder (folders: {folders})"], 1
    index, rule, matched = found
    if os.path.isdir(matched):
        return [f"not uploaded: {path} is a folder (files inside it are judged one by one)"], 1
    kind, why = classify(rule, matched)
    if kind is None:
        return [f"folder: folders[{index}] {rule.path}", f"not uploaded: {why}"], 1
    refused = _not_a_plain_file(matched, rule)
    if refused is not None:
        return [f"folder: folders[{index}] {rule.path}", refused], 1
    try:
        st = os.lstat(matched)
        size, mtime, note = st.st_size, st.st_mtime, []
    except OSError:
        size, mtime = 0, time.time()
        note = ["(the file does not exist yet: size 0 and the current time stand in for the templates)"]
    title = logs.title_text(cfg.render(rule.title, Path(matched), rule.path, size=size, mtime=mtime))  # as sent
    description = cfg.render(rule.description, Path(matched), rule.path, size=size, mtime=mtime)
    target = rule.target.explain()
    lines = [f"folder: folders[{index}] {rule.path} ({'recursive' if rule.recursive else 'not recursive'})",
             f"matches: {why}", *note, f"target: {target}", f"title: {title}", f"description: {description!r}"]
    api = config.studio.api_url
    if kind == "link":
        try:
            lines += _link_lines(api, rule, matched, title, description)
        except StudioWatchError as exc:
            return lines + [f"not uploaded: {exc}"], 1
    else:
        lines += _upload_lines(api, rule, size, title, description)
        if size > cfg.MAX_UPLOAD_BYTES:
            lines.append(f"note: {size} bytes is over Studio's 10 GB limit: the upload would fail")
    lines += _policy_lines(rule, kind, effective_observer(config, rule) != "polling")
    return lines, 0


def _not_a_plain_file(path: str, rule: cfg.FolderRule) -> str | None:
    """Why a symlink, FIFO, device or a file reached through a linked subfolder is never uploaded."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    why = sources.not_a_plain_file(path, st, str(rule.path))
    if why is not None and stat.S_ISLNK(st.st_mode):
        with contextlib.suppress(OSError):
            why += f"; it points to {os.readlink(path)}, which is never read through this name"
    return why


def _policy_lines(rule: cfg.FolderRule, kind: str, sees_writers: bool = True) -> list[str]:
    captions = "requested (auto_caption=true; if the account has it disabled (501), completed without)" \
        if rule.auto_caption else "not requested (auto_caption=false)"
    after = {"keep": "keep the file where it is", "delete": "delete the file",
             "move": f"move the file to {rule.move_to}"}[rule.after_upload]
    when = "once Studio has processed it" if rule.after_upload_when == "processed" else "once completed"
    duplicates = "skip (the same bytes seen again are not uploaded again)" if rule.duplicates == "skip" \
        else "upload (the same bytes seen again are uploaded again)"
    lines = [f"captions: {captions}", f"after upload: {after}" + (f" ({when})" if rule.after_upload != "keep" else "")]
    if kind == "file":
        lines.append(f"duplicates: {duplicates}")
    if sees_writers:
        lines.append(f"settle: waits until size and mtime are unchanged for {rule.settle_seconds:g}s "
                     "and no writer holds the file open")
    else:
        lines.append(f"settle: waits until size and mtime are unchanged for {rule.settle_seconds:g}s; "
                     f"{unseen_message(rule.settle_seconds)}")
        if rule.after_upload != "keep":
            lines.append(f"note: {rule.after_upload} waits until the file has been unchanged for "
                         f"{after_upload_quiet(rule.settle_seconds):g} s (a move within one filesystem does not)")
    return lines
