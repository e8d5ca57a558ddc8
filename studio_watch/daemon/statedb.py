"""The queue a config's `state_db` names, opened for a daemon or a command: a single machine's SQLite file, or
a cluster's PostgreSQL database as this node. Kept apart from the composition root (daemon/app.py) so that
`status`, `health` and `check` open the queue without importing the watcher and the daemon."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.queue import JobQueue, open_queue


def queue_for(config: cfg.Config, new_database: bool = False, verify: bool = False) -> JobQueue:
    """The queue `state_db` names, as `node_name`; its password (and one written into the URI) is registered as
    a secret first, so no log line, error or output ever shows it. `new_database` and `verify` (a daemon's
    start: integrity checks) concern a SQLite file only."""
    password = cfg.state_db_password(config)
    inline = urlsplit(str(config.state_db)).password if config.shared_state else None
    for secret in (password, inline and unquote(inline)):
        if secret:
            logs.register_secret(secret)
    return open_queue(config.state_db, node=config.node_name, password=password, lease_seconds=config.lease_seconds,
                      new_database=new_database, verify=verify)
