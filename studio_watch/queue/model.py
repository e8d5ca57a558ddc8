"""What the queue holds, whichever database holds it: the states, the one transition table, the named
sub-states, and the `Job` and `Seen` values. No SQL here (that is the backends'), no I/O.

The path of one file (DESIGN.md): settling → ready → url_issued → uploaded → completed → after-upload.
Two steps hide inside a state; they are named here (`Step`) so that the pipeline and the commands say which
one they mean instead of testing fields:

- `completed` with the after-upload action (move / delete / waiting for processing) still to do:
  `Step.AFTER_UPLOAD`; once it is done (or there is none): `Step.DONE`.
- a link job (a .url/.webloc import) in `url_issued` means its create-from-URL request *may have been sent*:
  `Step.LINK_MAYBE_SENT`; it is looked for in Studio before it is sent again.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any, Mapping, NamedTuple


class State(str, Enum):
    SETTLING = "settling"
    READY = "ready"
    URL_ISSUED = "url_issued"
    UPLOADED = "uploaded"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"


STATES = tuple(s.value for s in State)
TERMINAL = (State.COMPLETED.value, State.FAILED.value, State.SKIPPED.value)
WAITING = (State.SETTLING.value, State.READY.value, State.URL_ISSUED.value, State.UPLOADED.value)
CANCELLED = "cancelled"  # the reason of a job cancelled by `studio-watch cancel` (state skipped)
CANCEL_REQUESTED = "cancel requested"  # the reason while its worker has not yet reached its next step
# What people read for each state (the names above stay in --json, --state, the metrics and the database)
STATE_WORDS = {"settling": "settling", "ready": "waiting", "url_issued": "sending", "uploaded": "confirming",
               "completed": "done", "failed": "failed", "skipped": "skipped"}

_S = State
# The one transition table: from a state, the states a guarded transition may move a job to. Staying in the
# same state (a reschedule, a release, a fact recorded on the way) is always allowed. `retry` is the only way
# out of `failed`; nothing leaves `skipped`; `completed` only gains its after-upload facts.
TRANSITIONS: Mapping[State, frozenset[State]] = {
    _S.SETTLING: frozenset({_S.READY, _S.SKIPPED, _S.FAILED}),
    _S.READY: frozenset({_S.URL_ISSUED, _S.SKIPPED, _S.FAILED, _S.SETTLING}),
    # url_issued → completed: a link import, whose one request both sends and completes
    _S.URL_ISSUED: frozenset({_S.UPLOADED, _S.READY, _S.COMPLETED, _S.SKIPPED, _S.FAILED, _S.SETTLING}),
    # uploaded → skipped: `studio-watch cancel` before the complete (the bytes stay a pending upload in Studio)
    _S.UPLOADED: frozenset({_S.COMPLETED, _S.READY, _S.FAILED, _S.SETTLING, _S.SKIPPED}),
    _S.COMPLETED: frozenset(),
    _S.FAILED: frozenset({_S.READY, _S.URL_ISSUED, _S.UPLOADED}),  # `retry`, at the step it failed at
    _S.SKIPPED: frozenset(),
}


def allowed(source: State, target: State) -> bool:
    return source is target or target in TRANSITIONS[source]


class IllegalTransition(ValueError):
    """A caller asked for a move the transition table does not have: a bug, never a runtime condition."""


def check_transition(source: State, target: State) -> None:
    if not allowed(source, target):
        raise IllegalTransition(f"a job cannot go from {source.value} to {target.value}")


class Step(str, Enum):
    """What happens next to a job: its state, with the hidden sub-states named."""

    SETTLING = "settling"            # waiting for the file to stop changing
    READY = "ready"                  # next: ask for an upload URL (or, a link, send the import)
    SENDING = "sending"              # url_issued: PUT the bytes to the stored URL
    LINK_MAYBE_SENT = "link_maybe_sent"  # url_issued link: the import may have gone out; reconcile first
    COMPLETING = "completing"        # uploaded: Studio has the bytes; only complete is left
    AFTER_UPLOAD = "after_upload"    # completed, the move / delete / wait for processing still to do
    DONE = "done"                    # completed and nothing left
    FAILED = "failed"
    SKIPPED = "skipped"


def step_of(state: State, kind: str, after_done: bool) -> Step:
    if state is State.URL_ISSUED:
        return Step.LINK_MAYBE_SENT if kind == "link" else Step.SENDING
    if state is State.UPLOADED:
        return Step.COMPLETING
    if state is State.COMPLETED:
        return Step.DONE if after_done else Step.AFTER_UPLOAD
    return Step(state.value)


# Steps a worker can carry forward (claimable when due and unheld), in the order claims take them: finish what
# is in flight before starting new uploads.
WORK_STEPS = (Step.AFTER_UPLOAD, Step.SENDING, Step.LINK_MAYBE_SENT, Step.COMPLETING, Step.READY)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    state: State
    path: str | None
    folder: str | None
    source_url: str | None
    is_external: bool
    collection_id: int | None
    user_id: int | None
    title: str | None
    description: str | None
    auto_caption: bool
    captions_skipped: bool
    after_upload: str
    after_upload_when: str
    move_to: str | None
    after_done: bool
    final_path: str | None
    duplicates: str
    settle_seconds: float
    size: int | None
    mtime_ns: int | None
    inode: int | None
    device: int | None
    stable_since: float | None
    content_hash: str | None
    media_id: int | None
    upload_url: str | None
    url_issued_at: float | None
    transcoding_status: str | None
    completed_at: float | None
    attempts: int
    next_attempt_at: float
    last_error: str | None
    reason: str | None
    claimed_by: str | None   # the claim's owner: "<worker>" (SQLite) or "<node>/<pid>/<worker>" (PostgreSQL)
    claimed_at: float | None  # with claimed_by, the claim's fence: every transition checks both
    bytes_sent: int | None
    progress_at: float | None
    created_at: float
    updated_at: float
    failed_state: str | None  # the state a failed job was in when it failed
    lease_expires_at: float | None = None  # PostgreSQL: another node may take the job over after this

    @property
    def identity(self) -> tuple[int | None, int | None, int | None]:
        return (self.inode, self.size, self.mtime_ns)

    @property
    def step(self) -> Step:
        return step_of(self.state, self.kind, self.after_done)

    def evolve(self, **changes: Any) -> Job:
        """A copy with `changes`: dataclasses.replace without re-running __init__ over forty fields (the pipeline
        makes several copies per file, and replace() was the costliest Python in a small file's path)."""
        job = object.__new__(Job)
        job.__dict__.update(self.__dict__, **changes)
        return job

    @property
    def tries(self) -> int:
        """Attempts made: the failed ones counted in `attempts`, plus the one that ended the job or is under way
        (none yet for a job still waiting its first turn)."""
        done = self.state in (State.COMPLETED, State.FAILED) or self.claimed_by is not None
        started = self.attempts > 0 or self.state in (State.URL_ISSUED, State.UPLOADED)
        return self.attempts + (1 if done or (started and self.attempts == 0) else 0)

    @property
    def display_path(self) -> str:
        """The path for humans: undecodable bytes shown as escapes, never a crash."""
        return self.source_url or "" if self.path is None else show_path(self.path)

    def summary(self) -> dict[str, Any]:
        """The job for `jobs --json`, `status --json` and alerts."""
        return {"id": self.id, "state": self.state.value, "kind": self.kind, "path": self.display_path,
                "media_id": self.media_id, "attempts": self.attempts, "last_error": self.last_error,
                "reason": self.reason, "collection_id": self.collection_id, "user_id": self.user_id,
                "title": self.title, "size": self.size, "content_hash": self.content_hash,
                "captions_skipped": self.captions_skipped, "transcoding_status": self.transcoding_status,
                "final_path": None if self.final_path is None else show_path(self.final_path),
                "created_at": self.created_at, "updated_at": self.updated_at}


JOB_FIELDS = frozenset(Job.__dataclass_fields__)
PATH_COLUMNS = ("path", "folder", "move_to", "final_path")
TEXT_COLUMNS = frozenset({"last_error", "reason"})  # error text: redacted before it is stored (logs.redact)
# Once the bytes are in Studio (or the job ended without needing them), the upload URL is never used again: its
# signature is a secret that need not be kept any longer.
URL_SPENT = frozenset({State.UPLOADED, State.COMPLETED, State.SKIPPED})
FLAG_COLUMNS = ("is_external", "auto_caption", "captions_skipped", "after_done")


def job_from_row(values: dict[str, Any]) -> Job:
    """The one place where a database row (as a column → value mapping, from either backend) becomes a Job."""
    values = {k: v for k, v in values.items() if k in JOB_FIELDS}
    for name in PATH_COLUMNS:
        if values[name] is not None:
            values[name] = os.fsdecode(bytes(values[name]))
    for name in FLAG_COLUMNS:
        values[name] = bool(values[name])
    values["state"] = State(values["state"])
    return Job(**values)


def show_path(path: str) -> str:
    """A path for humans and logs: bytes that are not UTF-8 shown as escapes, never a crash."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


@dataclass(frozen=True)
class LectureRecord:
    """The verdict on one expected lecture (see expect/judge.py): recorded, missing, or late."""

    folder: str
    lecture: str  # the lecture's key: UID and start instant
    summary: str
    zone: str | None
    starts_at: float
    ends_at: float
    due_at: float
    late_until: float
    outcome: str
    job_id: int | None
    judged_at: float
    resolved_at: float | None = None

    def summary_dict(self) -> dict[str, Any]:
        return {"folder": show_path(self.folder), "lecture": self.lecture, "summary": self.summary,
                "zone": self.zone, "start": self.starts_at, "end": self.ends_at, "outcome": self.outcome,
                "job_id": self.job_id, "judged_at": self.judged_at, "resolved_at": self.resolved_at}


def lecture_from_row(values: dict[str, Any]) -> LectureRecord:
    """The one place where a `lectures` row becomes a LectureRecord."""
    values = dict(values)
    values["folder"] = os.fsdecode(bytes(values["folder"]))
    return LectureRecord(**values)


@dataclass(frozen=True)
class Seen:
    """A file the watcher found: its path, its watched folder's settings and one stat() of it."""

    path: str
    folder: str
    size: int
    mtime_ns: int
    inode: int
    device: int
    collection_id: int | None
    user_id: int | None
    auto_caption: bool
    after_upload: str
    move_to: str | None
    duplicates: str
    settle_seconds: float
    after_upload_when: str = "completed"
    kind: str = "file"
    changed_at: float | None = None  # when the file last changed by this machine's clock, where that is known

    @property
    def identity(self) -> tuple[int, int, int]:
        return (self.inode, self.size, self.mtime_ns)


@dataclass(frozen=True)
class Settled:
    """One settle decision about a settling job, applied only if the row still shows `identity` (a watcher on
    this or another node may have seen the file change since it was looked at)."""

    job_id: int
    identity: tuple[int | None, int | None, int | None]
    state: State = State.SETTLING  # READY, SKIPPED or FAILED; SETTLING: still settling, with the facts below
    facts: Mapping[str, Any] = None  # type: ignore[assignment]  # settle facts: see SETTLE_FACTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "facts", dict(self.facts or {}))
        check_transition(State.SETTLING, self.state)
        bad = set(self.facts) - SETTLE_FACTS
        if bad:
            raise ValueError(f"not a settle fact: {sorted(bad)}")


SETTLE_FACTS = frozenset({"size", "mtime_ns", "inode", "device", "stable_since", "title", "description",
                          "next_attempt_at", "reason", "last_error",
                          "media_id"})  # a file marked as uploaded by a lost database: skipped, with its media


class Verdict(str, Enum):
    """content_verdict's answer for a job about to be sent."""

    UPLOAD = "upload"
    DUPLICATE = "duplicate"  # the same bytes went to the same target: skip, pointing at that media
    WAIT = "wait"            # another job with the same bytes is in flight: look again later


class Retried(NamedTuple):
    """What `retry` did: the jobs put back (by id, ascending), and those refused with why ({id: reason})."""

    moved: list[int]
    refused: dict[int, str]


def settle_clock(mtime_ns: int, last_seen: float, now: float) -> float:
    """When a file that was just seen to change last changed: its mtime if that is believable, else now.

    The mtime is used when it falls between the previous look and now, so a file closed a while ago is not
    made to wait a whole extra settle period; a clock-skewed or preserved mtime falls back to now.
    """
    mtime = mtime_ns / 1e9
    return mtime if last_seen <= mtime <= now else now
