"""`explain --all` rendered: one line per file, a summary per verdict."""

from __future__ import annotations

import sys
from collections import Counter

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK
from studio_watch.daemon.dryrun import VERDICTS, explain_all


def print_all(config: cfg.Config) -> int:
    verdicts, unreadable = explain_all(config)
    width = max(len(v) for v in VERDICTS)
    for v in verdicts:
        detail = v.why
        if v.verdict in ("upload", "queued", "done", "failed") and v.target:
            detail += f" → {v.target}" + (f", title {v.title!r}" if v.title else "")
        print(f"{v.verdict:<{width}}  {logs.shown(v.path)}: {logs.shown(detail)}")
    for folder in unreadable:
        print(f"{'unreadable':<{width}}  {logs.shown(folder)}: the folder is missing or cannot be listed", file=sys.stderr)
    counts = Counter(v.verdict for v in verdicts)
    print(f"{len(verdicts)} file(s): " + ", ".join(f"{counts[v]} {v}" for v in VERDICTS)
          + (f"; {len(unreadable)} folder(s) unreadable" if unreadable else ""))
    return EXIT_FAILURE if unreadable else EXIT_OK
