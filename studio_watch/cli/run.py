"""`studio-watch run` (the daemon in the foreground) and `studio-watch sandbox` (the Studio emulator)."""

from __future__ import annotations

import argparse
import sys
import threading

from studio_watch import logs
from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, load_config, stop_on_signals
from studio_watch.daemon.app import Daemon
from studio_watch.errors import ConfigError, StudioWatchError
from studio_watch.sandbox.command import sandbox_from_args, serve_forever_until


def cmd_run(args: argparse.Namespace) -> int:
    config = load_config(args)
    if not config.folders:
        raise ConfigError(f"{config.source}: folders: no folder to watch; `run` needs at least one (upload and "
                          "import-url work without)")
    logs.setup(args.log_level or config.log.level, config.log.format)
    stop = threading.Event()
    daemon = Daemon(config, stop, new_database=getattr(args, "new_database", False), once=args.once)
    stop_on_signals(stop, on_hup=daemon.reload_requested.set)
    daemon.run()
    return EXIT_FAILURE if daemon.failed_meanwhile else EXIT_OK


def cmd_sandbox(args: argparse.Namespace) -> int:
    stop = threading.Event()
    stop_on_signals(stop)
    try:
        sandbox = sandbox_from_args(args)
    except OSError as exc:  # the port is taken (or may not be bound): one line, not a traceback
        raise StudioWatchError(f"sandbox: cannot listen on port {getattr(args, 'port', '?')}: "
                               f"{exc.strerror or exc} (choose another with --port, or 0 for any free one)") from None
    try:
        serve_forever_until(sandbox, stop, sys.stdout)
    finally:
        sandbox.stop()
    return EXIT_OK
