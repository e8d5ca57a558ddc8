"""Is the daemon healthy? (What `studio-watch health` asks, for container HEALTHCHECKs and monitoring.)

With `metrics.listen` set it asks the daemon's own `/healthz` (watchers and workers alive); without it, it
can only tell whether a daemon holds the state database's lock.
"""

from __future__ import annotations

from pathlib import Path

from studio_watch import config as cfg
from studio_watch.config import parse_listen
from studio_watch.daemon.lock import DaemonLock
from studio_watch.daemon.statedb import queue_for
from studio_watch.errors import StudioError, StudioWatchError
from studio_watch.studio.connections import tls_context

TIMEOUT_SECONDS = 3.0
# A wildcard listen address is reachable on loopback from inside the same host or container.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def daemon_health(config: cfg.Config, degraded: list[str] | None = None) -> tuple[bool, str]:
    """(True, "") when the daemon is healthy, else (False, why). `degraded` receives the daemon's "degraded: ..."
    lines (a missing folder, a folder polled instead of inotify): healthy all the same."""
    if config.metrics.listen:
        return check_http(healthz_url(config.metrics.listen), degraded=degraded)
    return check_lock(config)


def healthz_url(listen: str) -> str:
    """The /healthz URL for a `metrics.listen` value (wildcard hosts become loopback)."""
    host, port = parse_listen(listen)
    host = _WILDCARDS.get(host, host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/healthz"


def check_http(url: str, timeout: float = TIMEOUT_SECONDS, degraded: list[str] | None = None) -> tuple[bool, str]:
    """(True, "") on a 200 from `url`, else (False, why); the body's "degraded: ..." lines go to `degraded`."""
    from studio_watch.studio.proxies import Proxies  # start-up cost: the HTTP stack (httpcore) is imported by the first request
    from studio_watch.studio.transport import Pool  # start-up cost: the HTTP stack (httpcore) is imported by the first request

    # The daemon's own endpoint, on this host or container: never through a proxy, whatever the environment says.
    pool = Pool(lambda: tls_context(None), timeout, proxies=Proxies(None, {}))
    try:
        reply = pool.request("GET", url, [])
    except StudioError as exc:
        return False, f"{url}: {exc}"
    finally:
        pool.close()
    if degraded is not None:
        degraded.extend(line for line in reply.text.splitlines() if line.startswith("degraded: "))
    if reply.status_code == 200:
        return True, ""
    return False, f"{url} answered {reply.status_code}"


def check_lock(config: cfg.Config) -> tuple[bool, str]:
    """(True, "") when some daemon holds the lock on `config.state_db`, else (False, why)."""
    if config.shared_state:  # a cluster: this node's daemon is alive when its heartbeat is recent
        try:
            queue = queue_for(config)
        except StudioWatchError as exc:
            return False, str(exc)
        try:
            if any(n["name"] == config.node_name and n["live"] for n in queue.nodes()):
                return True, ""
        finally:
            queue.close()
        return False, f"node {config.node_name!r} is not live on {config.state_db_display}"
    held = DaemonLock(Path(config.state_db)).holding()
    if held is not None and held[1] == "daemon":
        return True, ""
    return False, f"no daemon holds {config.state_db} (set metrics.listen for a liveness check)"
