"""The SQL both backends share, every statement written once, assembled into one queue.

The statements live by what they do: reading (`reads.py`), the guarded transitions of the pipeline
(`transitions.py`), the operator's verbs (`admin.py`), timetables (`lectures.py`); what each backend supplies
to them (a transaction, the hooks where the databases really differ) is `backend.py`'s. SQLite and PostgreSQL
subclass `SqlQueue` and fill in the hooks.
"""

from __future__ import annotations

from studio_watch.queue.admin import OperatorVerbs
from studio_watch.queue.lectures import LectureRecords
from studio_watch.queue.reads import QueueReads
from studio_watch.queue.transitions import Transitions


class SqlQueue(QueueReads, Transitions, OperatorVerbs, LectureRecords):
    """The named transitions and queries over a `jobs` table, for any backend that supplies the hooks of
    `backend.SqlBackend`."""
