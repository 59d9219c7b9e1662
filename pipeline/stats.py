"""Size and quality statistics of an archive's current view, computed in DuckDB."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import duckdb

SUMMARY_SQL = """
SELECT
    count(*) AS images,
    count(*) FILTER (WHERE status = 'ok') AS ok,
    count(*) FILTER (WHERE status <> 'ok') AS errors,
    coalesce(sum(source_bytes), 0) AS bytes_in,
    coalesce(sum(bytes) FILTER (WHERE status = 'ok'), 0) AS bytes_out,
    avg(bpp) FILTER (WHERE status = 'ok') AS mean_bpp,
    quantile_cont(bpp, 0.05) FILTER (WHERE status = 'ok') AS bpp_p5,
    quantile_cont(bpp, 0.50) FILTER (WHERE status = 'ok') AS bpp_p50,
    quantile_cont(bpp, 0.95) FILTER (WHERE status = 'ok') AS bpp_p95,
    avg(psnr) FILTER (WHERE status = 'ok') AS mean_psnr,
    quantile_cont(psnr, 0.05) FILTER (WHERE status = 'ok') AS psnr_p5,
    quantile_cont(psnr, 0.50) FILTER (WHERE status = 'ok') AS psnr_p50,
    quantile_cont(psnr, 0.95) FILTER (WHERE status = 'ok') AS psnr_p95,
    avg(CASE WHEN target_met THEN 1.0 ELSE 0.0 END) FILTER (WHERE status = 'ok') AS target_met_share
FROM manifest
"""

GROUP_SQL = """
SELECT {col} AS name, count(*) AS images, count(*) FILTER (WHERE status = 'ok') AS ok,
       coalesce(sum(bytes) FILTER (WHERE status = 'ok'), 0) AS bytes_out,
       avg(bpp) FILTER (WHERE status = 'ok') AS mean_bpp, avg(psnr) FILTER (WHERE status = 'ok') AS mean_psnr
FROM manifest GROUP BY {col} ORDER BY {col}
"""


def _rows(con: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def archive_stats(con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    s = _rows(con, SUMMARY_SQL)[0]
    s["compression_ratio"] = s["bytes_in"] / s["bytes_out"] if s["bytes_out"] else None
    causes = _rows(
        con,
        "SELECT split_part(error, ':', 1) AS cause, count(*) AS n FROM manifest WHERE status <> 'ok' "
        "GROUP BY cause ORDER BY n DESC, cause",
    )
    s["errors_by_cause"] = {r["cause"]: r["n"] for r in causes}
    s["per_model"] = _rows(con, GROUP_SQL.format(col="model"))
    s["per_run"] = _rows(con, GROUP_SQL.format(col="run_id"))
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
    ]
    out = [format_table(["statistic", "value"], head)]
    if s["errors_by_cause"]:
        out.append(format_table(["error cause", "images"], list(s["errors_by_cause"].items())))
    for title, key in (("model", "per_model"), ("run", "per_run")):
        cols = [title, "images", "ok", "bytes_out", "mean_bpp", "mean_psnr"]
        out.append(format_table(cols, [[r["name"], r["images"], r["ok"], r["bytes_out"], r["mean_bpp"],
                                        r["mean_psnr"]] for r in s[key]]))
    return "\n\n".join(out)


def _quad(s: dict[str, Any], k: str) -> str:
    vals = [s[f"mean_{k}"], s[f"{k}_p5"], s[f"{k}_p50"], s[f"{k}_p95"]]
    return " / ".join("-" if v is None else f"{v:.3f}" for v in vals)


def plot_distributions(con: duckdb.DuckDBPyConnection, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bpp = [r[0] for r in con.execute("SELECT bpp FROM manifest WHERE status = 'ok'").fetchall()]
    psnr = [r[0] for r in con.execute("SELECT psnr FROM manifest WHERE status = 'ok' AND psnr IS NOT NULL").fetchall()]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    axes[0].hist(bpp, bins=30, color="tab:blue")
    axes[0].set_xlabel("bits per pixel")
    axes[1].hist(psnr, bins=30, color="tab:green")
    axes[1].set_xlabel("PSNR (dB)")
    for ax in axes:
        ax.set_ylabel("images")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
