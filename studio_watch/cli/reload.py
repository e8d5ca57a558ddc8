"""`studio-watch reload`: ask the running daemon to re-read its config, and wait for its answer.

systemd's `ExecReload=` runs it, so `systemctl reload` returns only once the daemon has applied the new
config (exit 0) or rejected it (exit 2, with the daemon's reason); 1 when no daemon answered in time.
The daemon is told by SIGHUP (a signal carries nothing, so this command cannot be mistaken for another);
its answer is the outcome of the first reload that started after the signal was sent, which it stores in
the state database. Under systemd its output lands in the unit's journal among the daemon's JSON lines, so
there it says the outcome as one more log line of the same format (event `reload_applied`, `reload_rejected` or
`reload_unanswered`, with its priority); at a terminal or in a script, as the sentences below.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from studio_watch import config as cfg
from studio_watch import logs
from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, EXIT_USAGE
from studio_watch.daemon.lock import DaemonLock
from studio_watch.daemon.snapshot import RELOAD_KEY
from studio_watch.errors import ConfigError
from studio_watch.daemon.statedb import queue_for

POLL_SECONDS = 0.1


def cmd_reload(args: argparse.Namespace) -> int:
    try:
        config = cfg.load(cfg.config_path(getattr(args, "config", None)))
    except ConfigError as exc:
        # The daemon reads the same file with the same loader: it would say the same. Tell it anyway (when its
        # pid is known) so its log has the rejection too, and report it here.
        if args.pid:
            _signal(args.pid)
        return _say(None, EXIT_USAGE, "reload_rejected", f"studio-watch: reload rejected: {exc}", error=str(exc))
    pid = args.pid or _daemon_pid(config)
    if pid is None:
        print(f"studio-watch: no daemon holds {config.state_db_display}: nothing to reload (or give --pid)",
              file=sys.stderr)
        return EXIT_FAILURE
    asked = time.time()
    if not _signal(pid):
        return EXIT_FAILURE
    answer = wait_for_answer(config, asked, args.timeout)
    if answer is None:
        return _say(config, EXIT_FAILURE, "reload_unanswered",
                    f"studio-watch: the daemon (pid {pid}) did not answer within {args.timeout:g} s", pid=pid,
                    timeout_seconds=args.timeout)
    if not answer["ok"]:
        return _say(config, EXIT_USAGE, "reload_rejected",
                    f"studio-watch: reload rejected, the running configuration stays: {answer.get('error')}",
                    pid=pid, error=answer.get("error"))
    restart = answer.get("needs_restart") or []
    return _say(config, EXIT_OK, "reload_applied", f"reloaded: {answer.get('folders')} folder(s)"
                + (f"; changes to {', '.join(restart)} need a restart" if restart else ""),
                pid=pid, folders=answer.get("folders"), needs_restart=restart)


def _say(config: cfg.Config | None, code: int, event: str, text: str, **fields: Any) -> int:
    """The outcome: `text` (stdout when it worked, else stderr), or, when that stream is the journal (ExecReload=),
    a log line of the daemon's format (the config's log.format; JSON when the config itself failed)."""
    stream = sys.stdout if code == EXIT_OK else sys.stderr
    if not logs.journal_connected(stream):
        print(text, file=stream)
        return code
    logs.setup("info", config.log.format if config else "json", stream=stream)
    log = logs.get_logger("studio_watch.cli.reload")
    (log.info if code == EXIT_OK else log.error)(event, exit_code=code, **fields)
    return code


def _daemon_pid(config: cfg.Config) -> int | None:
    if config.shared_state:  # a cluster's node holds no local lock: give --pid (the unit passes $MAINPID)
        return None
    held = DaemonLock(Path(config.state_db)).holding()
    if held is None or held[1] != "daemon" or held[0] <= 0:
        return None
    return held[0]


def _signal(pid: int) -> bool:
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        print(f"studio-watch: cannot signal pid {pid}: {exc.strerror}", file=sys.stderr)
        return False
    return True


def wait_for_answer(config: cfg.Config, asked: float, timeout: float) -> dict[str, Any] | None:
    """The outcome of the first reload that started at or after `asked` (None if none came within `timeout`)."""
    queue = queue_for(config)
    try:
        deadline = time.monotonic() + timeout
        while True:
            raw = queue.meta(RELOAD_KEY)
            answer = json.loads(raw) if raw else None
            if answer is not None and answer.get("started", 0) >= asked:
                return answer
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS)  # another process's row: no event to wait on
    finally:
        queue.close()
