"""Managing the queue over months: `jobs` (newest first, filtered), `cancel`, `forget` and `prune`."""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from datetime import datetime
from typing import Callable

from studio_watch import logs
from studio_watch.cli.output import (EXIT_FAILURE, EXIT_OK, config_error, human_age, human_bytes, load_config,
                                   print_json_stream, resolve_cli_path)
from studio_watch.cli.status import _summary  # the one redacting --json view of a job
from studio_watch.daemon import housekeeping
from studio_watch.daemon.statedb import queue_for
from studio_watch.queue.admin import CANCEL_REQUESTED
from studio_watch.queue import STATE_WORDS, STATES, Job, State
from studio_watch.schedule import parse_duration

JOBS_LIMIT = 100  # `jobs` listing: the newest hundred, not a year of history
_FROM_WORDS = {word: state for state, word in STATE_WORDS.items()}


def state_choice(text: str) -> str:
    """--state takes a state's name (url_issued) or its word (sending)."""
    if text in STATES:
        return text
    if text in _FROM_WORDS:
        return _FROM_WORDS[text]
    raise argparse.ArgumentTypeError(
        f"unknown state {text!r}: one of {', '.join(STATES)} (or {', '.join(_FROM_WORDS)})")


def job_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of jobs (0 for all), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number of jobs (0 for all), got {text!r}")
    return value


def age(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected an age greater than zero, got {text!r}")
    return seconds


def when(ts: float, now: float | None = None) -> str:
    """A local time for people: `today 09:55`, `yesterday 18:02`, else `2026-11-20 14:00`."""
    moment, today = datetime.fromtimestamp(ts), datetime.fromtimestamp(now or time.time()).date()
    days = (today - moment.date()).days
    clock = moment.strftime("%H:%M")
    return f"today {clock}" if days == 0 else f"yesterday {clock}" if days == 1 else moment.strftime("%Y-%m-%d %H:%M")


def target(job: Job) -> str:
    if job.collection_id is not None:
        return f"collection {job.collection_id}"
    if job.user_id is not None:
        return f"user {job.user_id}"
    return "My Uploads"


def note(job: Job, now: float) -> str:
    """Why the job is where it is now (never an error it has since got past)."""
    if job.reason == CANCEL_REQUESTED:
        return "cancel requested: stops at its next step"
    if job.state is State.FAILED:
        return job.last_error or job.reason or ""
    if job.state is State.SKIPPED:
        return job.reason or ""
    if job.state is State.COMPLETED:
        parts = [f"moved to {job.final_path}" if job.final_path else "",
                 "captions skipped" if job.captions_skipped else "",
                 "after-upload step pending" if not job.after_done else "", job.reason or ""]
        return "; ".join(p for p in parts if p)
    if job.claimed_by is not None:
        if job.state is State.URL_ISSUED and job.size:
            return f"sending: {100 * (job.bytes_sent or 0) / job.size:.0f}% of {human_bytes(job.size)}"
        return "in progress"
    if job.next_attempt_at > now and job.attempts:
        return f"retry in {human_age(job.next_attempt_at - now)} after: {job.last_error}"
    if job.state is State.SETTLING:
        return "waiting for the file to stop changing"
    return ""


def cmd_jobs(args: argparse.Namespace) -> int:
    """Newest first, streamed: the first line comes at once and memory stays flat whatever the history."""
    config = load_config(args)
    now = time.time()
    limit = args.limit if args.limit is not None else (0 if args.json else JOBS_LIMIT)
    queue = queue_for(config)
    try:
        # One more than shown: the note that older jobs exist costs no count of a year of rows.
        jobs = queue.each_job(args.state, limit + 1 if limit else None,
                              folder=resolve_cli_path(args.folder) if args.folder else None,
                              created_before=now - args.older_than if args.older_than else None,
                              created_after=now - args.newer_than if args.newer_than else None)
        if args.json:
            shown = print_json_stream({**_summary(j), "tries": j.tries} for j in itertools.islice(jobs, limit or None))
        else:
            print(f"{'ID':>6}  {'STATE':<10}  {'CREATED':<16}  {'TRIES':>5}  {'MEDIA':>8}  {'TARGET':<16}  "
                  "TITLE  PATH  (NOTE)", flush=True)
            shown = 0
            for job in itertools.islice(jobs, limit or None):
                text = logs.shown(note(job, now))
                title = f"'{logs.shown(job.title)}'" if job.title else "-"
                print(f"{job.id:>6}  {STATE_WORDS[job.state.value]:<10}  {when(job.created_at, now):<16}  "
                      f"{job.tries:>5}  {job.media_id or '-':>8}  {target(job):<16}  {title}  "
                      f"{logs.shown(job.display_path)}" + (f"  ({text})" if text else ""), flush=shown == 0)
                shown += 1
        if limit and shown == limit and next(jobs, None) is not None:
            print(f"(the newest {limit} jobs; --limit N for more, --limit 0 for all)", file=sys.stderr)
    finally:
        queue.close()
    return EXIT_OK


def _report(results: dict[int, str], ok: str, verb: str) -> int:
    done = [i for i, r in results.items() if r == ok]
    print(f"{verb} {len(done)} job(s)" + (f": {', '.join(map(str, done))}" if done else ""))
    bad = 0
    for job_id, result in results.items():
        if result == "requested":
            print(f"job {job_id}: in flight; it stops at its next step and is never uploaded")
        elif result != ok:
            bad += 1
            print(f"job {job_id}: not {verb}: {logs.shown(result)}", file=sys.stderr)
    return EXIT_FAILURE if bad else EXIT_OK


def cmd_cancel(args: argparse.Namespace) -> int:
    config = load_config(args)
    queue = queue_for(config)
    try:
        return _report(queue.cancel(args.ids), "cancelled", "cancelled")
    finally:
        queue.close()


def cmd_forget(args: argparse.Namespace) -> int:
    config = load_config(args)
    queue = queue_for(config)
    try:
        return _report(housekeeping.forget(queue, args.ids), "forgotten", "forgotten")
    finally:
        queue.close()


def cmd_prune(args: argparse.Namespace) -> int:
    config = load_config(args)
    older = args.older_than or config.prune_after
    if older is None:
        raise config_error("prune", "give --older-than AGE (or set prune_after in the config)")
    queue = queue_for(config)
    try:
        result = housekeeping.prune(queue, older)
    finally:
        queue.close()
    print(f"pruned {len(result.deleted)} finished job(s) older than {human_age(older)}"
          + (f"; kept {len(result.kept)} whose files are still in place (they remember the upload)"
             if result.kept else ""))
    return EXIT_OK


def add_arguments(add: Callable[[str, str], argparse.ArgumentParser], positive_int: Callable[[str], int]) -> None:
    """Register jobs, cancel, forget and prune with the parser (`add` makes a subcommand)."""
    p = add("jobs", "the newest jobs first: id, state, created (local time), tries, media id, target, title, path "
                    "and why it is where it is")
    p.add_argument("--state", type=state_choice, metavar="STATE",
                   help=f"only jobs in this state ({', '.join(STATES)}, or the words shown)")
    p.add_argument("--folder", metavar="PATH", help="only jobs found in this watched folder")
    p.add_argument("--older-than", type=age, metavar="AGE", help="only jobs created more than AGE ago (90d, 12h)")
    p.add_argument("--newer-than", type=age, metavar="AGE", help="only jobs created less than AGE ago")
    p.add_argument("--json", action="store_true", help="a JSON array on stdout (every job unless --limit is given)")
    p.add_argument("--limit", type=job_limit, default=None, metavar="N",
                   help=f"at most N jobs, newest first (default {JOBS_LIMIT}, or all with --json; 0: all)")
    p = add("cancel", "never upload these jobs (one in flight stops at its next step)")
    p.add_argument("ids", nargs="+", type=positive_int, metavar="JOB_ID")
    p = add("forget", "drop these rows so their files may be queued again (refused for an uploaded file "
                      "still in place, and for a job in flight)")
    p.add_argument("ids", nargs="+", type=positive_int, metavar="JOB_ID")
    p = add("prune", "drop finished jobs older than AGE whose files are gone or changed (never a row that "
                     "keeps a kept file from being uploaded again)")
    p.add_argument("--older-than", type=age, metavar="AGE",
                   help="e.g. 90d, 12h (default: prune_after from the config)")

