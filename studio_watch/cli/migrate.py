"""`studio-watch migrate --from OLD.db`: move one machine's SQLite queue into the cluster's PostgreSQL queue."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, config_error, load_config
from studio_watch.daemon.lock import DaemonLock
from studio_watch.daemon.snapshot import STATUS_KEY
from studio_watch.daemon.statedb import queue_for
from studio_watch.errors import DatabaseLocked
from studio_watch.queue import is_postgres, open_queue


def cmd_migrate(args: argparse.Namespace) -> int:
    config = load_config(args)
    if not config.shared_state:
        raise config_error("migrate", f"state_db in {config.source} is a file; set it to the cluster's "
                                      "postgresql:// URI, then migrate the old file into it with --from")
    source = Path(args.source)
    if is_postgres(args.source) or not source.is_file():
        raise config_error("--from", f"{args.source}: not a SQLite state database file")
    lock = DaemonLock(source, role="upload")
    try:
        lock.acquire()  # no daemon (or upload) may work on the old queue while it moves
    except DatabaseLocked as exc:
        print(f"studio-watch: {exc}: stop it first", file=sys.stderr)
        return EXIT_FAILURE
    try:
        old = open_queue(source)
        try:
            jobs, meta = old.dump()
        finally:
            old.close()
        # Snapshots of a daemon that ran on the old file mean nothing in the cluster; link-import attempts do.
        meta = {k: v for k, v in meta.items() if k != STATUS_KEY and not k.startswith(STATUS_KEY + ":")}
        new = queue_for(config)
        try:
            moved = new.load(jobs, meta)
        except ValueError as exc:
            print(f"studio-watch: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        finally:
            new.close()
    finally:
        lock.release()
    print(f"moved {moved} job(s) from {source} to {config.state_db_display}; {source} is left as it was "
          "(keep it until the cluster runs)")
    return EXIT_OK
