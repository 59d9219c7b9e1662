"""Re-encoding part of an archive: a new target, a new model, or a retry of failed rows.

Rows of the current view are selected with a SQL predicate and frozen into a
plan under ``_reencode/<run_id>/``; the results land as new manifest and
bitstream shards (``part-<run_id>-NNNNNN``) with the new run id, and the
current view (latest ok row per key) moves to them. A rerun of the same job
resumes its unfinished plan. Old shards stay until ``gc`` removes those no
current row references, after a retention period.
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from msinn.raylocal import init_ray

from . import storage
from .archive import connect, iter_select
from .bitstreams import UntrustedReference, as_model_list, shard_name
from .plan import LEGACY_PLAN, PLAN_MARKER, Plan, PlanError, archived_rows, freeze_plan, read_frozen, read_plan
from .runner import check_job_model, execute_units
from .shards import committed_shards, is_committed
from .spec import ArchivedRow, JobError, JobSpec, WorkUnit, check_limits, new_run_id

log = logging.getLogger("pipeline.reencode")
SOURCE_MODES = ("auto", "source", "bitstream")


def _reencode_plans(archive: str, options: dict | None) -> list[tuple[str, Plan]]:
    """Every re-encode plan frozen in the archive, oldest first (only their markers are read)."""
    out = []
    folders = {f.rsplit("/", 1)[0] for f in storage.list_files(storage.join(archive, "_reencode"), options)
               if f.endswith(("/" + PLAN_MARKER, "/" + LEGACY_PLAN))}
    for folder in folders:
        plan = read_frozen(folder, options, legacy_key="msinn.reencode", legacy_root=archive)
        if plan is None:
            continue
        plan.check = archived_rows(archive)
        job = plan.job
        if job.get("run_id") != folder.rsplit("/", 1)[-1]:
            raise PlanError(f"{folder}/{PLAN_MARKER}: its run id {str(job.get('run_id'))[:100]!r} is not its "
                            f"folder's name; remove {folder} if it is not yours")
        job["archive"] = storage.canonical(job.get("archive") or archive)  # plans from before canonical URIs
        job["model"] = storage.canonical_model(job.get("model"))
        out.append((job["run_id"], plan))
    return sorted(out, key=lambda t: t[0])


def _units(batches: Iterable[list[dict]], archive: str, run_id: str, source_mode: str,
           decode_model: list[str] | None, rows_per_shard: int) -> Iterator[WorkUnit]:
    """Selected rows, as DuckDB hands them over in batches, in units of ``rows_per_shard``."""
    chunk: list[ArchivedRow] = []
    count = 0

    def unit() -> WorkUnit:
        return WorkUnit(f"{run_id}-{count:06d}", "rows", (), sum(int(r.source_bytes or 0) for r in chunk), archive,
                        tuple(chunk))

    for batch in batches:
        for r in batch:
            chunk.append(ArchivedRow.from_manifest(r, source_mode, decode_model))
            if len(chunk) >= rows_per_shard:
                yield unit()
                count += 1
                chunk = []
    if chunk:
        yield unit()


def run_reencode(
    archive: str,
    where: str | None,
    target_kind: str,
    target_value: float,
    model: str | None = None,
    source_mode: str = "auto",
    options: dict | None = None,
    decode_model: str | list[str] | None = None,
    rows_per_shard: int = 64,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    device: str = "cpu",
    max_units: int | None = None,
    source_prefix: str | None = None,
    image_memory: int | None = None,
    image_seconds: float | None = None,
    codecs: tuple[str, ...] | list[str] | str | None = None,
    avif_speed: int = 6,
    effort: int = 0,
    also_models: tuple[str, ...] | list[str] = (),
) -> dict[str, Any]:
    """Select, plan (or resume), encode; returns a summary with ``selected`` 0 when nothing matched.

    Originals are read only under ``source_prefix`` (the caller's word, never
    the archive's: see :func:`_source_root`); without it ``auto`` re-encodes
    from bitstreams and ``source`` is refused. A row whose original lies
    elsewhere is re-encoded from its bitstream (``auto``) or gets an error row.
    ``codecs`` (default: msinn alone) lets each image take whichever format is
    best at the target, so a re-encode can also migrate an archive to another
    codec set; ``also_models`` are weights competing with ``model`` per image.
    """
    from msinn.choice import parse_codecs

    from .runner import check_codecs

    if source_mode not in SOURCE_MODES:
        raise ValueError(f"--from must be one of {SOURCE_MODES}")
    check_limits({"rows_per_shard": rows_per_shard, "actors": actors, "cpus_per_actor": cpus_per_actor,
                  "image_memory": image_memory, "image_seconds": image_seconds}, option_style=False)
    source_root = _source_root(source_prefix, source_mode)  # before anything is frozen: --from source needs it
    also_models = tuple(storage.canonical_model(m) for m in also_models or ())  # workers run elsewhere
    probe = JobSpec(input="", output="", target_kind=target_kind, target_value=float(target_value),
                    codecs=parse_codecs(codecs), avif_speed=avif_speed, effort=effort, also_models=also_models)
    coding = probe.coding_dict()
    archive = storage.canonical(archive)  # workers run in other directories
    model = storage.canonical_model(model)
    if probe.needs_model:  # a bad --model or target fails before a plan is frozen
        check_job_model(model, (target_kind, float(target_value)), also_models)
    check_codecs(tuple(coding.get("codecs", ["msinn"])))
    if decode_model:
        decode_model = [storage.canonical_model(m) for m in as_model_list(decode_model)]
    t0 = time.time()
    job = {"archive": archive, "where": where, "target_kind": target_kind, "target_value": float(target_value),
           "model": model, "from": source_mode, **coding}
    found = read_plan(archive, options)
    base_job = found.job if found else {}
    resume = [p for p in _reencode_plans(archive, options) if {k: p[1].job.get(k) for k in job} == job
              and list(p[1].job.get("also_models") or []) == list(also_models)]  # also when given none
    unfinished = None
    for run_id, plan in resume:
        shards = committed_shards(_spec(archive, plan.job, base_job, options, run_id, device))
        if not all(is_committed(u, shards) for u in plan):
            unfinished = (run_id, plan)
            break
    if unfinished:
        run_id, plan = unfinished
        log.info("resuming re-encode %s", run_id)
    else:
        # samples without an image have nothing to code: their stored parts stay where they are
        batches = iter_select(connect(archive, options), where, guard="codec IS DISTINCT FROM 'none'")
        first = next(batches, None)
        if not first:
            return {"run_id": None, "selected": 0, "note": "nothing selected: no-op"}
        run_id = new_run_id()
        units = _units(itertools.chain([first], batches), archive, run_id, source_mode, decode_model, rows_per_shard)
        plan = freeze_plan(storage.join(archive, "_reencode", run_id), units,
                           {**job, "run_id": run_id, "created_at": datetime.now(UTC).isoformat()}, options)
    spec = _spec(archive, job, base_job, options, run_id, device)
    limits = {k: v for k, v in (("image_memory", image_memory), ("image_seconds", image_seconds)) if v is not None}
    if source_root is None and source_mode == "auto" and base_job.get("input"):
        log.warning("no --source-prefix: originals are not read, every row is re-encoded from its bitstream (the "
                    "archive records its input as %s; pass --source-prefix to read originals there)",
                    str(base_job["input"])[:300])
    spec = replace(spec, source_root=source_root, source_mode=source_mode,
                   decode_models=tuple(decode_model or ()), **limits)
    init_ray()
    stats = execute_units(spec, plan, actors=actors, cpus_per_actor=cpus_per_actor, max_units=max_units)
    summary = {"run_id": run_id, "selected": plan.items, "shards": len(plan),
               "images_this_run": stats["processed"], "errors_this_run": stats["errors"],
               "shards_failed": stats["failed"], "wall_seconds": round(time.time() - t0, 3),
               **({"pool_error": stats["pool_error"]} if "pool_error" in stats else {})}
    storage.write_bytes(storage.join(archive, "_runs", f"{run_id}.json"), json.dumps(summary).encode(), options)
    return summary


def _source_root(source_prefix: str | None, source_mode: str) -> str | None:
    """Where originals may be read: only under the prefix the person running the command names.

    The input an archive records (``_plan/plan.json``) is a file inside the
    archive: whoever can write the archive could point it at ``/`` or at a
    private folder and add a row keyed ``etc/hostname``. So it is never a
    permission to read; without ``--source-prefix`` no original is read
    (``--from auto`` re-encodes every row from its bitstream, ``--from
    source`` is refused at the start).
    """
    if source_prefix:
        return storage.canonical(source_prefix)
    if source_mode == "source":
        raise JobError("--from source reads originals, and only under --source-prefix PREFIX (where they are is "
                       "yours to say, not the archive's); pass it, or use --from auto or bitstream")
    return None


def _spec(archive: str, job: dict, base_job: dict, options: dict | None, run_id: str, device: str) -> JobSpec:
    coding = {"codecs": tuple(job.get("codecs") or ("msinn",)), "avif_speed": int(job.get("avif_speed", 6)),
              "effort": int(job.get("effort", 0)), "also_models": tuple(job.get("also_models") or ())}
    return JobSpec(
        input=archive, output=archive, target_kind=job["target_kind"], target_value=job["target_value"],
        model=job.get("model"), input_options=options or {}, output_options=options or {}, input_kind="rows",
        key_column=base_job.get("key_column", "key"), image_column=base_job.get("image_column", "image"),
        run_id=run_id, device=device, **coding,
    )


# For every shard some earlier ok row of a key lived in, when the key's current row (the one that took its
# place) was written: the shard stopped being referenced when the last of its keys moved.
SUPERSEDED_SQL = """
SELECT old.tar_uri, max(epoch(cur.created_at)), count(*) FILTER (WHERE cur.created_at IS NULL)
FROM (SELECT DISTINCT key, tar_uri FROM all_rows WHERE status = 'ok' AND tar_uri IS NOT NULL) AS old
JOIN manifest AS cur ON cur.key = old.key
WHERE cur.tar_uri IS DISTINCT FROM old.tar_uri
GROUP BY old.tar_uri
"""


def gc_shards(archive: str, options: dict | None, retention_hours: float = 168.0, dry_run: bool = False,
              now: datetime | None = None) -> dict:
    """Delete this archive's bitstream shards that no current row references, ``retention_hours`` after they
    stopped being referenced.

    A shard stops being referenced when the last of its keys gets a newer
    row elsewhere (the time that row was written, from the manifest), not
    when the shard was written: a re-encode of an archive written ten days
    ago keeps the shards it replaces for the whole retention, so the run can
    be checked (or undone) before they go. A shard no row ever referenced (a
    unit that never committed its manifest shard) counts from when it was
    written. ``now`` is the clock (tests).

    Shards are matched by name under ``ARCHIVE/bitstreams/``, not by the
    spelling of the URI a row was written with (``./arch``, ``/a/./arch``,
    ``file://``, a trailing slash, a moved archive). If any current row names
    something that is not a shard there, or a shard that is missing, nothing
    is deleted: the result says ``refused`` and why.
    """
    check_limits({"retention_hours": retention_hours})
    archive = storage.canonical(archive)
    con = connect(archive, options)
    refs = [r[0] for r in con.execute(
        "SELECT DISTINCT tar_uri FROM manifest WHERE tar_uri IS NOT NULL").fetchall()]
    folder = storage.join(archive, "bitstreams")
    result: dict[str, Any] = {"deleted": [], "kept_within_retention": [], "referenced": len(refs)}
    try:
        referenced = {shard_name(u) for u in refs}
    except UntrustedReference as exc:
        return {**result, "refused": f"not collecting garbage: a current row's {exc}"}
    listed = {}
    for uri in storage.list_files(folder, options):
        try:
            listed[shard_name(uri)] = uri
        except UntrustedReference:  # not a shard (a temp file, something a user left): never deleted
            continue
    missing = sorted(referenced - set(listed))
    if missing:
        return {**result, "refused": f"not collecting garbage: {len(missing)} shard(s) that current rows reference "
                                     f"are not under {folder} ({', '.join(missing[:3])}); is that the archive's root?"}
    released = _released(con)
    fs, _ = storage.filesystem(archive, options)
    cutoff = (now or datetime.now(UTC)) - timedelta(hours=retention_hours)
    for name, uri in sorted(listed.items()):
        if name in referenced:
            continue
        since = released.get(name) if name in released else _written(fs, uri)
        if since is None or since > cutoff:  # unknown: kept, never guessed away
            result["kept_within_retention"].append(uri)
            continue
        if not dry_run:
            storage.delete(uri, options)
        result["deleted"].append(uri)
    return result


def _released(con) -> dict[str, datetime | None]:
    """By shard name, when the last key a shard held got its current row elsewhere (None: a row without a time)."""
    out: dict[str, datetime | None] = {}
    for uri, epoch, untimed in con.execute(SUPERSEDED_SQL).fetchall():
        try:
            name = shard_name(uri)
        except UntrustedReference:  # an old row's odd tar_uri names no shard of this archive: nothing to date
            continue
        when = None if untimed or epoch is None else datetime.fromtimestamp(float(epoch), UTC)
        if name in out:
            when = None if out[name] is None or when is None else max(out[name], when)
        out[name] = when
    return out


def _written(fs, uri: str) -> datetime | None:
    """When a shard file was written, as its store says (local mtime, S3 LastModified, ...)."""
    info = fs.info(uri.split("://", 1)[-1] if "://" in uri else uri)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created")
    if isinstance(mtime, int | float):
        mtime = datetime.fromtimestamp(mtime, UTC)
    if mtime is not None and mtime.tzinfo is None:
        mtime = mtime.replace(tzinfo=UTC)
    return mtime
