"""Size and quality statistics, computed in DuckDB: the one statistics path.

The ``stats`` command, the plots and every run's summary read the manifest
through these queries, so an error cause or a mean is derived one way only.
Means add their rows in key order (``avg(x ORDER BY key, x)``): a float sum
depends on its order, and the order rows reach an aggregate is not fixed, so
without it the same archive could report means a last digit apart.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import duckdb

SUMMARY_SQL = """
SELECT
    count(*) FILTER (WHERE codec IS DISTINCT FROM 'none') AS images,
    count(*) FILTER (WHERE status = 'ok' AND codec IS DISTINCT FROM 'none') AS ok,
    count(*) FILTER (WHERE status <> 'ok') AS errors,
    coalesce(sum(source_bytes), 0) AS bytes_in,
    coalesce(sum(bytes) FILTER (WHERE status = 'ok'), 0) AS bytes_out,
    count(*) FILTER (WHERE codec = 'none') AS samples_without_image,
    coalesce(sum(len(members)), 0) AS stored_parts,
    coalesce(sum(list_sum([m.bytes for m in members])), 0) AS stored_parts_bytes,
    count(*) FILTER (WHERE status = 'ok' AND exact = 'bytes') AS exact_bytes,
    count(*) FILTER (WHERE status = 'ok' AND exact = 'pixels') AS exact_pixels,
    avg(bpp ORDER BY key, bpp) FILTER (WHERE status = 'ok') AS mean_bpp,
    quantile_cont(bpp, 0.05) FILTER (WHERE status = 'ok') AS bpp_p5,
    quantile_cont(bpp, 0.50) FILTER (WHERE status = 'ok') AS bpp_p50,
    quantile_cont(bpp, 0.95) FILTER (WHERE status = 'ok') AS bpp_p95,
    avg(psnr ORDER BY key, psnr) FILTER (WHERE status = 'ok') AS mean_psnr,
    quantile_cont(psnr, 0.05) FILTER (WHERE status = 'ok') AS psnr_p5,
    quantile_cont(psnr, 0.50) FILTER (WHERE status = 'ok') AS psnr_p50,
    quantile_cont(psnr, 0.95) FILTER (WHERE status = 'ok') AS psnr_p95,
    avg(CASE WHEN target_met THEN 1.0 ELSE 0.0 END) FILTER (WHERE status = 'ok' AND codec IS DISTINCT FROM 'none')
        AS target_met_share,
    count(*) FILTER (WHERE status = 'ok' AND target_met) AS target_met
FROM {rows}
"""

CAUSES_SQL = """
SELECT trim(split_part(error, ':', 1)) AS cause, count(*) AS n FROM {rows} WHERE status <> 'ok'
GROUP BY cause ORDER BY n DESC, cause
"""

GROUP_SQL = """
SELECT {col} AS name, count(*) AS images, count(*) FILTER (WHERE status = 'ok') AS ok,
       coalesce(sum(bytes) FILTER (WHERE status = 'ok'), 0) AS bytes_out,
       avg(bpp ORDER BY key, bpp) FILTER (WHERE status = 'ok') AS mean_bpp,
       avg(psnr ORDER BY key, psnr) FILTER (WHERE status = 'ok') AS mean_psnr
FROM manifest GROUP BY {col} ORDER BY {col}
"""


CODEC_SQL = """
SELECT codec AS name, count(*) AS images, sum(bytes) AS bytes_out, avg(bpp ORDER BY key, bpp) AS mean_bpp,
       avg(psnr ORDER BY key, psnr) AS mean_psnr,
       count(*) / sum(count(*)) OVER () AS share
FROM {rows} WHERE status = 'ok' AND codec IS DISTINCT FROM 'none' GROUP BY codec ORDER BY codec
"""


def _rows(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cur = con.execute(sql, params or [])
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def totals(con: duckdb.DuckDBPyConnection, rows: str = "manifest", params: list | None = None) -> dict[str, Any]:
    """Counts, bytes, means and quantiles, and errors by cause, over ``rows`` (a view or a subquery)."""
    s = _rows(con, SUMMARY_SQL.format(rows=rows), params)[0]
    s["compression_ratio"] = s["bytes_in"] / s["bytes_out"] if s["bytes_out"] else None
    s["errors_by_cause"] = {r["cause"]: r["n"] for r in _rows(con, CAUSES_SQL.format(rows=rows), params)}
    return s


def archive_stats(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The archive's current view, with per-model and per-run breakdowns."""
    s = totals(con)
    s["per_model"] = _rows(con, GROUP_SQL.format(col="model"))
    s["per_run"] = _rows(con, GROUP_SQL.format(col="run_id"))
    s["per_codec"] = _rows(con, CODEC_SQL.format(rows="manifest"))
    return s


def run_stats(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, Any]:
    """Every row one run wrote, and the keys it archived from more than one input shard."""
    rows = "(SELECT * FROM all_rows WHERE run_id = ?)"
    s = totals(con, rows, [run_id])
    dup = con.execute("SELECT key FROM all_rows WHERE run_id = ? AND status = 'ok' GROUP BY key "
                      "HAVING count(*) > 1 ORDER BY key", [run_id]).fetchall()
    s["duplicate_keys"] = [r[0] for r in dup]
    models = con.execute("SELECT DISTINCT model FROM all_rows WHERE run_id = ? AND status = 'ok' ORDER BY model",
                         [run_id]).fetchall()
    s["models"] = [r[0] for r in models]
    s["per_codec"] = _rows(con, CODEC_SQL.format(rows="(SELECT * FROM all_rows WHERE run_id = ?)"), [run_id])
    return s


def flatten(s: dict[str, Any]) -> list[tuple[str, Any]]:
    """(statistic, value) pairs; grouped statistics become ``per_model.NAME.FIELD``."""
    out: list[tuple[str, Any]] = []
    for k, v in s.items():
        if isinstance(v, dict):
            out += [(f"{k}.{kk}", vv) for kk, vv in v.items()]
        elif isinstance(v, list):
            for r in v:
                out += [(f"{k}.{r['name']}.{kk}", vv) for kk, vv in r.items() if kk != "name"]
        else:
            out.append((k, v))
    return out


def format_table(columns: list[str], rows: list[tuple | list]) -> str:
    cells = [[_fmt(v) for v in r] for r in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)


def format_csv(columns: list[str], rows: list[tuple | list]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows(rows)
    return buf.getvalue()


def format_json(columns: list[str], rows: list[tuple | list]) -> str:
    return json.dumps([dict(zip(columns, r)) for r in rows], default=str)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    return "" if v is None else str(v)


def stats_text(s: dict[str, Any]) -> str:
    head = [
        ("images", s["images"]), ("ok", s["ok"]), ("errors", s["errors"]),
        ("bytes in", s["bytes_in"]), ("bytes out", s["bytes_out"]),
        ("compression ratio", s["compression_ratio"]),
        ("bpp mean / p5 / p50 / p95", _quad(s, "bpp")), ("PSNR mean / p5 / p50 / p95", _quad(s, "psnr")),
        ("share meeting target", s["target_met_share"]),
        ("exact: original bytes / pixels back", f"{s['exact_bytes']} / {s['exact_pixels']}"),
        ("other parts stored (files, bytes)", f"{s['stored_parts']} ({s['stored_parts_bytes']} bytes)"),
        ("samples without an image", s["samples_without_image"]),
    ]
    out = [format_table(["statistic", "value"], head)]
    if s["errors_by_cause"]:
        out.append(format_table(["error cause", "images"], list(s["errors_by_cause"].items())))
    for title, key in (("model", "per_model"), ("run", "per_run")):
        cols = [title, "images", "ok", "bytes_out", "mean_bpp", "mean_psnr"]
        out.append(format_table(cols, [[r["name"], r["images"], r["ok"], r["bytes_out"], r["mean_bpp"],
                                        r["mean_psnr"]] for r in s[key]]))
    cols = ["codec", "images", "bytes_out", "mean_bpp", "mean_psnr", "share_won"]
    out.append(format_table(cols, [[r["name"], r["images"], r["bytes_out"], r["mean_bpp"], r["mean_psnr"], r["share"]]
                                   for r in s.get("per_codec", [])]))
    return "\n\n".join(out)


def _quad(s: dict[str, Any], k: str) -> str:
    vals = [s[f"mean_{k}"], s[f"{k}_p5"], s[f"{k}_p50"], s[f"{k}_p95"]]
    return " / ".join("-" if v is None else f"{v:.3f}" for v in vals)


def plot_distributions(con: duckdb.DuckDBPyConnection, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = con.execute("SELECT codec, bpp, psnr FROM manifest WHERE status = 'ok' AND codec IS DISTINCT FROM 'none'"
                       ).fetchall()
    codecs = sorted({r[0] or "msinn" for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for i, (ax, label) in enumerate(zip(axes, ("bits per pixel", "PSNR (dB)"))):
        per = [[r[i + 1] for r in rows if (r[0] or "msinn") == c and r[i + 1] is not None] for c in codecs]
        ax.hist(per, bins=30, stacked=True, label=codecs)  # one colour per codec: which format won where
        ax.set_xlabel(label)
        ax.set_ylabel("images")
    if len(codecs) > 1:
        axes[0].legend(title="codec")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
