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
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from . import containment, listing, storage
from .claims import Claim, refreshing
from .keys import escape_name, file_key, printable, unescape_name
from .spec import INPUT_KINDS, ArchivedRow, JobError, WorkUnit

log = logging.getLogger("pipeline")
T = TypeVar("T")

LEGACY_PLAN = "plan.parquet"  # how earlier versions froze a plan: one file, still read
LISTED_KINDS = tuple(k for k in INPUT_KINDS if k != "rows")  # what an input listing can be planned as


class ListingOrderError(RuntimeError):
    """The store listed keys out of order (S3 directory buckets do): a streamed plan cannot rely on it."""


class PlanError(JobError):
    """A frozen plan that cannot be used as it is (unreadable, or naming what its job may not read); names the file."""


class Skipped:
    """Entries the listing or the planner passed over, for one warning that says what and why."""

    EXAMPLES = 10

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[str] = []

    def add(self, uri: str, why: str) -> None:
        self.count += 1
        if len(self.examples) < self.EXAMPLES:
            self.examples.append(f"{uri} ({why})")

    def warn(self, input_uri: str) -> None:
        if self.count:
            more = f"; and {self.count - len(self.examples)} more" if self.count > len(self.examples) else ""
            log.warning("%d entr%s under %s not planned: %s%s", self.count, "y" if self.count == 1 else "ies",
                        printable(input_uri), printable("; ".join(self.examples)), more)


class _Planner:
    """Turns a sorted listing into units as it streams: memory holds one open group of loose files, not the listing.

    Loose files that share a key (``a.jpg``, ``a.png``) must land in one unit,
    where the reader refuses them all. In a sorted listing every path of key
    ``k`` starts with ``k.``, and those paths form one contiguous run, though
    other keys may sit inside it (``a.b.png`` between ``a.jpg`` and
    ``a.png``). So a unit is cut only before a path that starts with no open
    ``k.`` prefix; the open prefixes nest, so a stack holds them.
    """

    def __init__(self, root: str, kinds: tuple[str, ...], shard_bytes: int, skipped: Skipped):
        self.root, self.kinds, self.shard_bytes = root, kinds, shard_bytes
        self.count = 0
        self.group: list[str] = []
        self.group_bytes = 0
        self.open: list[str] = []  # key prefixes "k." a later file of the same key would start with
        self.skipped = skipped
        self.wanted = " or ".join(kinds) if kinds != LISTED_KINDS else "image, tar or Parquet"

    def _unit(self, kind: str, uris: tuple[str, ...], size: int) -> WorkUnit:
        unit = WorkUnit(f"{self.count:06d}", kind, uris, size, self.root)
        self.count += 1
        return unit

    def add(self, uri: str, size: int) -> Iterator[WorkUnit]:
        kind = _kind_of(uri)
        if kind not in self.kinds:
            self.skipped.add(uri, f"not {self.wanted} input")
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


def _kind_of(uri: str) -> str:
    """A listed file's kind: a tar or Parquet shard, else a loose file (an image, or a part of its key's sample:
    a caption, metadata, anything; nothing under the input is left out of a plan that lists it)."""
    if uri.endswith(".tar"):
        return "tar"
    if uri.endswith(".parquet"):
        return "parquet"
    return "files"


def iter_units(
    listing: Iterable[tuple[str, int]], input_uri: str, kind: str = "auto", shard_bytes: int = 256 << 20,
    skipped: Skipped | None = None,
) -> Iterator[WorkUnit]:
    """Group a sorted listing of (URI, size) into work units, as it streams.

    Each tar and each Parquet file is a unit; loose files (images and the
    files that share their keys) are grouped into units of about
    ``shard_bytes`` (more only where files of one key span the cut).
    ``auto`` plans every kind; a named kind plans only that one. Files of
    another kind, and entries the listing passed over (``skipped``), are
    named in a warning, never dropped silently. A listing out of order
    raises ``ListingOrderError``.
    """
    if kind != "auto" and kind not in LISTED_KINDS:
        raise ValueError(f"input kind must be one of {LISTED_KINDS}")
    root = input_uri.rstrip("/")
    skipped = skipped if skipped is not None else Skipped()
    planner: _Planner | None = None
    previous = None
    for uri, size in listing:
        if previous is not None and uri <= previous:
            raise ListingOrderError(f"{input_uri}: {uri!r} listed after {previous!r}")
        previous = uri
        if planner is None:
            if uri.rstrip("/") == root:  # a single file given directly
                root = root.rsplit("/", 1)[0]
            planner = _Planner(root, LISTED_KINDS if kind == "auto" else (kind,), shard_bytes, skipped)
        yield from planner.add(uri, size)
    skipped.warn(input_uri)
    if planner is None:
        raise FileNotFoundError(f"{input_uri}: no input files found")
    yield from planner.flush()
    if not planner.count:
        raise FileNotFoundError(f"{input_uri}: no files, tars or Parquet files found")


def list_input(input_uri: str, options: dict | None, skipped: Skipped | None = None) -> Iterator[tuple[str, int]]:
    """The input's sorted listing, streamed; a missing input is 'no input files found'."""
    try:
        yield from listing.iter_file_sizes(input_uri, options, skipped.add if skipped else None)
    except FileNotFoundError:
        raise FileNotFoundError(f"{input_uri}: no input files found") from None


def sorted_listing(input_uri: str, options: dict | None, skipped: Skipped | None = None
                   ) -> Iterator[tuple[str, int]]:
    """The fallback for stores that list out of order: the whole listing, sorted in memory."""
    log.warning("%s: the store lists keys out of order; planning from a listing held in memory", input_uri)
    yield from sorted(listing.file_sizes(input_uri, options, skipped.add if skipped else None).items())


def _planned(input_uri: str, options: dict | None, kind: str, shard_bytes: int,
             consume: Callable[[Iterator[WorkUnit]], T]) -> T:
    """``consume`` the input's units as the listing streams; a store that lists out of order is listed again,
    sorted in memory, and consumed from the start."""
    try:
        skipped = Skipped()
        return consume(iter_units(list_input(input_uri, options, skipped), input_uri, kind, shard_bytes, skipped))
    except ListingOrderError:
        skipped = Skipped()
        return consume(iter_units(sorted_listing(input_uri, options, skipped), input_uri, kind, shard_bytes,
                                  skipped))


def build_plan(
    input_uri: str, options: dict | None, kind: str = "auto", shard_bytes: int = 256 << 20
) -> list[WorkUnit]:
    """Every unit of an input, as a list (small inputs and tests; jobs stream them with ``plan_input``)."""
    return _planned(input_uri, options, kind, shard_bytes, list)


PLAN_DIR = "_plan"  # under a transcode's output; a re-encode freezes its plan under _reencode/<run_id>/
PLAN_MARKER = "plan.json"  # written last: a plan is frozen once it exists
PART_UNITS = 4096  # units per plan part
PART_ITEMS = 200_000  # input URIs or archived rows per plan part: a part is read whole, so it stays small


def _part_table(units: list[WorkUnit]):
    import pyarrow as pa

    return pa.table({
        "unit_id": [u.unit_id for u in units],
        "kind": [u.kind for u in units],
        "uris": [[escape_name(x) for x in u.uris] for u in units],  # names are bytes: escaped as text
        "input_bytes": [u.input_bytes for u in units],
        "root": [u.root for u in units],
        "rows": [[r.to_json() for r in u.rows] for u in units],
    })


def _unit_of(r: dict, root: str = "") -> WorkUnit:
    rows = tuple(ArchivedRow.from_json(x) for x in r.get("rows") or ())
    return WorkUnit(r["unit_id"], r.get("kind", "rows"), tuple(unescape_name(x) for x in r.get("uris") or ()),
                    r["input_bytes"],
                    r.get("root") or root, rows)


PART_NAME = re.compile(r"units-\d{6}\.parquet")  # plan.json may name parts by these names only, in its folder
UNIT_ID = re.compile(r"[A-Za-z0-9_-]{1,80}")  # a unit's shard is part-<unit_id>: a plain file name
UnitCheck = Callable[[WorkUnit], "str | None"]  # why a planned unit may not run, or None


def listed_units(input_uri: str) -> UnitCheck:
    """The check for a transcode plan's units: a listed kind, each input under the job's input."""
    root = storage.canonical(input_uri)
    parent = root.rsplit("/", 1)[0]

    def check(u: WorkUnit) -> str | None:
        if u.kind not in LISTED_KINDS or u.rows or not u.uris:
            return f"is not a unit a listing makes (kind {u.kind!r}, {len(u.uris)} inputs, {len(u.rows)} rows)"
        if storage.canonical(u.root) not in (root, parent):
            return f"has root {u.root!r}, not the job's input {root}"
        outside = next((x for x in u.uris if not containment.within(x, root)), None)
        return f"names {outside!r}, outside the job's input {root}" if outside is not None else None

    return check


def archived_rows(archive: str) -> UnitCheck:
    """The check for a re-encode plan's units: rows of this archive and nothing else."""
    root = storage.canonical(archive)

    def check(u: WorkUnit) -> str | None:
        if u.kind != "rows" or u.uris:
            return f"is not a unit of archived rows (kind {u.kind!r})"
        if storage.canonical(u.root) != root:
            return f"reads rows of {u.root!r}, not of this archive {root}"
        return None

    return check


@dataclass
class Plan:
    """A frozen plan: the job it belongs to, its size, and its units, read a part at a time.

    A plan is data under the output, which anyone with write access there
    could have changed: every unit is checked (``check``) as it is read, and
    a part that cannot be read or holds a unit its job may not run ends the
    job with an error naming the part.
    """

    folder: str
    options: dict | None
    job: dict
    units: int
    input_bytes: int
    items: int  # input files and archived rows the units name (tars and Parquet files count once)
    parts: list[str]  # file names in the folder
    check: UnitCheck | None = None
    root: str = ""  # units of plans from earlier versions that recorded none

    def __len__(self) -> int:
        return self.units

    def __iter__(self) -> Iterator[WorkUnit]:
        import pyarrow.parquet as pq

        for name in self.parts:
            uri = storage.join(self.folder, name)
            try:
                table = pq.read_table(io.BytesIO(storage.read_bytes(uri, self.options)))
                units = [_unit_of(r, self.root) for r in table.to_pylist()]
            except Exception as exc:  # missing, truncated, not Parquet, columns missing or mistyped
                raise PlanError(f"{uri}: unreadable plan part ({type(exc).__name__}: {exc}); "
                                f"remove {self.folder} to plan again") from None
            for unit in units:
                why = "has an id that is not a plain name" if not UNIT_ID.fullmatch(str(unit.unit_id)) else (
                    self.check(unit) if self.check else None)
                if why:
                    raise PlanError(f"{uri}: unit {str(unit.unit_id)[:80]!r} {why}: the plan was changed after "
                                    f"it was frozen; remove {self.folder} to plan again")
                yield unit


def freeze_plan(folder: str, units: Iterable[WorkUnit], job: dict, options: dict | None) -> Plan:
    """Write the units as they come, a part at a time, then the marker that makes the plan frozen.

    A listing that dies half way leaves parts but no marker, so the next run
    lists again and overwrites them; a frozen plan is never partial.
    """
    import pyarrow.parquet as pq

    parts: list[str] = []
    batch: list[WorkUnit] = []
    batch_items = count = total = items = 0

    def write() -> None:
        buf = io.BytesIO()
        pq.write_table(_part_table(batch), buf)
        parts.append(f"units-{len(parts):06d}.parquet")
        storage.write_bytes(storage.join(folder, parts[-1]), buf.getvalue(), options)

    for unit in units:
        batch.append(unit)
        size = len(unit.uris) + len(unit.rows)
        batch_items += size
        items += size
        count += 1
        total += unit.input_bytes
        if len(batch) >= PART_UNITS or batch_items >= PART_ITEMS:
            write()
            batch, batch_items = [], 0
    if batch:
        write()
    marker = {"format": 2, "job": job, "units": count, "input_bytes": total, "items": items, "parts": parts}
    storage.write_bytes(storage.join(folder, PLAN_MARKER), json.dumps(marker, sort_keys=True).encode(), options)
    return Plan(folder, options, job, count, total, items, parts)


def plan_input(spec_input: str, input_options: dict | None, kind: str, shard_bytes: int, output: str, job: dict,
               output_options: dict | None, claim: Claim | None = None) -> Plan:
    """List the input and freeze its plan under the output, streaming (refreshing this driver's ``claim``)."""
    folder = storage.join(output, PLAN_DIR)
    return _planned(spec_input, input_options, kind, shard_bytes,
                    lambda units: freeze_plan(folder, refreshing(units, claim) if claim else units, job,
                                              output_options))


def read_frozen(folder: str, options: dict | None, legacy_key: str = "msinn.job", legacy_root: str = "") -> Plan | None:
    """The plan frozen in a folder, or None; plans of earlier versions (one ``plan.parquet``, the job in its
    metadata under ``legacy_key``; a re-encode's units without a root: ``legacy_root``) read too.

    ``plan.json`` may name only parts in its own folder (``units-NNNNNN.parquet``).
    """
    import pyarrow.parquet as pq

    marker = storage.join(folder, PLAN_MARKER)
    if storage.exists(marker, options):
        try:
            m = json.loads(storage.read_bytes(marker, options))
            parts = [str(p) for p in m["parts"]]
            plan = Plan(folder, options, dict(m["job"]), int(m["units"]), int(m["input_bytes"]), int(m["items"]),
                        parts, root=legacy_root)
        except (ValueError, KeyError, TypeError) as exc:
            raise PlanError(f"{marker}: unreadable plan ({type(exc).__name__}: {exc}); "
                            f"remove {folder} to plan again") from None
        bad = next((p for p in parts if not PART_NAME.fullmatch(p)), None)
        if bad is not None:
            raise PlanError(f"{marker}: names a part {bad[:200]!r}, not a units-NNNNNN.parquet file of its own "
                            f"folder; remove {folder} to plan again")
        run_id = plan.job.get("run_id")
        if run_id is not None and not UNIT_ID.fullmatch(str(run_id)):  # it names files and actors
            raise PlanError(f"{marker}: run id {str(run_id)[:200]!r} is not a plain name; remove {folder} to plan "
                            "again")
        return plan
    legacy = storage.join(folder, LEGACY_PLAN)
    if not storage.exists(legacy, options):
        return None
    try:
        table = pq.read_table(io.BytesIO(storage.read_bytes(legacy, options)))
        job = json.loads((table.schema.metadata or {}).get(legacy_key.encode(), b"{}"))
        units = [_unit_of(r, legacy_root) for r in table.to_pylist()]
    except Exception as exc:  # not Parquet, columns missing, metadata not JSON
        raise PlanError(f"{legacy}: unreadable plan ({type(exc).__name__}: {exc}); remove {folder} to plan again"
                        ) from None
    return Plan(folder, options, job, len(units), sum(u.input_bytes for u in units),
                sum(len(u.uris) + len(u.rows) for u in units), [LEGACY_PLAN], root=legacy_root)


def read_plan(output: str, options: dict | None) -> Plan | None:
    """A transcode's frozen plan under its output, or None."""
    return read_frozen(storage.join(output, PLAN_DIR), options)
