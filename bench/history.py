"""A year of history in a state database: `make_history(db, total)` writes `total` finished and waiting jobs.

Proportions are those a year of 50 rooms gives (recordings per room per teaching day, the odd duplicate, empty
or vanished take, a failure now and then, and a few jobs waiting for a retry after an outage). Rows go in with one
`executemany` in one transaction through the real schema (JobQueue creates the file), so a million rows take
seconds. `present` files (real files on disk) become the newest completed job of their path with their real
identity, as if uploaded and kept: a rescan must find them known.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Iterator, Sequence

ROOMS = 50
# Of every 10,000 jobs: completed, skipped (duplicate, empty, vanished), failed, waiting for a retry.
MIX = (("completed", 9_640), ("skipped", 200), ("failed", 150), ("ready", 10))
YEAR = 365 * 86400.0

_COLUMNS = ("kind", "state", "path", "folder", "collection_id", "title", "description", "after_upload", "after_done",
            "settle_seconds", "size", "mtime_ns", "inode", "device", "stable_since", "content_hash", "media_id",
            "completed_at", "attempts", "next_attempt_at", "last_error", "reason", "failed_state", "created_at",
            "updated_at")


def _rows(total: int, rooms_root: Path, now: float, rnd: random.Random) -> Iterator[tuple[object, ...]]:
    states = [state for state, share in MIX for _ in range(share)]
    start = now - YEAR
    for n in range(total):
        state = states[rnd.randrange(len(states))]
        room = n % ROOMS
        created = start + YEAR * n / total
        folder = os.fsencode(rooms_root / f"room-{room:02d}")
        path = folder + b"/" + time.strftime("%Y-%m-%d %H%M", time.gmtime(created)).encode() + b" %d.mp4" % n
        size = rnd.randrange(50 << 20, 4 << 30)
        done = state == "completed"
        failed = state == "failed"
        yield ("file", state, path, folder, 1000 + room, f"Room {room} lecture", "", "keep", int(done), 30.0, size,
               int(created * 1e9) - 60_000_000_000, n + 10_000_000, 2049, created, "%016x" % rnd.getrandbits(64),
               n + 1 if done else None, created + 300 if done else None, 5 if failed else (2 if state == "ready" else 0),
               now + 86_400 if state == "ready" else created,  # the waiting ones: a retry due tomorrow
               "generate: HTTP 500" if failed or state == "ready" else None,
               rnd.choice(("duplicate", "empty", "vanished")) if state == "skipped" else
               ("gave up after 5 attempts" if failed else None),
               "ready" if failed else None, created, created + 300)


def make_history(db: Path, total: int, present: Sequence[tuple[str, os.stat_result]] = (),
                 rooms_root: Path = Path("/srv/rooms"), seed: int = 14) -> float:
    """Write `total` jobs (plus one completed job per `present` file) into a new state DB; returns seconds."""
    from studio_watch.queue.sqlite import SqliteQueue as JobQueue

    started = time.monotonic()
    JobQueue(db).close()  # the real schema, migrated to the current version
    now = time.time()
    marks = ", ".join("?" * len(_COLUMNS))
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN IMMEDIATE")
        # The schema's own indexes and triggers, dropped for the bulk insert and rebuilt after it from their SQL
        # (a sort per index instead of a million random B-tree inserts: 3× faster).
        derived = conn.execute("SELECT type, name, sql FROM sqlite_master WHERE tbl_name = 'jobs' AND "
                               "type IN ('index', 'trigger') AND sql IS NOT NULL").fetchall()
        for kind, name, _ in derived:
            conn.execute(f"DROP {kind.upper()} {name}")
        conn.executemany(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})",
                         _rows(total, rooms_root, now, random.Random(seed)))
        conn.executemany(
            f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({marks})",
            (("file", "completed", os.fsencode(p), os.fsencode(os.path.dirname(p)), 1, "kept", "", "keep", 1, 0.0,
              st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev, now, None, 1, now, 0, now, None, None, None, now, now)
             for p, st in present))
        for kind, _, sql in sorted(derived, key=lambda d: d[0]):  # indexes first, then any triggers
            conn.execute(sql)
        conn.execute("COMMIT")
    finally:
        conn.close()
    return time.monotonic() - started


if __name__ == "__main__":  # python -m bench.history DB [TOTAL]: a history to look at by hand
    import sys

    target = Path(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000
    print(f"{count:,} jobs in {make_history(target, count):.1f} s: {target}")
