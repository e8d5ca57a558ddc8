"""The cluster rows: throughput with 1, 2 and 3 nodes sharing one PostgreSQL queue and one drop folder, each
node in its own network namespace behind a veth link shaped by `tc ... tbf` to one sink; and the failover time
after a SIGKILL mid-upload.

Each namespace reaches the sink at 127.0.0.1 (an iptables DNAT in the namespace sends it over the shaped link
to the sink's side), so the node's config stays the loopback http:// URL the config allows. PostgreSQL is
reached through its Unix socket, which no network namespace separates. Needs root (ip netns, tc, iptables).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

from .harness import REPO, Sink, remove, scratch, stop_process, write_big_file, write_config
from .report import Result

RATE_MBIT = 40  # per node link; small enough that the links, not this 2-core machine, are the bottleneck
NET = "10.77"
LEASE = 10.0


def _sh(*argv: str) -> None:
    subprocess.run(list(argv), check=True, capture_output=True, text=True)


@contextmanager
def namespaces(count: int, port: int) -> Iterator[list[str]]:
    """`count` namespaces swb-1.., each with a veth link (tbf RATE_MBIT egress) and 127.0.0.1:port → the sink."""
    made: list[int] = []
    try:
        for i in range(1, count + 1):
            ns, host_if, ns_if = f"swb-{i}", f"swb-h{i}", f"swb-n{i}"
            _sh("ip", "netns", "add", ns)
            made.append(i)
            _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
            _sh("ip", "link", "set", ns_if, "netns", ns)
            _sh("ip", "addr", "add", f"{NET}.{i}.1/24", "dev", host_if)
            _sh("ip", "link", "set", host_if, "up")
            run = ("ip", "netns", "exec", ns)
            _sh(*run, "ip", "addr", "add", f"{NET}.{i}.2/24", "dev", ns_if)
            _sh(*run, "ip", "link", "set", ns_if, "up")
            _sh(*run, "ip", "link", "set", "lo", "up")
            _sh(*run, "tc", "qdisc", "add", "dev", ns_if, "root", "tbf", "rate", f"{RATE_MBIT}mbit", "burst",
                "64kb", "latency", "50ms")
            _sh(*run, "sysctl", "-qw", "net.ipv4.conf.all.route_localnet=1")
            _sh(*run, "iptables", "-t", "nat", "-A", "OUTPUT", "-d", "127.0.0.1", "-p", "tcp", "--dport", str(port),
                "-j", "DNAT", "--to-destination", f"{NET}.{i}.1:{port}")
            _sh(*run, "iptables", "-t", "nat", "-A", "POSTROUTING", "-o", ns_if, "-j", "MASQUERADE")
        yield [f"swb-{i}" for i in made]
    finally:
        for i in made:
            subprocess.run(["ip", "netns", "del", f"swb-{i}"], capture_output=True)
            subprocess.run(["ip", "link", "del", f"swb-h{i}"], capture_output=True)


@contextmanager
def postgres() -> Iterator[object]:
    sys.path.insert(0, str(REPO))
    from tests.conftest import Account, PostgresServer  # the suite's own throwaway server, reused

    import pwd
    import tempfile

    entry = pwd.getpwnam("postgres")
    root = Path(tempfile.mkdtemp(prefix="sw-bench-pg-"))
    root.chmod(0o711)
    server = PostgresServer(root, Account("postgres", entry.pw_uid, entry.pw_gid))
    server.start_cluster()
    try:
        yield server
    finally:
        server.stop("immediate")
        remove(root)


def _start(ns: str, config: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-m", "studio_watch", "run", "-c",
                             str(config)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _configs(root: Path, sink: Sink, uri: str, count: int, share: Path) -> list[Path]:
    out = []
    for i in range(1, count + 1):
        home = root / f"n{i}"
        home.mkdir()
        out.append(write_config(home, sink.url, [{"path": str(share / "in"), "settle_seconds": 0.2}],
                                state_db=uri, node_name=f"n{i}", observer="polling", rescan_seconds=1,
                                lease_seconds=LEASE, workers=2, log={"format": "json", "level": "warning"}))
    return out


def _wait_nodes(uri: str, count: int, timeout: float = 60) -> None:
    import psycopg

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with psycopg.connect(uri) as conn:
                live = conn.execute("SELECT count(*) FROM nodes WHERE stopped_at IS NULL").fetchone()[0]
            if live >= count:
                return
        except psycopg.Error:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{count} nodes did not register")


def throughput(sink: Sink, server: object, nodes: int, files: int, size: int) -> float:
    """Bytes per second from the first upload URL to the last PUT's last byte, `nodes` nodes sharing the work."""
    root = scratch(f"cluster{nodes}")
    share = root / "share"
    (share / "in").mkdir(parents=True)
    uri = server.new_database()  # type: ignore[attr-defined]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with namespaces(nodes, sink.port) as names:
            procs = [_start(ns, config) for ns, config in zip(names, _configs(root, sink, uri, nodes, share))]
            _wait_nodes(uri, nodes)
            sink.reset()
            staging = root / "staging"
            staging.mkdir()
            made = [write_big_file(staging / f"lecture-{n:02}.mp4", size, seed=n + 1) for n in range(files)]
            for f in made:
                os.rename(f, share / "in" / f.name)
            done = sink.wait("completes", files, timeout=600)
            if not done["ok"]:
                raise RuntimeError(f"{done['count']} of {files} completed")
            stats = sink.stats()
            first = min(stats["generates"])
            last = max(end for _, end, _ in stats["puts"])
            return float(stats["put_bytes"]) / (last - first)
    finally:
        for p in procs:
            stop_process(p)
        remove(root)


def failover(sink: Sink, server: object, size: int) -> float:
    """Seconds from SIGKILL of the node sending a file to the other node's PUT of it starting."""
    root = scratch("failover")
    share = root / "share"
    (share / "in").mkdir(parents=True)
    uri = server.new_database()  # type: ignore[attr-defined]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        with namespaces(2, sink.port) as names:
            configs = _configs(root, sink, uri, 2, share)
            procs.append(_start(names[0], configs[0]))
            _wait_nodes(uri, 1)
            sink.reset()
            write_big_file(share / "in" / "big.mp4", size, seed=5)
            if not sink.wait("generates", 1, timeout=60)["ok"]:
                raise RuntimeError("the first node never started the upload")
            procs.append(_start(names[1], configs[1]))
            _wait_nodes(uri, 2)
            time.sleep(1.0)  # mid-PUT (size / link rate is several seconds)
            procs[0].kill()
            killed = time.monotonic()
            if not sink.wait("completes", 1, timeout=LEASE + 60)["ok"]:
                raise RuntimeError("the second node never finished the upload")
            [(started, _, _)] = sink.stats()["puts"]  # the killed PUT never finished: only the resumed one
            return started - killed
    finally:
        for p in procs:
            stop_process(p)
        remove(root)


def cluster_rows(_: Sink, quick: bool) -> list[Result]:
    if os.geteuid() != 0:
        return [Result("cluster", "skipped: needs root (ip netns, tc, iptables)")]
    files, size = (12, 2 << 20) if quick else (18, 4 << 20)
    with ExitStack() as stack:
        server = stack.enter_context(postgres())
        sink = Sink(host="0.0.0.0")
        stack.callback(sink.close)
        rates = {n: throughput(sink, server, n, files, size) for n in (1, 2, 3)}
        took = failover(sink, server, 24 << 20)
    link = RATE_MBIT * 1e6 / 8
    mb = lambda r: f"{r / 1e6:.1f} MB/s"  # noqa: E731
    ratio3 = rates[3] / rates[1]
    notes = [f"{files} files of {size >> 20} MiB dropped at once into one polled folder; nodes in their own network "
             f"namespaces, each behind a veth link shaped by tc tbf to {RATE_MBIT} Mbit/s ({link / 1e6:.1f} MB/s), "
             "one PostgreSQL (Unix socket), one sink. Throughput: PUT bytes from the first upload URL to the last "
             f"PUT's last byte. 1 node {mb(rates[1])}, 2 nodes {mb(rates[2])} ({rates[2] / rates[1]:.2f}x), "
             f"3 nodes {mb(rates[3])}. Failover: a 24 MiB PUT, its node SIGKILLed after 1 s, lease {LEASE:.0f} s. "
             f"The links are {RATE_MBIT} Mbit/s rather than 200: at 3 x 200 Mbit/s this 2-core machine, not the "
             "links, would be the bottleneck, and the row would measure the CPU."]
    return [Result("cluster: 3 nodes vs 1 (throughput)", mb(rates[3]), mb(rates[1]) + " (1 node)", f"{ratio3:.2f}x",
                   ">= 2.7x", ratio3 >= 2.7, notes),
            Result("cluster: failover after SIGKILL", f"{took:.1f} s", "-", "-", f"<= lease + 5 s ({LEASE + 5:.0f} s)",
                   took <= LEASE + 5)]


if __name__ == "__main__":  # python -m bench.cluster [--quick]: these rows alone
    quick = "--quick" in sys.argv
    print(json.dumps([r.__dict__ for r in cluster_rows(None, quick)], indent=2))  # type: ignore[arg-type]
