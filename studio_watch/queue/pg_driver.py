"""psycopg, and its errors said as the queue's: the one module that imports the PostgreSQL driver.

A connection is opened here (autocommit, rows as dicts, a short connect timeout), the shared SQL is translated
into PostgreSQL's dialect here, and what the driver raises becomes one of the errors the daemon acts on: a lost
or unreachable server DatabaseUnavailable (work waits, the next call reconnects), a server whose disk is full
(SQLSTATE 53100) StorageFull (the queue pauses until a write succeeds, as on a full SQLite disk).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Sequence

from studio_watch.errors import ConfigError, DatabaseUnavailable, StorageFull
from studio_watch.queue.backend import Row

try:
    import psycopg
    from psycopg.rows import dict_row
except ImportError:  # pragma: no cover - the optional extra is not installed
    psycopg = None  # type: ignore[assignment]

CONNECT_TIMEOUT = 5  # seconds: a node must notice an unreachable server quickly, and say so


def require() -> None:
    """Raise ConfigError when psycopg (the optional extra) is not installed."""
    if psycopg is None:
        raise ConfigError("state_db is a postgresql:// URI, but psycopg is not installed: "
                          "pip install 'studio-watch[postgresql]'")


def connect(uri: str, *, where: str, node: str, password: str | None) -> Any:
    """A new autocommit connection. Raises DatabaseUnavailable (unreachable, refused) or ConfigError (a
    malformed URI), each naming `where` (the URI without its password)."""
    kwargs: dict[str, Any] = {"autocommit": True, "row_factory": dict_row, "connect_timeout": CONNECT_TIMEOUT,
                              "application_name": f"studio-watch {node}"[:63]}
    if password is not None:
        kwargs["password"] = password
    try:
        return psycopg.connect(uri, **kwargs)
    except psycopg.OperationalError as exc:
        raise DatabaseUnavailable(f"{where}: {first_line(exc)}") from None
    except psycopg.ProgrammingError as exc:  # a malformed URI
        raise ConfigError(f"state_db: {where}: {first_line(exc)}") from None


@contextlib.contextmanager
def spoken(where: str, on_lost: Callable[[], None] = lambda: None) -> Iterator[None]:
    """The driver's errors inside the block as the queue's: a full disk StorageFull (the server is up, its disk is
    not: pause, do not reconnect), a lost connection DatabaseUnavailable, once `on_lost` has forgotten it."""
    try:
        yield
    except psycopg.errors.DiskFull as exc:
        raise StorageFull(f"{where}: the database server cannot write: {first_line(exc)} (free space on its disk; "
                          "the queue resumes by itself)") from None
    except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
        on_lost()
        raise DatabaseUnavailable(f"{where}: {first_line(exc)}") from None


def alive(conn: Any) -> bool:
    """Does this connection still answer? (An idle connection does not notice a server restart until it is
    used.)"""
    if conn is None or conn.closed:
        return False
    try:
        conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def translate(sql: str) -> str:
    """The shared SQL (SQLite's dialect) in PostgreSQL's: `%s` placeholders, IS NOT DISTINCT FROM."""
    return sql.replace("%", "%%").replace(" IS ?", " IS NOT DISTINCT FROM ?").replace("?", "%s")


class PgTx:
    """One transaction's statements on a cursor, translated once per distinct statement (`cache`)."""

    __slots__ = ("cur", "_cache")

    def __init__(self, cur: Any, cache: dict[str, str]) -> None:
        self.cur, self._cache = cur, cache

    def _sql(self, sql: str) -> str:
        out = self._cache.get(sql)
        if out is None:
            out = self._cache[sql] = translate(sql)
        return out

    def rows(self, sql: str, args: Sequence[Any] = ()) -> list[Row]:
        self.cur.execute(self._sql(sql), tuple(args))
        return self.cur.fetchall() if self.cur.description else []

    def one(self, sql: str, args: Sequence[Any] = ()) -> Row | None:
        rows = self.rows(sql, args)
        return rows[0] if rows else None

    def run(self, sql: str, args: Sequence[Any] = ()) -> int:
        self.cur.execute(self._sql(sql), tuple(args))
        return self.cur.rowcount
