"""The queue's interface: what the daemon, the pipeline and the commands may do to jobs, by name.

Every change to a claimed job is a named, guarded transition: one statement `UPDATE jobs ... WHERE id = ? AND
state = <from> AND claimed_by = <owner> AND claimed_at = <claim>`, checked against the transition table
(`model.TRANSITIONS`), committed before the caller's next side effect, returning whether it applied. False
means the claim is gone (another node took the job over after its lease ran out): the caller stops.

Two backends implement it: `sqlite.SqliteQueue` (one machine, the default) and `postgres.PostgresQueue` (a
cluster of nodes sharing one database). Both are subclasses of `sql.SqlQueue`, which assembles the SQL they share.
"""

from __future__ import annotations

import abc
import contextlib
import os
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

from studio_watch.queue.model import Job, LectureRecord, Retried, Seen, Settled, State, Verdict


class JobQueue(abc.ABC):
    """The durable job queue (see the module docstring)."""

    #: True when other nodes share this queue (PostgreSQL): pause, leases and node names are cluster-wide.
    shared: bool = False
    #: Where the queue lives, for messages (a path, or a URI with its password removed).
    where: str

    # -- reading --------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def now(self) -> float:
        """The queue's clock (seconds since the epoch). PostgreSQL: the server's, so that nodes whose clocks
        disagree still agree on when a file settled and when a lease ran out."""

    @abc.abstractmethod
    def get(self, job_id: int) -> Job | None: ...

    @abc.abstractmethod
    def jobs(self, state: str | None = None, limit: int | None = None, folder: str | None = None,
             created_before: float | None = None, created_after: float | None = None,
             newest_first: bool = False) -> list[Job]:
        """Jobs oldest first by default (all of them: for tests and small tools; the CLI streams with `each_job`)."""

    @abc.abstractmethod
    def each_job(self, state: str | None = None, limit: int | None = None, folder: str | None = None,
                 created_before: float | None = None, created_after: float | None = None,
                 newest_first: bool = True) -> Iterator[Job]:
        """Jobs one at a time, newest first by default; memory and the time to the first one do not grow with the
        history."""

    @abc.abstractmethod
    def pending(self) -> int:
        """Jobs with something still to do: settling, waiting, in flight, or an after-upload action to run."""

    @abc.abstractmethod
    def last_completed_at(self) -> float | None: ...

    # -- the operator's verbs (queue/admin.py): one guarded statement per row ------------------------------

    @abc.abstractmethod
    def cancel(self, ids: Sequence[int]) -> dict[int, str]:
        """Never upload these: {id: "cancelled" | "requested" (in flight: stopped at its next step) | why not}."""

    @abc.abstractmethod
    def cancel_requested(self, job_id: int) -> bool: ...

    @abc.abstractmethod
    def clear_cancel_request(self, job_id: int) -> None: ...

    @abc.abstractmethod
    def delete_unclaimed(self, jobs: Iterable[Job]) -> list[int]:
        """Delete these rows if each is still exactly as read (same state and updated_at) and nobody holds it."""

    @abc.abstractmethod
    def finished_before(self, cutoff: float, after_id: int = 0, limit: int = 1000) -> list[Job]: ...

    @abc.abstractmethod
    def counts(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def oldest_waiting(self) -> Job | None: ...

    @abc.abstractmethod
    def recent_failures(self, limit: int = 5) -> list[Job]: ...

    @abc.abstractmethod
    def in_flight(self) -> list[Job]: ...

    @abc.abstractmethod
    def settling(self) -> list[Job]: ...

    @abc.abstractmethod
    def latest_by_path(self, paths: Iterable[str]) -> dict[bytes, tuple[str, tuple[int | None, int | None, int | None]]]:
        """For a rescan: the newest job's state and identity of each of `paths` that has one."""

    @abc.abstractmethod
    def next_due(self) -> float | None: ...

    @abc.abstractmethod
    def find_manual(self, seen: Seen) -> Job | None: ...

    @abc.abstractmethod
    def same_size_elsewhere(self, job: Job) -> bool: ...

    # -- meta: pause, daemon snapshots, link-import attempts ----------------------------------------------

    @abc.abstractmethod
    def meta(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def set_meta(self, key: str, value: str | None, durable: bool = True) -> None:
        """`durable=False`: a snapshot that may be lost with a power cut (the daemon's status, every 5 s)."""

    # -- finding files ----------------------------------------------------------------------------------------

    @abc.abstractmethod
    def observe(self, seen: Iterable[Seen], now: float | None = None) -> list[tuple[int, Seen]]:
        """Record files a watcher found; returns the jobs created. Each file is one job, however many nodes
        report it (PostgreSQL: a unique index on the live jobs' paths decides, not a Python lock)."""

    @abc.abstractmethod
    def add(self, seen: Seen, state: State, **extra: Any) -> int:
        """Insert one job directly (a manual upload, a URL import)."""

    @abc.abstractmethod
    def settle(self, decisions: Sequence[Settled]) -> set[int]:
        """Apply settle decisions in one transaction, each only if its row is still settling with the identity it
        was based on; returns the ids changed."""

    # -- claims ---------------------------------------------------------------------------------------------

    def owner(self, worker: str) -> str:
        """The claim owner a worker of this process signs with."""
        return f"{os.getpid()}:{worker}"

    @abc.abstractmethod
    def claim(self, owner: str, limit: int = 1, now: float | None = None) -> list[Job]:
        """Take up to `limit` due jobs for `owner` (in-flight steps first); each comes back with its fence."""

    @abc.abstractmethod
    def claim_id(self, job_id: int, owner: str) -> Job | None:
        """Take one given job if nobody holds it (the `upload` command doing its own work)."""

    @abc.abstractmethod
    def recover(self) -> list[Job]:
        """At daemon start: release the claims left by this node's previous run. Returns them."""

    def let_go(self, job: Job) -> None:
        """This process stops working on the job without a transition (its database went away mid-step, its
        claim was lost): stop extending the lease, so that it runs out and any node may take the job over."""

    @abc.abstractmethod
    def renew(self, job: Job) -> bool:
        """Confirm (and extend) this claim before a side effect that must happen once: False if it is gone."""

    # -- the pipeline's transitions (all guarded by the claim; all return whether they applied) -------------

    @abc.abstractmethod
    def issue_url(self, job: Job, media_id: int, upload_url: str, at: float) -> bool:
        """ready → url_issued, with the media and its upload URL. Not durable (see the pipeline)."""

    @abc.abstractmethod
    def link_sending(self, job: Job, at: float) -> bool:
        """A link job: ready → url_issued, recorded before the import goes out ("maybe sent" from now on)."""

    @abc.abstractmethod
    def restart(self, job: Job, why: str) -> bool:
        """url_issued / uploaded → ready: the media or its upload URL is gone; start again at step 1."""

    @abc.abstractmethod
    def mark_uploaded(self, job: Job, content_hash: str) -> bool:
        """url_issued → uploaded: Studio has the bytes."""

    @abc.abstractmethod
    def skip_captions(self, job: Job) -> bool:
        """Captions are not enabled for the account: complete without them, now and after a restart."""

    @abc.abstractmethod
    def complete(self, job: Job, *, transcoding_status: str | None, at: float, release: bool,
                 media_id: int | None = None, captions_skipped: bool | None = None) -> bool:
        """uploaded (or a link's url_issued) → completed. `release`: nothing follows (after_upload keep), so the
        after-upload step is done and the job is handed back in the same transaction; such a commit need not
        wait for the disk (a lost one costs a second, harmless complete)."""

    @abc.abstractmethod
    def note_transcoding(self, job: Job, status: str | None) -> bool: ...

    @abc.abstractmethod
    def finish(self, job: Job, *, final_path: str | None = None, reason: str | None = None) -> bool:
        """completed: the after-upload step is done (moved, deleted, kept, abandoned); the job is released."""

    @abc.abstractmethod
    def skip(self, job: Job, reason: str, media_id: int | None = None) -> bool:
        """→ skipped (vanished, duplicate of `media_id`), released."""

    @abc.abstractmethod
    def fail(self, job: Job, error: str) -> bool:
        """→ failed, remembering the state it failed at (`retry` resumes there), released."""

    @abc.abstractmethod
    def reschedule(self, job: Job, *, next_attempt_at: float, attempts: int | None = None,
                   last_error: str | None = None) -> bool:
        """Same state, released, not due before `next_attempt_at` (attempts: the new count, if it changed)."""

    @abc.abstractmethod
    def release(self, job: Job, last_error: str | None = None) -> bool:
        """Same state, released (stopping, an outage that pauses the queue)."""

    @abc.abstractmethod
    def resettle(self, job: Job, identity: tuple[int, int, int, int] | None, at: float, last_error: str) -> bool:
        """→ settling again (the file changed under us), forgetting any media / URL; identity: the new
        (size, mtime_ns, inode, device) when the file could be looked at."""

    @abc.abstractmethod
    def set_progress(self, job: Job, bytes_sent: int) -> bool:
        """Transfer progress for `status` and `upload` (not a state change); whether `studio-watch cancel` asked
        for the job meanwhile (the same row, one statement: the PUT in flight learns it at no extra read)."""

    @abc.abstractmethod
    def content_verdict(self, job: Job, content_hash: str) -> tuple[Verdict, int | None]:
        """Record `content_hash` for a job about to be sent, unless the same bytes went to the same target:
        (UPLOAD, None), (DUPLICATE, the earlier media id) or (WAIT, None) while a copy is in flight. One
        transaction (serialised across nodes), so two copies never both go ahead."""

    # -- the machine misbehaving (the daemon's main loop and its storage guard) --------------------------------

    @abc.abstractmethod
    def clamp_times(self, now: float, max_wait: float) -> int:
        """Bring times written under a clock that was wrong back into reach: a wait longer than `max_wait`
        becomes due `now`, a settle clock or creation time in the future becomes `now`. Returns the rows changed."""

    def probe_write(self) -> None:
        """One small durable write: raises StorageFull while the database's disk is still full."""
        self.set_meta("write_probe", str(self.now()))

    def check_same_file(self) -> None:
        """Raise DatabaseReplaced when the database this queue has open is no longer the one its name points at
        (a file deleted or replaced under the daemon). Nothing to check for a database that is not a file."""

    # -- operators ------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def retry(self, ids: Sequence[int] | None) -> Retried:
        """Put failed jobs (the given ones, or all) back at the step they failed at, each unless another job for
        its file is still to be uploaded: the ids moved, and those refused with why."""

    # -- cluster (no-ops for a queue no one shares) -----------------------------------------------------------

    def register_node(self, name: str, pid: int, host: str) -> None:
        """Claim the node name for this process (PostgreSQL: refused while a live daemon holds it)."""

    def node_seen(self, status: dict[str, Any] | None) -> None:
        """Heartbeat: this node is alive (with what it is doing, for `status`)."""

    def on_work(self, wake: Callable[[], None]) -> None:
        """Have `wake()` called whenever another process makes a job ready (PostgreSQL: LISTEN/NOTIFY). A queue
        no one shares needs none: this process's own events wake its workers."""

    def nodes(self) -> list[dict[str, Any]]:
        """The cluster's members, for `status` (empty for a queue no one shares)."""
        return []

    def shared_lock(self, name: str) -> ContextManager[None]:
        """A lock every node of the cluster respects (PostgreSQL: an advisory lock), for one-at-a-time work
        such as an OAuth refresh. A queue no one shares needs none beyond the caller's own."""
        return contextlib.nullcontext()

    # -- timetables (see daemon/expectations.py) ---------------------------------------------------------------

    @abc.abstractmethod
    def watching_since(self, folder: str, now: float | None) -> float | None: ...

    @abc.abstractmethod
    def newest_job_id(self) -> int: ...

    @abc.abstractmethod
    def seen_in(self, folder: str, since: float, until: float) -> list[Job]: ...

    @abc.abstractmethod
    def record_lecture(self, record: LectureRecord) -> bool: ...

    @abc.abstractmethod
    def lecture_late(self, folder: str, lecture: str, job_id: int, now: float) -> bool: ...

    @abc.abstractmethod
    def lectures(self, folder: str | None = None, since: float | None = None, until: float | None = None,
                 outcome: str | None = None, open_at: float | None = None,
                 limit: int | None = None) -> list[LectureRecord]: ...

    # -- moving a queue (`studio-watch migrate`) ----------------------------------------------------------------

    @abc.abstractmethod
    def dump(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """Every job row and every meta entry."""

    @abc.abstractmethod
    def load(self, jobs: Sequence[Mapping[str, Any]], meta: Mapping[str, str]) -> int:
        """Insert another queue's dump into this empty one, ids kept, claims cleared; the number of jobs."""

    @abc.abstractmethod
    def close(self) -> None: ...
