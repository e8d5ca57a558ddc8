"""The one retry policy: what to do about each error, and how long to wait before the next try.

Two layers, one owner each (README "Two retry layers"): inside the client, `client_retries` says whether a
seconds-scale blip is tried again at once; whatever it gives up on reaches the queue, where `decide` picks one
action per error. Every wait, in both layers and in URL imports, is `backoff`.
"""

from __future__ import annotations

import random
from enum import Enum

from studio_watch.config import RetryConfig
from studio_watch.errors import (AuthError, DatabaseUnavailable, LeaseLost, PermanentError, SourceChanged,
                                 SourceUnreadable, SourceVanished, Stopping, StudioError, TransientError)

MAX_CLIENT_WAIT = 30.0  # a Retry-After longer than this is left to the queue's own backoff


class Action(str, Enum):
    """What the queue does with a job whose step raised."""

    LET_GO = "let_go"  # the claim is gone (LeaseLost: another node took the job over) or the database is down:
    # change nothing more; the job resumes from its last committed step, there or after the lease runs out
    RELEASE = "release"  # stopping: hand the job back unchanged, to resume at this step next time
    PAUSE = "pause"  # Studio refuses the token: pause the whole queue, the job keeps its attempts
    PROBE = "probe"  # a transient failure: ask /ping whether Studio is down (pause) or it was this job (reschedule)
    RESCHEDULE = "reschedule"  # try this job again after `backoff`; fail after max_attempts
    FAIL = "fail"  # nothing will make it work: failed (a completed job only abandons its after-upload step)
    SKIP = "skip"  # the file vanished
    RESETTLE = "resettle"  # the file changed under the upload: settle again, then upload the new content
    CRASH = "crash"  # a bug: log it with its traceback and reschedule, never kill the worker


def decide(exc: BaseException, stopping: bool = False) -> Action:
    """The queue's action for an error a job's step raised (`stopping`: the daemon's stop had begun, and
    interrupted the step's I/O, so the error says nothing about the job)."""
    if isinstance(exc, (LeaseLost, DatabaseUnavailable)):  # nothing can be committed for this claim, stopping or not
        return Action.LET_GO
    if stopping or isinstance(exc, Stopping):
        return Action.RELEASE
    if isinstance(exc, AuthError):
        return Action.PAUSE
    if isinstance(exc, TransientError):  # Unreachable too: the upload host may be down while the API is up
        return Action.PROBE
    if isinstance(exc, (PermanentError, SourceUnreadable)):
        return Action.FAIL
    if isinstance(exc, SourceVanished):
        return Action.SKIP
    if isinstance(exc, SourceChanged):
        return Action.RESETTLE
    if isinstance(exc, StudioError):  # anything the client did not classify more precisely
        return Action.RESCHEDULE
    return Action.CRASH


def studio_down(probe_error: BaseException | None) -> bool:
    """After a job's transient failure, the answer of one /ping: is the API itself down (pause the queue)?"""
    return isinstance(probe_error, (TransientError, AuthError))


def client_retries(exc: BaseException, tries: int, retry: RetryConfig) -> bool:
    """Inside the client: try a request again after `tries` tries that ended in `exc`?"""
    hint = getattr(exc, "retry_after", None) or 0.0
    return isinstance(exc, TransientError) and tries < retry.request_tries and hint <= MAX_CLIENT_WAIT


def backoff(attempt: int, retry: RetryConfig, hint: float | None = None, first: float | None = None) -> float:
    """The wait before try `attempt + 1`: exponential from `first` (default retry.initial_seconds) with jitter,
    at least the server's hint (Retry-After), at most retry.max_seconds."""
    base = min(retry.max_seconds, (retry.initial_seconds if first is None else first) * 2 ** max(0, attempt - 1))
    return min(retry.max_seconds, max(base * random.uniform(0.5, 1.0), hint or 0.0))
