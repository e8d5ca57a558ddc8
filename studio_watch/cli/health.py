"""`studio-watch health`: a probe for container HEALTHCHECKs and monitoring scripts.

Exit 0 healthy, 1 not (one line on stderr saying why; never 2 for a runtime problem: Docker reserves it), 2 for
a bad config (raised as ConfigError and reported by cli.main).
"""

from __future__ import annotations

import argparse
import sys

from studio_watch.cli.output import EXIT_FAILURE, EXIT_OK, load_config
from studio_watch.daemon.health import daemon_health


def cmd_health(args: argparse.Namespace) -> int:
    degraded: list[str] = []
    healthy, reason = daemon_health(load_config(args), degraded)
    for line in degraded:  # healthy all the same (a missing folder must not get the container restarted)
        print(f"studio-watch: {line}", file=sys.stderr)
    if not healthy:
        print(f"studio-watch: unhealthy: {reason}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK
