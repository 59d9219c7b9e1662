"""A ``--where`` selection: one expression over the manifest's columns, parsed, checked, and written anew.

A selection comes from a command line or a spec file that others may write
(a nightly job's spec), so it may only filter rows: it is parsed by DuckDB on
its own, every node of its syntax tree is checked against an allow-list
(columns of the manifest, constants, comparisons, boolean logic, arithmetic
and a list of plain functions; no subqueries, settings, table functions,
parameters or anything that reads, writes or allocates at will), and the
query is then built from DuckDB's own rendering of the checked tree, never
from the user's text. So ``true)) OR ((true`` cannot escape the
``status = 'ok'`` guard that restore and verify put around it, and a
trailing ``LIMIT`` or comment cannot ride along.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from . import sql

MAX_LENGTH = 4096  # characters of a selection
FUNCTIONS = frozenset({
    # arithmetic, string matching and concatenation as DuckDB names them in its syntax tree
    "+", "-", "*", "/", "//", "%", "~~", "!~~", "~~*", "!~~*", "~~~", "||",
    "abs", "round", "floor", "ceil", "ceiling", "sign", "least", "greatest", "trunc",
    "lower", "upper", "length", "strlen", "starts_with", "ends_with", "contains", "prefix", "suffix",
    "substr", "substring", "left", "right", "trim", "ltrim", "rtrim", "regexp_matches", "regexp_full_match",
    "now", "current_date", "current_timestamp", "today", "date_trunc", "date_part", "datepart", "year", "month",
    "day", "hour", "epoch", "to_days", "to_hours", "to_minutes", "to_seconds", "isnan", "isfinite", "isinf",
})
CLASSES = frozenset({"COLUMN_REF", "CONSTANT", "COMPARISON", "CONJUNCTION", "OPERATOR", "BETWEEN", "CASE", "CAST",
                     "FUNCTION", "TYPE"})
PREFIX = "SELECT * FROM manifest WHERE "


class SelectionError(ValueError):
    """A selection that is not one allowed condition on the manifest's rows; says which part and why."""


def _parse(text: str) -> dict:
    con = sql.connection()
    try:
        return json.loads(con.execute("SELECT json_serialize_sql(?)", [text]).fetchone()[0])
    finally:
        con.close()


def _check_node(node: object, columns: frozenset[str], where: str) -> None:
    if isinstance(node, list):
        for item in node:
            _check_node(item, columns, where)
        return
    if not isinstance(node, dict):
        return
    cls = node.get("class")
    if cls is not None:
        if cls not in CLASSES:
            raise SelectionError(f"invalid selection {where!r}: {cls.lower()} expressions are not allowed, only "
                                 "conditions on the manifest's columns")
        if cls == "COLUMN_REF":
            names = node.get("column_names") or []
            if len(names) != 1 or names[0].lower() not in columns:
                raise SelectionError(f"invalid selection {where!r}: {'.'.join(names)!r} is not a column of the "
                                     "manifest")
        if cls == "FUNCTION":
            name = str(node.get("function_name", "")).lower()
            if name not in FUNCTIONS or node.get("schema") or node.get("catalog") or node.get("filter") or \
                    node.get("distinct") or (node.get("order_bys") or {}).get("orders"):
                allowed = ", ".join(sorted(f for f in FUNCTIONS if f[0].isalpha()))
                raise SelectionError(f"invalid selection {where!r}: function {name!r} is not allowed in a "
                                     f"selection (allowed: {allowed}, operators and comparisons)")
    for value in node.values():
        _check_node(value, columns, where)


def checked(where: str, columns: Iterable[str]) -> str:
    """``where`` as DuckDB renders it after checking every node; SelectionError (naming the cause) otherwise."""
    if not isinstance(where, str) or not where.strip():
        raise SelectionError("invalid selection: empty")
    if len(where) > MAX_LENGTH:
        raise SelectionError(f"invalid selection: {len(where)} characters, over the limit of {MAX_LENGTH}")
    parsed = _parse(PREFIX + where)
    if parsed.get("error"):
        raise SelectionError(f"invalid selection {where!r}: {parsed.get('error_message')}")
    statements = parsed.get("statements", [])
    template = _parse(PREFIX + "true")["statements"][0]["node"]
    node = statements[0].get("node", {}) if len(statements) == 1 else {}
    clause = node.get("where_clause")
    # the statement must be the template but for its condition: no LIMIT, ORDER, GROUP BY, CTE or set operation
    # (select list and table come from the fixed prefix; only their text positions differ)
    fixed = set(template) - {"where_clause", "select_list", "from_table"}
    if clause is None or set(node) != set(template) or any(node[k] != template[k] for k in fixed):
        raise SelectionError(f"invalid selection {where!r}: it must be one condition on the rows of the manifest")
    _check_node(clause, frozenset(c.lower() for c in columns), where)
    rendered = _parse_back({**parsed, "statements": [{**statements[0], "node": {**template, "where_clause": clause}}]})
    if not rendered.startswith(PREFIX):
        raise SelectionError(f"invalid selection {where!r}: cannot be rendered as a condition")
    return rendered[len(PREFIX):]


def _parse_back(parsed: dict) -> str:
    con = sql.connection()
    try:
        return con.execute("SELECT json_deserialize_sql(?)", [json.dumps(parsed)]).fetchone()[0]
    finally:
        con.close()


def guarded(where: str | None, columns: Iterable[str], guard: str | None = None) -> str | None:
    """The WHERE condition to run: the checked selection, inside ``guard`` when one is given."""
    if where is None or not str(where).strip():
        return guard
    expr = checked(where, columns)
    return f"({guard}) AND ({expr})" if guard else expr
