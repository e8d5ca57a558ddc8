"""The operator's verbs on the queue: cancel, forget and prune. Each is one guarded statement per row in the
backends (JobQueue.cancel, delete_unclaimed, finished_before in queue/sql.py), so a worker claiming a job at the
same moment wins or loses cleanly: a claimed job is never deleted, and a job in flight is never changed under
its worker (a cancel is a request its worker honours at its next step). What may be deleted without a duplicate
is decided by daemon/housekeeping.py, which looks at the files.
"""

from __future__ import annotations

from studio_watch.queue.model import CANCEL_REQUESTED, CANCELLED

__all__ = ["CANCELLED", "CANCEL_REQUESTED"]
