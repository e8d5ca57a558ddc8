"""Timetables in the queue: what each watched folder saw by when, since when it is judged, and the one verdict
on each expected lecture (recorded, missing, late), stored so that a missing recording is alerted once, by one
node (see daemon/expectations.py)."""

from __future__ import annotations

from studio_watch.queue.backend import SqlBackend, as_bytes, as_dict, as_job
from studio_watch.queue.model import Job, LectureRecord, lecture_from_row


class LectureRecords(SqlBackend):
    """The shared statements on `timetable_watch` and `lectures` (and the files a folder saw)."""

    def watching_since(self, folder: str, now: float | None) -> float | None:
        """When this folder's timetable began to be judged (set by the first call with `now`; lectures before are
        not judged). With `now` None, only read (None: never judged)."""
        if now is None:
            row = self._read_one("SELECT since FROM timetable_watch WHERE folder = ?", (as_bytes(folder),))
            return None if row is None else float(row["since"])
        with self._tx() as tx:
            tx.run("INSERT INTO timetable_watch (folder, since) VALUES (?, ?) ON CONFLICT DO NOTHING",
                   (as_bytes(folder), now))
            row = tx.one("SELECT since FROM timetable_watch WHERE folder = ?", (as_bytes(folder),))
            assert row is not None
            return float(row["since"])

    def seen_in(self, folder: str, since: float, until: float) -> list[Job]:
        """The files first seen in a watched folder between two instants (a recursive folder's subfolders too)."""
        rows = self._read("SELECT * FROM jobs WHERE folder = ? AND created_at >= ? AND created_at <= ? AND "
                          "kind = 'file' ORDER BY created_at, id", (as_bytes(folder), since, until))
        return [as_job(r) for r in rows]

    def record_lecture(self, record: LectureRecord) -> bool:
        """Store a verdict unless the lecture already has one; True when this call stored it (in a cluster:
        the one node whose call stored it, so a missing recording is alerted once)."""
        with self._tx() as tx:
            return tx.run(
                "INSERT INTO lectures (folder, lecture, summary, zone, starts_at, ends_at, due_at, late_until, "
                "outcome, job_id, judged_at, resolved_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (as_bytes(record.folder), record.lecture, record.summary, record.zone, record.starts_at,
                 record.ends_at, record.due_at, record.late_until, record.outcome, record.job_id, record.judged_at,
                 record.resolved_at)) == 1

    def lecture_late(self, folder: str, lecture: str, job_id: int, now: float) -> bool:
        """A missing lecture's file turned up: missing becomes late (True only for the call that changed it)."""
        with self._tx() as tx:
            return tx.run("UPDATE lectures SET outcome = 'late', job_id = ?, resolved_at = ? WHERE folder = ? "
                          "AND lecture = ? AND outcome = 'missing'", (job_id, now, as_bytes(folder), lecture)) == 1

    def lectures(self, folder: str | None = None, since: float | None = None, until: float | None = None,
                 outcome: str | None = None, open_at: float | None = None,
                 limit: int | None = None) -> list[LectureRecord]:
        """Verdicts, newest lecture first: by folder, lectures starting in [since, until), by outcome, or (open_at)
        missing ones that a late file may still resolve."""
        where, args = [], []
        for clause, value in (("folder = ?", as_bytes(folder)), ("starts_at >= ?", since),
                              ("starts_at < ?", until), ("outcome = ?", outcome),
                              ("outcome = 'missing' AND late_until >= ?", open_at)):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = "SELECT * FROM lectures" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY starts_at DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        return [lecture_from_row(as_dict(r)) for r in self._read(sql, args)]
