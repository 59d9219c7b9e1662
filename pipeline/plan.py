"""Freezing the input listing into a plan of stable work units.

The bucket is listed once, at the first run; the plan (Parquet parts under
the output's ``_plan/``, then ``plan.json``) then fixes every unit's inputs
and id, so reruns never list the input again and a unit always produces the
same output shard. The listing streams into the plan: units are cut as
entries arrive and written a part at a time, so neither the listing nor the
plan is ever held whole in the driver.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from msinn.imageio import IMAGE_EXTENSIONS

from . import storage
from .spec import INPUT_KINDS, WorkUnit

log = logging.getLogger("pipeline")

PLAN_FILE = "_plan/plan.parquet"  # how earlier versions froze a plan: one file, still read
LISTED_KINDS = tuple(k for k in INPUT_KINDS if k != "rows")  # what an input listing can be planned as


def relative_path(uri: str, root: str) -> str:
    """A listed file's path under the input root (its base name if it lies elsewhere)."""
    return uri[len(root) :].lstrip("/") if uri.startswith(root) else uri.rsplit("/", 1)[-1]


def file_key(uri: str, root: str) -> str:
    """A loose file's key: its path under the input root, without its extension."""
    rel = relative_path(uri, root)
    base, dot, ext = rel.rpartition(".")
    return base if dot and "/" not in ext else rel


class _Planner:
    """Turns a sorted listing into units as it streams: memory holds one open group of loose files, not the listing.

    Loose files that share a key (``a.jpg``, ``a.png``) must land in one unit,
    where the reader refuses them all. In a sorted listing every path of key
    ``k`` starts with ``k.``, and those paths form one contiguous run, though
    other keys may sit inside it (``a.b.png`` between ``a.jpg`` and
    ``a.png``). So a unit is cut only before a path that starts with no open
    ``k.`` prefix; the open prefixes nest, so a stack holds them.
    """

    def __init__(self, root: str, kinds: tuple[str, ...], shard_bytes: int):
        self.root, self.kinds, self.shard_bytes = root, kinds, shard_bytes
        self.count = 0
        self.group: list[str] = []
        self.group_bytes = 0
        self.open: list[str] = []  # key prefixes "k." a later file of the same key would start with
        self.skipped = 0
        self.skipped_examples: list[str] = []

    def _unit(self, kind: str, uris: tuple[str, ...], size: int) -> WorkUnit:
        unit = WorkUnit(f"{self.count:06d}", kind, uris, size, self.root)
        self.count += 1
        return unit

    def add(self, uri: str, size: int) -> Iterator[WorkUnit]:
        kind = _kind_of(uri)
        if kind not in self.kinds:
            self.skipped += 1
            if len(self.skipped_examples) < 3:
                self.skipped_examples.append(uri)
            return
        if kind != "files":
            yield self._unit(kind, (uri,), size)
            return
        while self.open and not uri.startswith(self.open[-1]):
            self.open.pop()
        if self.group and self.group_bytes + size > self.shard_bytes and not self.open:
            yield from self.flush()
        key_prefix = storage.join(self.root, file_key(uri, self.root)) + "."
        if uri.startswith(key_prefix) and (not self.open or key_prefix != self.open[-1]):
            self.open.append(key_prefix)
        self.group.append(uri)
        self.group_bytes += size

    def flush(self) -> Iterator[WorkUnit]:
        if self.group:
            yield self._unit("files", tuple(self.group), self.group_bytes)
            self.group, self.group_bytes = [], 0


def _kind_of(uri: str) -> str | None:
    if uri.endswith(".tar"):
        return "tar"
    if uri.endswith(".parquet"):
        return "parquet"
    if uri.lower().endswith(IMAGE_EXTENSIONS):
        return "files"
    return None


def iter_units(
    listing: Iterable[tuple[str, int]], input_uri: str, kind: str = "auto", shard_bytes: int = 256 << 20
) -> Iterator[WorkUnit]:
    """Group a sorted listing of (URI, size) into work units, as it streams.

    Each tar and each Parquet file is a unit; loose image files are grouped
    into units of about ``shard_bytes`` (more only where files of one key
    span the cut). ``auto`` plans every kind; a named kind plans only that
    one. Files of another kind are named in a warning, never dropped
    silently. A listing out of order raises ``storage.ListingOrderError``.
    """
    if kind != "auto" and kind not in LISTED_KINDS:
        raise ValueError(f"input kind must be one of {LISTED_KINDS}")
    root = input_uri.rstrip("/")
    planner: _Planner | None = None
    previous = None
    listed = 0
    for uri, size in listing:
        if previous is not None and uri <= previous:
            raise storage.ListingOrderError(f"{input_uri}: {uri!r} listed after {previous!r}")
        previous = uri
        listed += 1
        if planner is None:
            if uri.rstrip("/") == root:  # a single file given directly
                root = root.rsplit("/", 1)[0]
            planner = _Planner(root, LISTED_KINDS if kind == "auto" else (kind,), shard_bytes)
        yield from planner.add(uri, size)
    if planner is None:
        raise FileNotFoundError(f"{input_uri}: no input files found")
    yield from planner.flush()
    if planner.skipped:
        log.warning("%d file(s) under %s are not %s input and were not planned, e.g. %s", planner.skipped,
                    input_uri, " or ".join(planner.kinds) if kind != "auto" else "image, tar or Parquet",
                    ", ".join(planner.skipped_examples))
    if not planner.count:
        raise FileNotFoundError(f"{input_uri}: no image files, tars or Parquet files found")


def list_input(input_uri: str, options: dict | None) -> Iterator[tuple[str, int]]:
    """The input's sorted listing, streamed; a missing input is 'no input files found'."""
    try:
        yield from storage.iter_file_sizes(input_uri, options)
    except FileNotFoundError:
        raise FileNotFoundError(f"{input_uri}: no input files found") from None


def sorted_listing(input_uri: str, options: dict | None) -> Iterator[tuple[str, int]]:
    """The fallback for stores that list out of order: the whole listing, sorted in memory."""
    log.warning("%s: the store lists keys out of order; planning from a listing held in memory", input_uri)
    yield from sorted(storage.file_sizes(input_uri, options).items())


def build_plan(
    input_uri: str, options: dict | None, kind: str = "auto", shard_bytes: int = 256 << 20
) -> list[WorkUnit]:
    """Every unit of an input, as a list (small inputs and tests; jobs stream them with ``freeze_plan``)."""
    try:
        return list(iter_units(list_input(input_uri, options), input_uri, kind, shard_bytes))
    except storage.ListingOrderError:
        return list(iter_units(sorted_listing(input_uri, options), input_uri, kind, shard_bytes))


PLAN_DIR = "_plan"
PLAN_MARKER = "_plan/plan.json"  # written last: a plan is frozen once it exists
PART_UNITS = 4096  # units per plan part
PART_URIS = 200_000  # input URIs per plan part: a part is read whole, so it stays small


def _part_table(units: list[WorkUnit]):
    import pyarrow as pa

    return pa.table({
        "unit_id": [u.unit_id for u in units],
        "kind": [u.kind for u in units],
        "uris": [list(u.uris) for u in units],
        "input_bytes": [u.input_bytes for u in units],
        "root": [u.root for u in units],
    })


def _write_part(output: str, number: int, units: list[WorkUnit], options: dict | None) -> str:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(_part_table(units), buf)
    name = f"units-{number:06d}.parquet"
    storage.write_bytes(storage.join(output, PLAN_DIR, name), buf.getvalue(), options)
    return name


@dataclass
class Plan:
    """A frozen plan: the job it belongs to, its size, and its units, read a part at a time."""

    output: str
    options: dict | None
    job: dict
    units: int
    input_bytes: int
    parts: list[str]  # file names under _plan/

    def __len__(self) -> int:
        return self.units

    def __iter__(self) -> Iterator[WorkUnit]:
        import pyarrow.parquet as pq

        for name in self.parts:
            table = pq.read_table(io.BytesIO(storage.read_bytes(storage.join(self.output, PLAN_DIR, name),
                                                                self.options)))
            for r in table.to_pylist():
                yield WorkUnit(r["unit_id"], r["kind"], tuple(r["uris"]), r["input_bytes"], r["root"])


def freeze_plan(output: str, units: Iterable[WorkUnit], job: dict, options: dict | None) -> Plan:
    """Write the units as they come, a part at a time, then the marker that makes the plan frozen.

    A listing that dies half way leaves parts but no marker, so the next run
    lists again and overwrites them; a frozen plan is never partial.
    """
    parts: list[str] = []
    batch: list[WorkUnit] = []
    batch_uris = count = total = 0
    for unit in units:
        batch.append(unit)
        batch_uris += len(unit.uris)
        count += 1
        total += unit.input_bytes
        if len(batch) >= PART_UNITS or batch_uris >= PART_URIS:
            parts.append(_write_part(output, len(parts), batch, options))
            batch, batch_uris = [], 0
    if batch:
        parts.append(_write_part(output, len(parts), batch, options))
    marker = {"format": 2, "job": job, "units": count, "input_bytes": total, "parts": parts}
    storage.write_bytes(storage.join(output, PLAN_MARKER), json.dumps(marker, sort_keys=True).encode(), options)
    return Plan(output, options, job, count, total, parts)


def plan_input(spec_input: str, input_options: dict | None, kind: str, shard_bytes: int, output: str, job: dict,
               output_options: dict | None) -> Plan:
    """List the input and freeze its plan, streaming; a store that lists out of order is listed again, sorted."""
    try:
        return freeze_plan(output, iter_units(list_input(spec_input, input_options), spec_input, kind, shard_bytes),
                           job, output_options)
    except storage.ListingOrderError:
        return freeze_plan(output, iter_units(sorted_listing(spec_input, input_options), spec_input, kind,
                                              shard_bytes), job, output_options)


def read_plan(output: str, options: dict | None) -> Plan | None:
    """The frozen plan under an output, or None; plans of earlier versions (one ``plan.parquet``) read too."""
    import pyarrow.parquet as pq

    marker = storage.join(output, PLAN_MARKER)
    if storage.exists(marker, options):
        m = json.loads(storage.read_bytes(marker, options))
        return Plan(output, options, m["job"], int(m["units"]), int(m["input_bytes"]), list(m["parts"]))
    legacy = storage.join(output, PLAN_FILE)
    if not storage.exists(legacy, options):
        return None
    table = pq.read_table(io.BytesIO(storage.read_bytes(legacy, options)))
    job = json.loads((table.schema.metadata or {}).get(b"msinn.job", b"{}"))
    return Plan(output, options, job, table.num_rows, int(sum(table.column("input_bytes").to_pylist())),
                [PLAN_FILE.split("/", 1)[1]])
