"""The PostgreSQL queue's schema: its tables, and the steps that bring an older database up to date.

The jobs table has the same columns as SQLite's (plus `lease_expires_at`), and one thing SQLite's has not: a
unique index on the path of the live jobs (settling … uploaded), so that each file is one job however many nodes
report it. The `nodes` table says which node was seen when, for `status`. One node migrates at a time (an
advisory lock); the others wait, then find the schema current.
"""

from __future__ import annotations

from studio_watch.queue.backend import run_migrations
from studio_watch.queue.pg_driver import PgTx

SCHEMA_VERSION = 2
_MIGRATE_LOCK = 0x53574D  # advisory lock held while one node migrates the schema

_SCHEMA = """
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL DEFAULT 'file',
    state TEXT NOT NULL,
    path BYTEA,
    folder BYTEA,
    source_url TEXT,
    is_external INTEGER NOT NULL DEFAULT 0,
    collection_id BIGINT,
    user_id BIGINT,
    title TEXT,
    description TEXT,
    auto_caption INTEGER NOT NULL DEFAULT 0,
    captions_skipped INTEGER NOT NULL DEFAULT 0,
    after_upload TEXT NOT NULL DEFAULT 'keep',
    after_upload_when TEXT NOT NULL DEFAULT 'completed',
    move_to BYTEA,
    after_done INTEGER NOT NULL DEFAULT 0,
    final_path BYTEA,
    duplicates TEXT NOT NULL DEFAULT 'skip',
    settle_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    size BIGINT,
    mtime_ns BIGINT,
    inode BIGINT,
    device BIGINT,
    stable_since DOUBLE PRECISION,
    content_hash TEXT,
    media_id BIGINT,
    upload_url TEXT,
    url_issued_at DOUBLE PRECISION,
    transcoding_status TEXT,
    completed_at DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
    last_error TEXT,
    reason TEXT,
    claimed_by TEXT,
    claimed_at DOUBLE PRECISION,
    bytes_sent BIGINT,
    progress_at DOUBLE PRECISION,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    failed_state TEXT,
    lease_expires_at DOUBLE PRECISION
);
CREATE INDEX jobs_path ON jobs (path, id);
CREATE INDEX jobs_due ON jobs (state, next_attempt_at);
CREATE INDEX jobs_hash ON jobs (content_hash);
CREATE INDEX jobs_size ON jobs (size);
CREATE INDEX jobs_after ON jobs (next_attempt_at) WHERE state = 'completed' AND after_done = 0;
CREATE INDEX jobs_claimed ON jobs (claimed_by) WHERE claimed_by IS NOT NULL;
CREATE UNIQUE INDEX jobs_one_live_job_per_path ON jobs (path)
    WHERE state IN ('settling', 'ready', 'url_issued', 'uploaded');
CREATE INDEX jobs_folder_seen ON jobs (folder, created_at);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE lectures (
    folder BYTEA NOT NULL,
    lecture TEXT NOT NULL,
    summary TEXT NOT NULL,
    zone TEXT,
    starts_at DOUBLE PRECISION NOT NULL,
    ends_at DOUBLE PRECISION NOT NULL,
    due_at DOUBLE PRECISION NOT NULL,
    late_until DOUBLE PRECISION NOT NULL,
    outcome TEXT NOT NULL,
    job_id BIGINT,
    judged_at DOUBLE PRECISION NOT NULL,
    resolved_at DOUBLE PRECISION,
    PRIMARY KEY (folder, lecture)
);
CREATE INDEX lectures_open ON lectures (outcome, late_until);
CREATE TABLE timetable_watch (folder BYTEA PRIMARY KEY, since DOUBLE PRECISION NOT NULL);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    host TEXT,
    pid INTEGER,
    version TEXT,
    started_at DOUBLE PRECISION,
    last_seen DOUBLE PRECISION,
    stopped_at DOUBLE PRECISION,
    status TEXT
)
"""
_MIGRATIONS = (
    (1, _SCHEMA),
    # The latest failures (`status`) without walking a year of history: the same partial index as SQLite's
    # schema 5 (its other index there, jobs_claimed, was in this schema from the start). PostgreSQL's planner
    # picks the indexes itself (no hints). counts() is not cached here: other nodes commit too, and PostgreSQL has
    # no cheap "did anything change" like SQLite's data_version (docs/decisions/queue-indexes.md).
    (2, "CREATE INDEX IF NOT EXISTS jobs_failed ON jobs (updated_at) WHERE state = 'failed'"),
)


def migrate(tx: PgTx, where: str) -> None:
    """Bring the database at `where` to SCHEMA_VERSION inside `tx` (raises DatabaseTooNew for a newer one)."""
    tx.rows("SELECT pg_advisory_xact_lock(?)", (_MIGRATE_LOCK,))  # one node migrates; the others wait
    tx.run("CREATE TABLE IF NOT EXISTS studio_watch_schema (version INTEGER NOT NULL)")
    row = tx.one("SELECT max(version) AS v FROM studio_watch_schema")
    version = (row["v"] if row else None) or 0
    run_migrations(tx.cur.execute, version, _MIGRATIONS, SCHEMA_VERSION, where, "upgrade studio-watch on this node")
    if version < SCHEMA_VERSION:
        tx.run("DELETE FROM studio_watch_schema")
        tx.run("INSERT INTO studio_watch_schema (version) VALUES (?)", (SCHEMA_VERSION,))
