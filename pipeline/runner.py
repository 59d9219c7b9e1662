"""Running a transcode job on Ray: plan, skip committed units, encode the rest, summarise.

Units go to an elastic pool of encoder actors (``pool.py``) that read,
encode and commit them. A lost actor's unit is redone by another; a unit
rewrites its whole shard, so a retry never duplicates rows.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from msinn.raylocal import init_ray

from . import storage
from .claims import claim_output
from .encoder import UnitEncoder
from .keys import printable
from .plan import PLAN_DIR, Plan, listed_units, plan_input, read_plan
from .pool import PoolSettings, run_pool
from .shards import committed_shards, is_committed
from .spec import JobError, JobSpec, WorkUnit, check_limits, new_run_id

log = logging.getLogger("pipeline")


def canonical_spec(spec: JobSpec) -> JobSpec:
    """Input, output and a model file as absolute canonical URIs: workers do not share the driver's directory."""
    return replace(spec, input=storage.canonical(spec.input), output=storage.canonical(spec.output),
                   model=storage.canonical_model(spec.model),
                   also_models=tuple(storage.canonical_model(m) for m in spec.also_models))


def check_job_model(model: str | None, target: tuple[str, float] | None = None,
                    also: tuple[str, ...] | list[str] = ()) -> None:
    """Load the job's model once in the driver, so a bad name or file fails here, in one line; with ``target``,
    check that the model can meet it (a qp within its anchors). ``also`` are weights competing with it: each
    must load, and at a qp target all must agree on what the qp trades. The workers load their own copy."""
    import msinn
    from msinn.ratecontrol import Target

    try:
        loaded = msinn.load(model)
    except (msinn.CheckpointError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
        raise JobError(f"cannot use model {model or '(default)'}: {exc}") from None
    others = []
    for name in also:
        try:
            others.append(msinn.load(name))
        except (msinn.CheckpointError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:
            raise JobError(f"cannot use --also-model {name}: {exc}") from None
    if others and target is not None and target[0] == "qp":
        from msinn.weights_set import shared_lambdas

        try:
            shared_lambdas([loaded, *others])
        except ValueError as exc:
            raise JobError(f"cannot compare weights at a qp target: {exc}") from None
    if target is not None:
        kind, value = target
        try:
            Target(kind, value)
            if kind == "qp":
                loaded.check_qp(value)
        except (TypeError, ValueError) as exc:
            raise JobError(f"bad target --{kind} {value:g}: {exc} "
                           f"(model {model or '(default)'})") from None


def check_job(spec: JobSpec) -> None:
    """Refuse a job with a bad parameter before anything is frozen: a plan fixes its job, so a typo frozen in
    would refuse the corrected rerun. (Its limits were checked when the spec was made: ``spec.check_limits``.)"""
    if spec.needs_model:
        check_job_model(spec.model, (spec.target_kind, spec.target_value), spec.also_models)
    else:
        from msinn.ratecontrol import Target

        try:
            Target(spec.target_kind, spec.target_value)
        except ValueError as exc:
            raise JobError(f"bad target: {exc}") from None
    check_codecs(spec.codecs)


def _frozen(spec: JobSpec, found: Plan) -> tuple[JobSpec, Plan]:
    """A plan already frozen under the output, if it is this job's (a changed model is allowed)."""
    job = found.job
    spec = replace(spec, run_id=job.get("run_id", spec.run_id))
    for k in ("input", "output"):  # plans frozen before URIs were made canonical
        if job.get(k):
            job[k] = storage.canonical(job[k])
    job["model"] = storage.canonical_model(job.get("model"))
    if job.get("model") != spec.model:  # allowed: committed shards keep theirs, the rest use this one
        log.warning("model changed from %s to %s: shards not yet committed will use %s",
                    job.get("model"), spec.model, spec.model)
        job["model"] = spec.model
    planned_also = [storage.canonical_model(m) for m in job.get("also_models") or []]
    if planned_also != list(spec.also_models):  # as a changed model: committed shards keep theirs
        log.warning("--also-model changed from %s to %s: shards not yet committed will use the latter",
                    planned_also or "none", list(spec.also_models) or "none")
    job.pop("also_models", None)
    if spec.also_models:
        job["also_models"] = list(spec.also_models)
    mine, theirs = spec.job_dict(), {k: job.get(k) for k in spec.job_dict()}
    if mine != theirs:
        diff = {k: (theirs[k], mine[k]) for k in mine if mine[k] != theirs[k]}
        raise JobError(f"{spec.output} already holds a plan for another job (planned vs asked: {diff})")
    found.check = listed_units(spec.input)
    return spec, found


def check_codecs(codecs: tuple[str, ...]) -> None:
    """Refuse, in one line at the start, codecs this Pillow build cannot write or read (not once per image)."""
    from msinn.choice import missing_codecs

    missing = missing_codecs(tuple(codecs))
    if missing:
        raise JobError("codecs not available here: " + "; ".join(f"{c} ({why})" for c, why in missing.items()))


def codec_versions(codecs: tuple[str, ...]) -> dict[str, str]:
    """The libraries behind each codec of the job, as the driver has them (each row records its worker's)."""
    from msinn.classical import versions
    from msinn.lossless import LOSSLESS
    from msinn.lossless import versions as exact_versions
    from msinn.version import __version__

    def of(c: str) -> str:
        if c == LOSSLESS:
            return "; ".join(exact_versions(x) for x in ("lepton", "jxl-jpeg", "webp-lossless", "png"))
        return f"msinn {__version__}" if c == "msinn" else versions(c)

    return {c: of(c) for c in codecs}


def prepare_plan(spec: JobSpec) -> tuple[JobSpec, Plan]:
    """Read the frozen plan under the output, or claim the output, list the input once and freeze it (streaming,
    a part at a time). Every unit of the plan is checked as it is read (``plan.listed_units``)."""
    found = read_plan(spec.output, spec.output_options)
    if found is not None:
        return _frozen(spec, found)
    spec = replace(spec, run_id=spec.run_id or new_run_id())
    folder = storage.join(spec.output, PLAN_DIR)
    claim = claim_output(folder, spec.output, spec.run_id, spec.job_dict(), spec.output_options)
    try:
        found = read_plan(spec.output, spec.output_options)  # frozen by another driver between our two looks
        if found is not None:
            return _frozen(replace(spec, run_id=""), found)
        plan = plan_input(spec.input, spec.input_options, spec.input_kind, spec.shard_bytes, spec.output,
                          spec.job_dict(), spec.output_options, claim)
    finally:
        claim.release()
    plan.check = listed_units(spec.input)
    log.info("plan frozen: %d units, %.1f MB of input", len(plan), plan.input_bytes / 1e6)
    return spec, plan


def pool_settings(spec: JobSpec, min_actors: int | None, max_actors: int | None, resources: dict | None,
                  cpus_per_actor: float, pending: int) -> PoolSettings:
    """The actors' shape and how many: by default as many as fit the cluster now (at least one), at most one per unit.

    On an autoscaling cluster that starts empty, pass ``--max-actors``: the
    pending actors' demand is what makes the autoscaler add nodes.
    """
    import ray

    shape: dict[str, Any] = {"num_cpus": cpus_per_actor}
    if spec.device == "cuda":
        shape["num_gpus"] = 1
    if resources:
        shape["resources"] = dict(resources)
    settings = PoolSettings(shape=shape, image_seconds=spec.image_seconds)
    bundle = settings.bundle()
    total = ray.cluster_resources()
    fit = min((int(total.get(k, 0) // v) for k, v in bundle.items()), default=1) if bundle else 1
    if spec.device == "cpu" and not resources and not max_actors:
        fit = max(1, int(total.get("CPU", 1)) // max(4, math.ceil(cpus_per_actor)))  # cores for each actor's threads
    hi = max_actors or max(1, fit, min_actors or 0)
    lo = min(min_actors if min_actors is not None else 1, hi)
    settings.min_actors, settings.max_actors = lo, max(1, min(hi, pending))
    return settings


class Progress:
    """Periodic log lines (and a bar on a terminal): images, rate, bytes, errors, ETA."""

    def __init__(self, units_total: int, bytes_total: int, done_units: int):
        self.start = time.time()
        self.units_total, self.bytes_total = units_total, bytes_total
        self.units_done = done_units
        self.images = self.errors = self.bytes_in = self.bytes_out = self.input_bytes_done = 0
        self.last_log = 0.0
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=units_total, initial=done_units, unit="shard", desc="transcode")

    def add(self, unit: WorkUnit, res: dict) -> None:
        self.units_done += 1
        self.images += res["images"]
        self.errors += res["errors"]
        self.bytes_in += res["bytes_in"]
        self.bytes_out += res["bytes_out"]
        self.input_bytes_done += unit.input_bytes
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(images=self.images, errors=self.errors)

    def log(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_log < 10:
            return
        self.last_log = now
        el = max(now - self.start, 1e-9)
        frac = self.input_bytes_done / self.bytes_total if self.bytes_total else 0.0
        eta = (el / frac - el) if frac > 0 else float("nan")
        log.info(
            "progress: shards %d/%d, images %d (%.2f/s), in %.1f MB, out %.1f MB, errors %d, ETA %s",
            self.units_done, self.units_total, self.images, self.images / el, self.bytes_in / 1e6,
            self.bytes_out / 1e6, self.errors, "?" if math.isnan(eta) else f"{eta:.0f}s",
        )

    def close(self) -> None:
        if self.bar:
            self.bar.close()


SUMMARY_COLUMNS = ["key", "run_id", "status", "error", "source_bytes", "bytes", "bpp", "psnr", "target_met", "model",
                   "created_at", "codec"]  # what run_stats reads: a big run's summary need not hold whole manifests
SUMMARY_READERS = 16  # manifest shards fetched at once for the summary


def summarise(spec: JobSpec, plan: Plan, wall: float, processed: int, failed: list[str]) -> dict[str, Any]:
    """Totals over every row this run's plan has committed (read back through DuckDB), plus this run's speed."""
    from .archive import connect_tables
    from .manifest import from_parquet
    from .shards import manifest_uri
    from .stats import run_stats

    shards = committed_shards(spec)  # one listing instead of a stat per shard
    committed = [0]

    def fetch(uris: list[str]) -> Iterator:
        with ThreadPoolExecutor(SUMMARY_READERS) as pool:  # one GET per shard: tens of thousands on a big run
            for data in pool.map(lambda uri: storage.read_bytes(uri, spec.output_options), uris):
                yield from_parquet(data, SUMMARY_COLUMNS)

    def tables() -> Iterator:
        batch: list[str] = []
        for u in plan:
            if is_committed(u, shards):
                committed[0] += 1
                batch.append(manifest_uri(spec, u))
                if len(batch) >= 4 * SUMMARY_READERS:
                    yield from fetch(batch)
                    batch = []
        yield from fetch(batch)

    with tempfile.TemporaryDirectory(prefix="msinn-summary-") as folder:  # rows spill here, not to memory
        con = connect_tables(tables(), os.path.join(folder, "rows.duckdb"))
        try:
            s = run_stats(con, spec.run_id)
        finally:
            con.close()
    # keys read from different shards (two tars with a member of one name): both rows stay, both
    # say where they came from, and the run says so loudly: the current view shows only the later
    duplicates = s["duplicate_keys"]
    if duplicates:
        log.warning("%d key(s) were archived from more than one input shard, e.g. %s", len(duplicates),
                    printable(", ".join(duplicates[:5])))
    return {
        "run_id": spec.run_id,
        "output": spec.output,
        "target": {"kind": spec.target_kind, "value": spec.target_value},
        "model": s["models"][0] if len(s["models"]) == 1 else spec.model,  # the name rows record
        "models": s["models"],  # every weights rows name (several with --also-model)
        "shards": len(plan),
        "shards_committed": committed[0],
        "shards_failed": failed,
        **{k: s[k] for k in ("images", "ok", "errors", "errors_by_cause", "bytes_in", "bytes_out", "mean_bpp",
                             "mean_psnr", "target_met")},
        "per_codec": s["per_codec"],
        "codec_versions": codec_versions(spec.codecs),
        "duplicate_keys": {"count": len(duplicates), "examples": duplicates[:10]},
        "wall_seconds": round(wall, 3),
        "images_this_run": processed,
        "images_per_second": round(processed / wall, 4) if wall > 0 else None,
        "finished_at": datetime.now(UTC).isoformat(),
    }


def run_job(
    spec: JobSpec,
    actors: int | None = None,
    actor_resources: dict | None = None,
    cpus_per_actor: float = 1.0,
    min_actors: int | None = None,
    max_actors: int | None = None,
) -> dict[str, Any]:
    """Transcode every uncommitted unit of the plan; returns the run summary (also written under the output)."""
    t0 = time.time()
    check_limits({"actors": actors, "cpus_per_actor": cpus_per_actor, "min_actors": min_actors,
                  "max_actors": max_actors})
    spec = canonical_spec(spec)
    check_job(spec)  # before anything is frozen (or Ray started): a bad --model or target must not pin the plan
    spec, plan = prepare_plan(spec)
    init_ray()
    stats = execute_units(spec, plan, actors, actor_resources, cpus_per_actor, min_actors, max_actors)
    summary = summarise(spec, plan, time.time() - t0, stats["processed"], stats["failed"])
    summary.update({k: v for k, v in stats.items() if k not in ("processed", "failed", "errors")})
    body = json.dumps(summary, indent=2).encode()
    storage.write_bytes(storage.join(spec.output, "_runs", f"{spec.run_id}.json"), body, spec.output_options)
    storage.write_bytes(storage.join(spec.output, "summary.json"), body, spec.output_options)
    return summary


# A careful attempt's actor waits until the driver has each step before it starts it: the driver then knows
# which image an actor was on when it died, however fast it died (Ray's generator backpressure).
CAREFUL_STREAM = {"_generator_backpressure_num_objects": 1}


def execute_units(
    spec: JobSpec,
    units: Plan | list[WorkUnit],
    actors: int | None = None,
    actor_resources: dict | None = None,
    cpus_per_actor: float = 1.0,
    min_actors: int | None = None,
    max_actors: int | None = None,
    max_units: int | None = None,
) -> dict[str, Any]:
    """Encode every unit that has no manifest shard yet, on an elastic pool of encoder actors (``pool.py``).

    ``units`` is a frozen plan (read a part at a time, twice: once to count
    what is left, once as the pool asks for units) or a list. ``actors``
    fixes the pool's size (both bounds); ``min_actors`` and ``max_actors``
    let it grow and shrink with the cluster.
    """
    import ray

    init_ray()
    shards = committed_shards(spec)
    todo = todo_bytes = done = 0
    for u in units:
        if is_committed(u, shards):
            done += 1
        elif max_units is None or todo < max_units:  # max_units: stop early, as an interrupted run would (tests)
            todo += 1
            todo_bytes += u.input_bytes
    pending = itertools.islice((u for u in units if not is_committed(u, shards)), todo)
    log.info("run %s: %d shards planned, %d already committed, %d to do", spec.run_id, len(units), done, todo)
    stats: dict[str, Any] = {"processed": 0, "errors": 0, "failed": [], "shards_by_node": {}, "actors": 0,
                             "actor_start_seconds": 0.0, "encode_seconds_total": 0.0, "codec_seconds_total": 0.0,
                             "actors_lost": 0, "images_refused_unread": 0}
    if not todo:
        return stats
    settings = pool_settings(spec, actors or min_actors, actors or max_actors, actor_resources, cpus_per_actor, todo)
    threads = max(1, math.ceil(cpus_per_actor))
    actor_cls = ray.remote(UnitEncoder)
    options = {"max_restarts": 0, "max_task_retries": 0, **settings.shape}
    progress = Progress(len(units), todo_bytes, done)
    nodes: dict[str, int] = {}

    def on_result(unit: WorkUnit, res: dict) -> None:
        progress.add(unit, res)
        nodes[str(res["node_id"])] = nodes.get(str(res["node_id"]), 0) + 1
        stats["processed"] += res["images"]
        stats["errors"] += res["errors"]
        stats["encode_seconds_total"] += res["seconds"]
        stats["codec_seconds_total"] += res["codec_seconds"]
        progress.log()

    log.info("encoder actors: %d to %d, each %s", settings.min_actors, settings.max_actors, settings.bundle())
    try:
        result = run_pool(
            pending,
            todo,
            lambda n: actor_cls.options(name=f"msinn-encoder-{spec.run_id}-{n}", **options).remote(
                spec.model, spec.device, threads, load_model=spec.needs_model, also_models=spec.also_models),
            lambda actor, unit, attempt: actor.unit_steps.options(
                num_returns="streaming", **(CAREFUL_STREAM if attempt.careful else {})).remote(unit, spec, attempt),
            settings,
            on_result=on_result,
            on_tick=progress.log,
        )
    except JobError:
        raise
    except Exception as exc:  # an unforeseen failure of Ray or of this code: still end with a summary
        log.exception("the encoder pool stopped")
        stats["pool_error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:300] if str(exc) else ''}"
        return stats
    finally:
        progress.log(force=True)
        progress.close()
    stats.update(failed=sorted(result.failed), shards_by_node=nodes, actors=result.actors_started,
                 actors_lost=result.actors_lost, images_refused_unread=result.images_refused,
                 actor_start_seconds=round(result.first_actor_seconds or 0.0, 3),
                 encode_seconds_total=round(stats["encode_seconds_total"], 3),
                 codec_seconds_total=round(stats["codec_seconds_total"], 3))
    return stats
