"""`studio-watch import-url URL [--collection ID | --user ID] [--title T] ... [--external]`."""

from __future__ import annotations

import argparse
import sys

from studio_watch import logs
from studio_watch.cli.output import EXIT_OK, load_config, quiet_level
from studio_watch.daemon.engine import build_client
from studio_watch.daemon.statedb import queue_for
from studio_watch.studio.imports import CAPTIONS_SKIPPED, ImportRequest, import_once, validate_import


def cmd_import_url(args: argparse.Namespace) -> int:
    is_external, title = validate_import(args.url, args.collection, args.user, args.title, args.external)
    config = load_config(args)
    logs.setup(quiet_level(config), config.log.format)
    request = ImportRequest(args.url, title, args.description or "", bool(args.auto_caption), is_external,
                            args.collection, args.user)
    queue = queue_for(config) if config.shared_state else None  # a cluster shares its OAuth tokens through it
    try:
        client = build_client(config, queue=queue)
        try:
            result = import_once(client, None, request)
        finally:
            client.close()
    finally:
        if queue is not None:
            queue.close()
    if result.captions_skipped:
        print(f"warning: {CAPTIONS_SKIPPED}", file=sys.stderr)
    notes = [n for n, on in (("external", is_external), ("captions skipped", result.captions_skipped),
                             ("found after a lost response", result.reconciled)) if on]
    print(f"imported {args.url} as media {result.media_id}" + (f" ({', '.join(notes)})" if notes else ""))
    return EXIT_OK
