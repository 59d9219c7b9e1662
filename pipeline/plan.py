"""Freezing the input listing into a plan of stable work units.

The bucket is listed once, at the first run; the plan (Parquet, under the
output) then fixes every unit's inputs and id, so reruns never list the
input again and a unit always produces the same output shard.
"""

from __future__ import annotations

import io
import json
import logging

from msinn.imageio import IMAGE_EXTENSIONS

from . import storage
from .spec import INPUT_KINDS, WorkUnit

log = logging.getLogger("pipeline")

PLAN_FILE = "_plan/plan.parquet"
LISTED_KINDS = tuple(k for k in INPUT_KINDS if k != "rows")  # what an input listing can be planned as


def relative_path(uri: str, root: str) -> str:
    """A listed file's path under the input root (its base name if it lies elsewhere)."""
    return uri[len(root) :].lstrip("/") if uri.startswith(root) else uri.rsplit("/", 1)[-1]


def file_key(uri: str, root: str) -> str:
    """A loose file's key: its path under the input root, without its extension."""
    rel = relative_path(uri, root)
    base, dot, ext = rel.rpartition(".")
    return base if dot and "/" not in ext else rel


def build_plan(
    input_uri: str, options: dict | None, kind: str = "auto", shard_bytes: int = 256 << 20
) -> list[WorkUnit]:
    """List the input once and group it into work units.

    ``auto`` plans every kind the prefix holds: each tar and each Parquet file
    is a unit, and loose image files are grouped into units of about
    ``shard_bytes``. Files of no input kind are named in a log line, never
    dropped silently.
    """
    sizes = storage.file_sizes(input_uri, options)
    if not sizes:
        raise FileNotFoundError(f"{input_uri}: no input files found")
    if kind != "auto" and kind not in LISTED_KINDS:
        raise ValueError(f"input kind must be one of {LISTED_KINDS}")
    files = list(sizes)
    root = input_uri.rstrip("/")
    if len(files) == 1 and files[0].rstrip("/") == root:  # a single file given directly
        root = root.rsplit("/", 1)[0]
    by_kind = {
        "tar": [f for f in files if f.endswith(".tar")],
        "parquet": [f for f in files if f.endswith(".parquet")],
        "files": [f for f in files if f.lower().endswith(IMAGE_EXTENSIONS)],
    }
    kinds = [k for k in ("tar", "parquet", "files") if by_kind[k]] if kind == "auto" else [kind]
    planned = {f for k in kinds for f in by_kind[k]}
    skipped = [f for f in files if f not in planned]
    if skipped:
        log.warning("%d file(s) under %s are not %s input and were not planned, e.g. %s", len(skipped), input_uri,
                    " or ".join(kinds) or "any", ", ".join(skipped[:3]))
    units: list[WorkUnit] = []
    for k in kinds:
        if k in ("tar", "parquet"):
            for f in by_kind[k]:
                units.append(WorkUnit(f"{len(units):06d}", k, (f,), sizes[f], root))
        else:
            units += _file_units(by_kind[k], sizes, root, shard_bytes, len(units))
    if not units:
        raise FileNotFoundError(f"{input_uri}: no image files, tars or Parquet files found")
    return units


def _file_units(files: list[str], sizes: dict[str, int], root: str, shard_bytes: int, first: int) -> list[WorkUnit]:
    """Loose images in units of about ``shard_bytes``; files that would share a key (a.png, a.jpg) in one unit,
    where the reader refuses them all."""
    units: list[WorkUnit] = []
    group: list[str] = []
    group_bytes = 0
    previous = None
    for key, f in sorted((file_key(f, root), f) for f in files):
        if group and group_bytes + sizes[f] > shard_bytes and key != previous:
            units.append(WorkUnit(f"{first + len(units):06d}", "files", tuple(group), group_bytes, root))
            group, group_bytes = [], 0
        group.append(f)
        group_bytes += sizes[f]
        previous = key
    if group:
        units.append(WorkUnit(f"{first + len(units):06d}", "files", tuple(group), group_bytes, root))
    return units


def write_plan(output: str, units: list[WorkUnit], job: dict, options: dict | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "unit_id": [u.unit_id for u in units],
            "kind": [u.kind for u in units],
            "uris": [list(u.uris) for u in units],
            "input_bytes": [u.input_bytes for u in units],
            "root": [u.root for u in units],
        }
    ).replace_schema_metadata({"msinn.job": json.dumps(job, sort_keys=True)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    storage.write_bytes(storage.join(output, PLAN_FILE), buf.getvalue(), options)


def read_plan(output: str, options: dict | None) -> tuple[list[WorkUnit], dict] | None:
    import pyarrow.parquet as pq

    uri = storage.join(output, PLAN_FILE)
    if not storage.exists(uri, options):
        return None
    table = pq.read_table(io.BytesIO(storage.read_bytes(uri, options)))
    job = json.loads((table.schema.metadata or {}).get(b"msinn.job", b"{}"))
    rows = table.to_pylist()
    units = [WorkUnit(r["unit_id"], r["kind"], tuple(r["uris"]), r["input_bytes"], r["root"]) for r in rows]
    return units, job
