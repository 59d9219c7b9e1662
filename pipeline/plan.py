"""Freezing the input listing into a plan of stable work units.

The bucket is listed once, at the first run; the plan (Parquet, under the
output) then fixes every unit's inputs and id, so reruns never list the
input again and a unit always produces the same output shard.
"""

from __future__ import annotations

import io
import json

from msinn.imageio import IMAGE_EXTENSIONS

from . import storage
from .spec import INPUT_KINDS, WorkUnit

PLAN_FILE = "_plan/plan.parquet"
LISTED_KINDS = tuple(k for k in INPUT_KINDS if k != "rows")  # what an input listing can be planned as


def file_key(uri: str, root: str) -> str:
    """A loose file's key: its path under the input root, without its extension."""
    rel = uri[len(root) :].lstrip("/") if uri.startswith(root) else uri.rsplit("/", 1)[-1]
    base, dot, ext = rel.rpartition(".")
    return base if dot and "/" not in ext else rel


def detect_kind(files: list[str]) -> str:
    if files and all(f.endswith(".tar") for f in files):
        return "tar"
    if files and all(f.endswith(".parquet") for f in files):
        return "parquet"
    return "files"


def build_plan(
    input_uri: str, options: dict | None, kind: str = "auto", shard_bytes: int = 256 << 20
) -> list[WorkUnit]:
    """List the input once and group it into work units."""
    sizes = storage.file_sizes(input_uri, options)
    if not sizes:
        raise FileNotFoundError(f"{input_uri}: no input files found")
    files = list(sizes)
    if kind == "auto":
        kind = detect_kind([f for f in files if f.endswith((".tar", ".parquet"))] or files)
    if kind not in LISTED_KINDS:
        raise ValueError(f"input kind must be one of {LISTED_KINDS}")
    root = input_uri.rstrip("/")
    if len(files) == 1 and files[0].rstrip("/") == root:  # a single file given directly
        root = root.rsplit("/", 1)[0]
    units: list[WorkUnit] = []
    if kind in ("tar", "parquet"):
        ext = ".tar" if kind == "tar" else ".parquet"
        for f in files:
            if f.endswith(ext):
                units.append(WorkUnit(f"{len(units):06d}", kind, (f,), sizes[f], root))
        return units
    group: list[str] = []
    group_bytes = 0
    # files that would share a key (a.png and a.jpg) go to one unit, where the reader refuses them all
    images = sorted((file_key(f, root), f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    previous = None
    for key, f in images:
        if group and group_bytes + sizes[f] > shard_bytes and key != previous:
            units.append(WorkUnit(f"{len(units):06d}", kind, tuple(group), group_bytes, root))
            group, group_bytes = [], 0
        group.append(f)
        group_bytes += sizes[f]
        previous = key
    if group:
        units.append(WorkUnit(f"{len(units):06d}", kind, tuple(group), group_bytes, root))
    if not units:
        raise FileNotFoundError(f"{input_uri}: no image files found")
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
