"""`python -m bench.tlsput STACK URL FILE CAFILE`: PUT one file over https with one HTTP stack, nothing else.

The library-level half of the TLS row: the same 1 MiB reused-buffer body through
- `pool`: studio-watch's transport (httpcore over studio/netio.py: TLS through SSLObject, one sendall per MiB);
- `httpx`: plain httpx, its default transport (httpcore's SSLSocket stream: one write per 16 KiB record);
so the CPU cost of choosing plain httpx is measured, not guessed (it prints the PUT's own CPU, without the
interpreter's start) (docs/decisions/http-stack.md). Both run in a
worker thread with the allocator tuned (netio.tune_allocator), as in the daemon.
"""

from __future__ import annotations

import os
import resource
import ssl
import sys
import threading
from typing import Iterator

CHUNK = 1 << 20


def body(path: str) -> Iterator[memoryview]:
    buffer = memoryview(bytearray(CHUNK))
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buffer):
            yield buffer[:n]


def main(argv: list[str]) -> int:
    stack, url, path, cafile = argv
    size = os.path.getsize(path)
    headers = [("Content-Length", str(size)), ("Content-Type", "application/octet-stream")]
    statuses: list[int] = []

    def put() -> None:  # in a worker thread, as the daemon and `upload` send (thread arenas matter: netio.py)
        if stack == "pool":
            from studio_watch.studio.transport import Pool

            pool = Pool(ssl.create_default_context(cafile=cafile), 60)
            statuses.append(pool.request("PUT", url, headers, body(path)).status_code)
            pool.close()
        elif stack == "httpx":
            import httpx

            from studio_watch.studio.netio import tune_allocator

            tune_allocator()  # as the transport does: the comparison is of the TLS streams alone

            with httpx.Client(verify=ssl.create_default_context(cafile=cafile), timeout=60) as client:
                statuses.append(client.put(url, content=body(path), headers=dict(headers)).status_code)

    if stack not in ("pool", "httpx"):
        raise SystemExit(f"unknown stack {stack!r}")
    before = resource.getrusage(resource.RUSAGE_SELF)
    worker = threading.Thread(target=put)
    worker.start()
    worker.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    print(f"put_cpu {after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime:.4f}")  # no start-up
    return 0 if statuses == [200] else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
