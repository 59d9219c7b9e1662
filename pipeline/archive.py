"""An archive's manifest as SQL: DuckDB views over the Parquet shards, local or in object storage.

Two views: ``all_rows`` (every row ever written, all runs) and ``manifest``,
the archive's current view: per key, the latest ``ok`` row, or the latest row
when the key never succeeded. Object storage goes through the fsspec file
system registered with DuckDB, so no DuckDB extension is downloaded.
"""

from __future__ import annotations

from typing import Any

import duckdb

from . import storage

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


def connect(archive: str, options: dict | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the ``all_rows`` and ``manifest`` views of an archive."""
    con = duckdb.connect()
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    fs, root = storage.filesystem(archive, options)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    files = [f for f in storage.list_files(storage.join(archive, "manifest"), options) if f.endswith(".parquet")]
    if not files:
        raise ArchiveError(f"{archive}: no manifest shards found (not an archive, or nothing committed yet)")
    if protocol not in ("file", "local"):
        con.register_filesystem(fs)
    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    base = f"read_parquet([{listing}], union_by_name=true)"
    cols = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {base}").fetchall()}
    # rows written before coding profiles existed are float32 files
    extra = [] if "numerics" in cols else ["CAST(NULL AS VARCHAR) AS numerics"]
    if "profile" in cols:
        select = f"SELECT * REPLACE (COALESCE(profile, 'float32') AS profile){''.join(', ' + e for e in extra)}"
    else:
        select = "SELECT *, 'float32' AS profile" + "".join(", " + e for e in extra)
    con.execute(f"CREATE OR REPLACE VIEW all_rows AS {select} FROM {base}")
    con.execute(CURRENT_VIEW_SQL)
    return con


def select(con: duckdb.DuckDBPyConnection, where: str | None, view: str = "manifest") -> list[dict[str, Any]]:
    """Rows of a view matching a SQL predicate (``None``: all rows), ordered by key."""
    sql = f"SELECT * FROM {view}" + (f" WHERE ({where})" if where else "") + " ORDER BY key"
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        raise ArchiveError(f"invalid selection {where!r}: {exc}") from exc
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def query(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[list[str], list[tuple]]:
    try:
        cur = con.execute(sql)
    except duckdb.Error as exc:
        raise ArchiveError(f"query failed: {exc}") from exc
    if cur.description is None:
        return [], []
    return [d[0] for d in cur.description], cur.fetchall()
