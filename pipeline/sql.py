"""DuckDB connections, every one bounded in memory and in time.

A selection, a summary or a query that would take the machine's memory or
run for hours stops with an error instead. The limits are the same for
every connection of the project; raise them for big archives through the
environment (``MSINN_SQL_MEMORY``, default 1GB; ``MSINN_SQL_SECONDS``,
default 600).
"""

from __future__ import annotations

import os

import duckdb

SQL_MEMORY = os.environ.get("MSINN_SQL_MEMORY", "1GB")
SQL_SECONDS = float(os.environ.get("MSINN_SQL_SECONDS", "600"))


def connection(database: str = ":memory:", memory: str | None = None) -> duckdb.DuckDBPyConnection:
    """A new connection with a memory limit, a statement time limit, no extension downloads and no progress bar
    on stderr."""
    con = duckdb.connect(database)
    con.execute(f"SET memory_limit='{memory or SQL_MEMORY}'")
    con.execute(f"SET max_execution_time={int(SQL_SECONDS * 1000)}")
    con.execute("SET enable_progress_bar=false")
    con.execute("SET autoinstall_known_extensions=false")
    con.execute("SET autoload_known_extensions=false")
    return con
