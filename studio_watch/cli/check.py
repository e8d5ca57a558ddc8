"""`studio-watch check` (is everything in place?) and `studio-watch explain PATH` (what would happen to it?)."""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.explain import print_all
from studio_watch.cli.output import config_error, load_config
from studio_watch.daemon.engine import build_client
from studio_watch.daemon.checks import FAIL, OK, Check, explain, run_checks, verdict
from studio_watch.daemon.timetable_report import check_timetables, explain_date, parse_day
from studio_watch.errors import StudioWatchError
from studio_watch.daemon.statedb import queue_for
from studio_watch.queue import JobQueue
from studio_watch.studio.fetch import fetch_document
from studio_watch.studio.client import StudioClient


def cmd_check(args: argparse.Namespace) -> int:
    """One line per check, a verdict line; exit 1 if anything failed (2: bad config)."""
    config = load_config(args)
    logs.setup("error", config.log.format)
    results = [Check("config", OK, f"{config.source} is valid ({len(config.folders)} folder(s))")]
    client: StudioClient | None = None
    shared: JobQueue | None = None  # a cluster's OAuth pair lives in its database
    try:
        shared = queue_for(config) if config.shared_state and config.studio.oauth else None
        client = build_client(config, retry=dataclasses.replace(config.retry, request_tries=1), queue=shared)
        source = "OAuth token store" if config.studio.oauth else "access token"
        results.append(Check("token", OK, f"{source} loaded"))
    except StudioWatchError as exc:
        results.append(Check("token", FAIL, f"no token: {exc}"))
    try:
        for check in results:
            print(check.line(), flush=True)
        for check in run_checks(config, client, try_uploads=getattr(args, "try_upload", False)) + \
                _timetable_checks(config):
            results.append(check)
            print(check.line(), flush=True)
    finally:
        if client is not None:
            client.close()
        if shared is not None:
            shared.close()
    line, code = verdict(results)
    print(line)
    return code


def _timetable_checks(config: cfg.Config) -> list[Check]:
    if not any(rule.expect is not None for rule in config.folders):
        return []
    studio = config.studio
    return check_timetables(config, lambda url: fetch_document(url, studio.ca_bundle, studio.timeout_seconds, studio),
                            time.time())


def cmd_explain(args: argparse.Namespace) -> int:
    """Exit 0 when the path would be uploaded, 1 when not. `explain --all`: a line per file in every folder
    (exit 1 when a folder cannot be read)."""
    if bool(args.path) == bool(args.all):
        raise config_error("explain", "give a PATH or --all")
    config = load_config(args)
    if getattr(args, "date", None):
        return _explain_date(config, args)
    if args.all:
        return print_all(config)
    lines, code = explain(config, os.path.abspath(args.path))
    print("\n".join(logs.printable(line) for line in lines))  # a file name may carry an ANSI escape
    return code


def _explain_date(config: cfg.Config, args: argparse.Namespace) -> int:
    """`studio-watch explain --date DAY FOLDER`: what the folder's timetable expected that day, and what arrived."""
    try:
        parse_day(args.date)  # checked here (exit 2); "today" is resolved in the timetable's zone
    except ValueError:
        raise config_error("--date", f"expected YYYY-MM-DD, today or yesterday; got {args.date!r}") from None
    queue = queue_for(config)
    try:
        lines, code = explain_date(config, queue, os.path.abspath(args.path), args.date, time.time())
    finally:
        queue.close()
    print("\n".join(logs.printable(line) for line in lines))  # file names and reasons may carry escapes
    return code
