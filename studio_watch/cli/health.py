"""`studio-watch health`: a probe for container HEALTHCHECKs and monitoring scripts.

Exit 0 healthy, 1 not (one line on stderr saying why), a bad config included: Docker reserves exit 2 of a
HEALTHCHECK, so it is never used here.
"""

from __future__ import annotations

import argparse
import sys

from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, load_config
from studio_watch.daemon.health import daemon_health
from studio_watch.errors import ConfigError


def cmd_health(args: argparse.Namespace) -> int:
    try:
        config = load_config(args)
    except ConfigError as exc:
        print(f"studio-watch: unhealthy: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    degraded: list[str] = []
    healthy, reason = daemon_health(config, degraded)
    for line in degraded:  # healthy all the same (a missing folder must not get the container restarted)
        print(f"studio-watch: {line}", file=sys.stderr)
    if not healthy:
        print(f"studio-watch: unhealthy: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
