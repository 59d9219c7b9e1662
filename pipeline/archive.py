"""An archive's manifest as SQL: DuckDB views over the Parquet shards, local or in object storage.

Two views: ``all_rows`` (every row ever written, all runs) and ``manifest``,
the archive's current view: per key, the latest ``ok`` row, or the latest row
when the key never succeeded. Object storage goes through the fsspec file
system registered with DuckDB, so no DuckDB extension is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import duckdb
import pyarrow as pa

from . import sql, storage
from .predicate import SelectionError, guarded
from .storage import is_local

CURRENT_VIEW_SQL = """
CREATE OR REPLACE VIEW manifest AS
SELECT * EXCLUDE (_rank) FROM (
    SELECT *, row_number() OVER (
        PARTITION BY key ORDER BY (status = 'ok') DESC, created_at DESC, run_id DESC
    ) AS _rank
    FROM all_rows
) WHERE _rank = 1
"""


class ArchiveError(ValueError):
    """The archive cannot be read or the query is invalid."""


def connect(archive: str, options: dict | None = None, locked: bool = True) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the ``all_rows`` and ``manifest`` views of an archive.

    ``locked`` (everything but the interactive ``query`` command): the
    connection may read the archive's files and nothing else (no other files,
    no COPY, no ATTACH, no settings changes), so a ``--where`` predicate or a
    spec file's ``where`` cannot reach outside the archive.
    """
    con = sql.connection()
    fs, root = storage.filesystem(archive, options)
    files = [f for f in storage.list_files(storage.join(archive, "manifest"), options) if f.endswith(".parquet")]
    if not files:
        raise ArchiveError(f"{archive}: no manifest shards found (not an archive, or nothing committed yet)")
    if not is_local(fs):
        con.register_filesystem(fs)
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    base = f"read_parquet([{listing}], union_by_name=true)"
    try:
        cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {base}").fetchall()}
        con.execute(f"CREATE OR REPLACE VIEW all_rows AS {_current_columns(cols)} FROM {base}")
        con.execute(CURRENT_VIEW_SQL)
    except duckdb.Error as exc:
        raise _selection_error(exc, None, f"{archive}: cannot read the manifest", what="reading its manifest"
                               ) from None
    if locked:
        folder = storage.join(storage.canonical(archive), "manifest") + "/"
        con.execute("SET allowed_directories=?", [[folder]])
        con.execute("SET enable_external_access=false")
        con.execute("SET lock_configuration=true")
    return con


# What rows of archives written before a column existed mean by its absence (an expression over the
# column, which reads NULL where no shard has it): a row without a profile is a float32 file, an ok row
# without a codec a .msinn file.
PAST_DEFAULTS = {
    "profile": "COALESCE({c}, CASE WHEN {codec} IS NULL OR {codec} = 'msinn' THEN 'float32' END)",
    "codec": "CASE WHEN {c} IS NULL AND status = 'ok' THEN 'msinn' ELSE {c} END",
    "exact": "CASE WHEN {c} IS NULL AND status = 'ok' AND {codec} IS DISTINCT FROM 'none' THEN 'none' ELSE {c} END",
}


def _past(column: str, present: set[str]) -> str:
    """The expression for ``column`` over shards that hold ``present`` (absent columns read NULL)."""
    expr = PAST_DEFAULTS.get(column, "{c}")
    return expr.format(c=column if column in present else "NULL", codec="codec" if "codec" in present else "NULL")


def _current_columns(present: set[str]) -> str:
    """A SELECT list giving every column of today's schema, whatever version wrote the shards."""
    from .manifest import SCHEMA

    replace = [f"{_past(c, present)} AS {c}" for c in PAST_DEFAULTS if c in present]
    added = [f"({_past(f.name, present)})::{_duck_type(f.type)} AS {f.name}" for f in SCHEMA if f.name not in present]
    head = f"SELECT * REPLACE ({', '.join(replace)})" if replace else "SELECT *"
    return head + "".join(", " + a for a in added)


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_list(t):
        return _duck_type(t.value_type) + "[]"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f'"{f.name}" {_duck_type(f.type)}' for f in t) + ")"
    if pa.types.is_string(t):
        return "VARCHAR"
    if pa.types.is_int32(t):
        return "INTEGER"
    if pa.types.is_int64(t):
        return "BIGINT"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    return "TIMESTAMPTZ"


def connect_tables(tables: Iterable, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """The same two views over manifest shards already read (through the retrying storage layer); none: no rows.

    Shards are inserted one at a time, so only one is held as Arrow at once;
    with a ``database`` file, DuckDB keeps the rows there and spills what
    does not fit its memory limit, so a run of millions of rows is
    summarised in bounded memory.
    """
    from .manifest import SCHEMA

    con = sql.connection(database, "512MB" if database != ":memory:" else None)
    con.register("schema_rows", SCHEMA.empty_table())
    con.execute("CREATE TABLE all_rows AS SELECT * FROM schema_rows")
    con.unregister("schema_rows")
    for table in tables:  # shards of older versions lack newer columns: those read as NULL
        con.register("shard_rows", table)
        con.execute("INSERT INTO all_rows BY NAME SELECT * FROM shard_rows")
        con.unregister("shard_rows")
    for column in ("codec", "profile", "exact"):  # the codec first: the others' defaults depend on it
        con.execute(f"UPDATE all_rows SET {column} = {_past(column, set(SCHEMA.names))} WHERE {column} IS NULL")
    con.execute(CURRENT_VIEW_SQL)
    con.execute("SET enable_external_access=false")
    return con


def columns(con: duckdb.DuckDBPyConnection, view: str = "manifest") -> list[str]:
    return [r[0] for r in con.execute(f"DESCRIBE {view}").fetchall()]


def check_predicate(where: str, con: duckdb.DuckDBPyConnection, view: str = "manifest", guard: str | None = None
                    ) -> str:
    """The condition to run for ``where`` (``predicate.guarded``: checked, re-rendered, inside ``guard``), or an
    ArchiveError that says what is wrong with it."""
    try:
        return guarded(where, columns(con, view), guard) or "true"
    except SelectionError as exc:
        raise ArchiveError(str(exc)) from None


def select(con: duckdb.DuckDBPyConnection, where: str | None, view: str = "manifest") -> list[dict[str, Any]]:
    """Rows of a view matching a SQL predicate (``None``: all rows), ordered by key."""
    return [r for batch in iter_select(con, where, view) for r in batch]


ORDERS = {"key": "key", "source": "source_uri, source_index, key"}  # the program's orders, never the user's text


def iter_select(
    con: duckdb.DuckDBPyConnection, where: str | None, view: str = "manifest", batch: int = 4096,
    sample: int | None = None, seed: int = 0, guard: str | None = None, order: str = "key",
) -> Iterator[list[dict[str, Any]]]:
    """The same rows in batches, so a driver never holds a whole archive's manifest; ``sample`` keeps a
    reproducible random subset of that many rows (reservoir sampling in DuckDB). ``guard`` (the program's own
    condition) holds whatever ``where`` (the user's) says."""
    try:
        condition = check_predicate(where, con, view, guard) if where else guard
    except duckdb.Error as exc:  # reading the view's columns runs under the same limits
        raise _selection_error(exc, where, "invalid selection") from None
    text = f"SELECT * FROM {view}" + (f" WHERE {condition}" if condition else "")
    if sample:
        text = f"SELECT * FROM ({text}) USING SAMPLE reservoir({int(sample)} ROWS) REPEATABLE ({int(seed)})"
    if order not in ORDERS:
        raise ValueError(f"order must be one of {sorted(ORDERS)}")
    try:
        cur = con.execute(text + " ORDER BY " + ORDERS[order])
    except duckdb.Error as exc:
        raise _selection_error(exc, where, "invalid selection") from None
    cols = [d[0] for d in cur.description]
    while True:
        try:
            rows = cur.fetchmany(batch)
        except duckdb.Error as exc:  # a streamed result can run over its limits while it is fetched
            raise _selection_error(exc, where, "selection failed") from None
        if not rows:
            return
        yield [dict(zip(cols, r)) for r in rows]


def _selection_error(exc: Exception, where: str | None, failed: str, what: str | None = None) -> ArchiveError:
    """One line for a statement DuckDB stopped: over the time limit (``sql.SQL_SECONDS``), or otherwise."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, duckdb.InterruptException) or "maximum execution time" in text:
        return ArchiveError(f"{what or f'selection {where!r}'} ran over the time limit of {sql.SQL_SECONDS:g} s "
                            "(MSINN_SQL_SECONDS raises it)")
    return ArchiveError(f"{failed} {where!r}: {text}" if what is None else f"{failed}: {text}")


def query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple]]:
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        raise ArchiveError(f"query failed: {exc}") from exc
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()
