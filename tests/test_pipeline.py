"""The transcoding pipeline on a real local Ray cluster, local files and a moto S3 server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pipeline_helpers import (
    corrupt_bytes,
    png_bytes,
    read_manifest,
    read_unit,
    tar_bytes,
    unit_spec,
    unit_summary,
    verify_archive,
)

from msinn.raylocal import RAY_ENV_DEFAULTS
from pipeline.manifest import COLUMNS
from pipeline.plan import read_plan
from pipeline.runner import run_job
from pipeline.spec import JobError, JobSpec

REPO = Path(__file__).resolve().parents[1]
FIXED = ["key", "status", "error", "source_uri", "width", "height", "bytes", "bpp", "psnr", "qp", "tar_uri",
         "offset", "length", "model", "run_id"]


def _write_tree(root: Path, n: int = 6) -> set[str]:
    keys = set()
    for i in range(n):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i}.png").write_bytes(png_bytes(i, 64 + 8 * i, 48 + 4 * i, "L" if i == 3 else "RGB"))
        keys.add(f"{sub.name}/img{i}")
    for name, data in corrupt_bytes().items():
        (root / f"{name}.png").write_bytes(data)
        keys.add(name)
    (root / "notes.txt").write_text("not an image: kept as a sample of its own")
    return keys


def test_manifest_schema_has_the_fixed_columns():
    assert COLUMNS[: len(FIXED)] == FIXED


def test_encoder_overlaps_entropy_coding_and_matches_one_at_a_time(tmp_path, tiny_checkpoint, monkeypatch):
    """The actor's two-stage loop (network on one thread, rANS and packing on another) changes nothing."""
    from pipeline.encoder import UnitEncoder
    from pipeline.shards import build_tar
    from pipeline.sources import InputRecord
    from pipeline.spec import WorkUnit

    enc = UnitEncoder(tiny_checkpoint, overlap=True)  # the default on a GPU
    records = [InputRecord(f"k{i}", f"mem://k{i}.png", png_bytes(i, 64 + 16 * i, 64)) for i in range(5)]
    records.insert(2, InputRecord("bad", "mem://bad.png", corrupt_bytes()["truncated"]))
    spec = JobSpec(input="mem://", output=str(tmp_path / "out"), target_kind="bpp", target_value=1.5)
    unit = WorkUnit("00000", "files", tuple(r.source_uri for r in records), 0, "mem://")
    coder_threads = set()
    finish = UnitEncoder.finish_record

    def spy(row, planned, want_ms_ssim):
        coder_threads.add(threading.current_thread().name)
        return finish(row, planned, want_ms_ssim)

    monkeypatch.setattr(UnitEncoder, "finish_record", staticmethod(spy))
    summary = unit_summary(enc.steps(unit, records, spec))
    assert summary["images"] == 6 and summary["errors"] == 1
    assert coder_threads and all(name.startswith("entropy-coder") for name in coder_threads)
    rows = pq.read_table(tmp_path / "out" / "manifest" / "part-00000.parquet").to_pylist()
    assert [r["key"] for r in rows] == [r.key for r in records]
    one_at_a_time = [enc.finish_record(*enc.prepare_record(r, spec, unit), spec) for r in records]
    blob, _ = build_tar([(f"{row.key}.msinn", data) for row, data in one_at_a_time if data is not None])
    assert (tmp_path / "out" / "bitstreams" / "part-00000.tar").read_bytes() == blob
    for got, (want, _) in zip(rows, one_at_a_time):
        assert (got["status"], got["bytes"], got["qp"], got["error"]) == (
            want.status, want.bytes, want.qp, want.error)


def test_local_files_end_to_end_and_rerun_is_a_noop(tmp_path, local_ray, tiny_checkpoint, monkeypatch):
    from pipeline import plan

    monkeypatch.setattr(plan, "PART_UNITS", 2)  # the plan is frozen in several parts, read back in turn
    keys = _write_tree(tmp_path / "in")
    out = tmp_path / "out"
    spec = JobSpec(input=str(tmp_path / "in"), output=str(out), target_kind="qp", target_value=2.0,
                   model=tiny_checkpoint, shard_bytes=20_000)
    summary = run_job(spec, actors=1)
    assert len(list((out / "_plan").glob("units-*.parquet"))) == -(-summary["shards"] // 2) > 1
    fs = fsspec.filesystem("file")
    verify_archive(fs, str(out), keys, tiny_checkpoint)
    assert summary["images"] == len(keys) and summary["errors"] == 3 and summary["ok"] == len(keys) - 3
    assert summary["shards"] > 1 and summary["shards_committed"] == summary["shards"]
    assert summary["bytes_out"] > 0 and summary["mean_bpp"] > 0 and summary["mean_psnr"] > 0
    assert 0 < summary["codec_seconds_total"] < summary["encode_seconds_total"]  # the actors' time, split
    assert set(summary["errors_by_cause"]) == {"bad image"}
    rows = {r["key"]: r for r in read_manifest(fs, str(out))}
    assert rows["zero"]["status"] == "error" and "empty" in rows["zero"]["error"]
    assert rows["a/img3"]["mode"] == "L" and rows["b/img0"]["qp"] == 2.0
    assert rows["b/img0"]["source_sha256"] and rows["b/img0"]["run_id"] == summary["run_id"]
    assert all(r["model"] == "tiny-test.pt" for r in rows.values() if r["codec"] != "none")
    assert rows["notes"]["codec"] == "none" and rows["notes"]["members"][0]["name"] == "notes.txt"
    assert [m["name"] for m in rows["text"]["members"]] == ["text.png"]  # a bad image's bytes are kept
    # a rerun finds every shard committed and rewrites nothing
    tars = {p: p.stat().st_mtime_ns for p in (out / "bitstreams").iterdir()}
    again = run_job(spec, actors=1)
    assert again["images_this_run"] == 0 and again["run_id"] == summary["run_id"]
    assert {p: p.stat().st_mtime_ns for p in (out / "bitstreams").iterdir()} == tars
    # the same output cannot be reused for another job
    with pytest.raises(JobError, match="another job"):
        run_job(JobSpec(input=str(tmp_path / "in"), output=str(out), target_kind="qp", target_value=1.0,
                        model=tiny_checkpoint), actors=1)


def test_the_pool_pulls_units_only_as_actors_free_up(local_ray):
    """A big plan is read as the work goes, not loaded into the driver before it starts."""
    import ray

    from pipeline.pool import PoolSettings, run_pool
    from pipeline.spec import WorkUnit

    @ray.remote(num_cpus=0)
    class Echo:
        def ready(self) -> str:
            return "ok"

        def work(self, unit: WorkUnit) -> dict:
            return {"unit_id": unit.unit_id}

    pulled: list[int] = []

    def units():
        for i in range(30):
            pulled.append(i)
            yield WorkUnit(f"{i:06d}", "files", (f"/x/{i}.png",), 1, "/x")

    seen: list[tuple[str, int]] = []
    settings = PoolSettings(min_actors=0, max_actors=2, shape={"num_cpus": 0})
    run_pool(units(), 30, lambda n: Echo.remote(), lambda actor, unit, attempt: actor.work.remote(unit), settings,
             on_result=lambda unit, res: seen.append((res["unit_id"], len(pulled))))
    assert sorted(u for u, _ in seen) == [f"{i:06d}" for i in range(30)]
    assert all(n <= j + 2 for j, (_, n) in enumerate(seen, 1)), seen  # done + the two actors' units, no more


def test_webdataset_tars_on_s3(s3_bucket, local_ray, tiny_checkpoint):
    fs, bucket = s3_bucket
    keys = set()
    for shard in range(2):
        members = {}
        for i in range(3):
            k = f"s{shard}/{i:04d}"
            members[f"{k}.png"] = png_bytes(shard * 10 + i)
            members[f"{k}.json"] = b"{}"
            keys.add(k)
        members[f"s{shard}/bad.jpg"] = b"\xff\xd8 truncated jpeg"
        keys.add(f"s{shard}/bad")
        fs.pipe(f"{bucket}/in/shard-{shard:03d}.tar", tar_bytes(members))
    spec = JobSpec(input=f"s3://{bucket}/in", output=f"s3://{bucket}/out", target_kind="qp", target_value=1.5,
                   model=tiny_checkpoint)
    spec = JobSpec(**{**spec.__dict__, "input_options": {},
                      "output_options": {}})
    summary = run_job(spec, actors=1)
    fs.invalidate_cache()
    verify_archive(fs, f"{bucket}/out", keys, tiny_checkpoint)
    assert summary["shards"] == 2 and summary["errors"] == 2
    rows = read_manifest(fs, f"{bucket}/out")
    assert all(r["source_uri"].startswith(f"s3://{bucket}/in/shard-") for r in rows)
    assert all(r["tar_uri"].startswith(f"s3://{bucket}/out/bitstreams/") for r in rows if r["status"] == "ok")
    # credentials never land in the manifest or the summary
    blob = str(rows) + str(summary)
    assert "testing" not in blob.replace("test-", "")


def test_parquet_shards_with_custom_columns_and_per_image_targets(tmp_path, local_ray, tiny_checkpoint):
    (tmp_path / "in").mkdir()
    keys = set()
    for shard in range(2):
        ids = [f"p{shard}-{i}" for i in range(3)]
        imgs = [png_bytes(40 + shard * 3 + i) for i in range(3)]
        imgs[1] = b"broken" if shard == 0 else imgs[1]
        keys |= set(ids)
        table = pa.table({"id": ids, "jpeg": imgs, "label": [0, 1, 2], "q": [1.0, None, 2.5]})
        pq.write_table(table, tmp_path / "in" / f"{shard}.parquet")
    spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp", target_value=3.0,
                   model=tiny_checkpoint, key_column="id", image_column="jpeg", target_column="q")
    summary = run_job(spec, actors=1)
    verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)
    assert summary["errors"] == 1 and summary["ok"] == 5
    rows = {r["key"]: r for r in read_manifest(fsspec.filesystem("file"), str(tmp_path / "out"))}
    assert rows["p1-0"]["qp"] == 1.0 and rows["p1-1"]["qp"] == 3.0 and rows["p1-2"]["qp"] == 2.5
    assert rows["p1-2"]["target_value"] == 2.5 and rows["p1-1"]["target_value"] == 3.0
    assert rows["p0-0"]["source_uri"].endswith("0.parquet#row=0")


def test_transient_storage_errors_are_retried(tmp_path, local_ray, tiny_checkpoint):
    keys = _write_tree(tmp_path / "in", n=4)
    opts = {"fail_every": 3, "target_protocol": "file"}
    spec = JobSpec(input=f"flaky://{tmp_path}/in", output=f"flaky://{tmp_path}/out", target_kind="qp",
                   target_value=1.0, model=tiny_checkpoint, input_options=opts, output_options=opts,
                   shard_bytes=10_000)
    summary = run_job(spec, actors=1)
    assert summary["shards_failed"] == [] and summary["images"] == len(keys)
    verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, local_ray, tiny_checkpoint):
    """One uninterrupted run, and what it archived, that the interrupted runs of this module must equal."""
    root = tmp_path_factory.mktemp("reference")
    keys = _write_tree(root / "in", n=8)
    spec = JobSpec(input=str(root / "in"), output=str(root / "ref"), target_kind="qp", target_value=2.5,
                   model=tiny_checkpoint, shard_bytes=6_000)
    run_job(spec, actors=1)
    return spec, keys, verify_archive(fsspec.filesystem("file"), spec.output, keys, tiny_checkpoint)


def test_encoder_actor_killed_mid_run(tmp_path, reference_run, tiny_checkpoint):
    import ray

    ref_spec, keys, reference = reference_run
    fs = fsspec.filesystem("file")
    spec = JobSpec(**{**ref_spec.__dict__, "output": str(tmp_path / "killed")})
    result = {}
    t = threading.Thread(target=lambda: result.update(run_job(spec, actors=1)))
    t.start()
    killed = False
    deadline = time.time() + 120
    while t.is_alive() and time.time() < deadline and not killed:
        man = tmp_path / "killed" / "manifest"
        if man.exists() and any(man.iterdir()):
            # this run's actors only: the cluster is shared with the suite's other tests
            run_id = read_plan(spec.output, None).job["run_id"]
            for name in _named_encoders(ray, run_id):
                try:
                    ray.kill(ray.get_actor(name), no_restart=False)
                except ValueError:  # gone between the listing and the lookup (released at the end of the run)
                    continue
                killed = True
        time.sleep(0.05)
    t.join(300)
    assert killed, "the run ended before an actor could be killed"
    assert result["shards_failed"] == []
    assert verify_archive(fs, spec.output, keys, tiny_checkpoint) == reference


def _named_encoders(ray, run_id: str) -> list[str]:
    from ray.util import list_named_actors

    return [a for a in list_named_actors() if a.startswith(f"msinn-encoder-{run_id}-")]


def test_driver_killed_and_rerun_ends_as_uninterrupted(tmp_path, reference_run, tiny_checkpoint):
    """The driver process killed mid-run (its cluster lives on, as under `ray job submit`); a new driver resumes."""
    from conftest import shared_ray_address
    from ray.util import list_named_actors

    ref_spec, keys, reference = reference_run
    fs = fsspec.filesystem("file")
    out = tmp_path / "driver"
    cmd = [sys.executable, str(REPO / "jobs" / "transcode.py"), "--input", ref_spec.input, "--output", str(out),
           "--qp", "2.5", "--model", tiny_checkpoint, "--shard-bytes", "6000", "--actors", "1"]
    env = {**os.environ, **RAY_ENV_DEFAULTS, "RAY_ADDRESS": shared_ray_address()}  # both drivers join the cluster
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        man = out / "manifest"
        if man.exists() and any(man.iterdir()):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    done_before = len(list((out / "manifest").iterdir())) if (out / "manifest").exists() else 0
    assert done_before >= 1
    run_id = read_plan(str(out), None).job["run_id"]

    def actors_of_the_killed_driver() -> list:
        return [a for a in list_named_actors(all_namespaces=True) if a["name"].startswith(f"msinn-encoder-{run_id}-")]

    gone_by = time.time() + 60
    while actors_of_the_killed_driver() and time.time() < gone_by:  # Ray ends a dead driver's actors
        time.sleep(0.2)
    assert not actors_of_the_killed_driver(), "the killed driver's encoder outlived it"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 1, rerun.stderr[-2000:]  # 1: the tree's three corrupt images failed, as documented
    assert verify_archive(fs, str(out), keys, tiny_checkpoint) == reference


def test_canonical_uris(tmp_path, monkeypatch):
    from pipeline.storage import canonical

    monkeypatch.chdir(tmp_path)
    assert canonical("./arch") == canonical("arch/") == canonical(f"file://{tmp_path}/arch") == str(tmp_path / "arch")
    assert canonical(str(tmp_path / "x" / ".." / "arch")) == str(tmp_path / "arch")
    assert canonical("s3://bucket/a/./b/../c/") == canonical("S3://bucket//a/c") == "s3://bucket/a/c"
    assert canonical("s3://bucket/") == "s3://bucket"
    assert canonical("flaky:///tmp/a/../b/") == "flaky:///tmp/b"


def test_duplicate_keys_get_error_rows_never_another_image(tmp_path, local_ray, tiny_checkpoint):
    """Two tar members named dup.png, a.png beside a.jpg, two Parquet rows with one key: none archived."""
    from pipeline.plan import build_plan
    from pipeline.spec import WorkUnit

    src = tmp_path / "tars"
    src.mkdir()
    (src / "s.tar").write_bytes(tar_bytes([(name, png_bytes(seed)) for name, seed in
                                           (("dup.png", 1), ("ok.png", 2), ("dup.png", 3))]))
    run_job(JobSpec(input=str(src), output=str(tmp_path / "out"), target_kind="qp", target_value=1.0,
                    model=tiny_checkpoint), actors=1)
    rows = {r["key"]: r for r in read_manifest(fsspec.filesystem("file"), str(tmp_path / "out"))}
    assert rows["ok"]["status"] == "ok"
    assert rows["dup"]["status"] == rows["dup~dup2"]["status"] == "error"
    assert "2 inputs share it" in rows["dup"]["error"]
    # loose files with one stem, planned far apart by name, still meet in one unit
    files = tmp_path / "files"
    files.mkdir()
    for name, seed in (("a.jpg", 4), ("a.b.png", 5), ("a.png", 6)):
        (files / name).write_bytes(png_bytes(seed))
    units = build_plan(str(files), None, shard_bytes=1)
    unit = next(u for u in units if any(x.endswith("a.png") for x in u.uris))
    records = {r.key: r for r in read_unit(unit, None)}
    assert {"a", "a~dup2"} <= set(records) and records["a"].data is None and "share it" in records["a"].error
    # Parquet rows with one key
    pq.write_table(pa.table({"key": ["k", "k", "j"], "image": [png_bytes(7), png_bytes(8), png_bytes(9)]}),
                   tmp_path / "p.parquet")
    recs = read_unit(WorkUnit("000000", "parquet", (str(tmp_path / "p.parquet"),), 1, str(tmp_path)), None)
    assert [(r.key, r.data is None) for r in recs] == [("k", True), ("k~dup2", True), ("j", False)]


def test_webdataset_keys_are_the_basename_up_to_its_first_dot(tmp_path):
    """``a.b.png`` and ``a.b.json`` are one sample ``a``; two image fields of one sample archive neither."""
    from pipeline.keys import webdataset_key
    from pipeline.spec import WorkUnit

    assert webdataset_key("d/a.b.png") == "d/a" and webdataset_key("x.png") == "x"
    assert webdataset_key("v1.2/img.tar.png") == "v1.2/img"  # dots in folders are not the key's business
    (tmp_path / "s.tar").write_bytes(tar_bytes([
        ("d/a.b.png", png_bytes(1)), ("d/a.b.json", b"{}"), ("c.d.e.png", png_bytes(2)), ("g.jpg", png_bytes(3)),
        ("g.seg.png", png_bytes(4))]))
    every = read_unit(WorkUnit("000000", "tar", (str(tmp_path / "s.tar"),), 1, str(tmp_path)), None)
    recs = {r.key: r for r in every if not r.sidecar}
    assert recs["d/a"].data == png_bytes(1) and recs["d/a"].source_uri.endswith("s.tar#d/a.b.png")
    side = [r for r in every if r.sidecar]  # the other field of sample d/a travels with it, in the tar's order
    assert [(r.key, r.member, r.data, r.index) for r in side] == [("d/a", "d/a.b.json", b"{}", 1)]
    assert recs["c"].data == png_bytes(2)
    assert recs["g"].data is None and "duplicate key 'g'" in recs["g"].error and recs["g~dup2"].data is None


def test_a_prefix_with_tars_and_loose_files_plans_both_and_keeps_the_rest(tmp_path, caplog):
    """Nothing is skipped: tars, Parquet and loose images are all planned, other files as parts of their samples."""
    import logging

    from pipeline.plan import build_plan

    src = tmp_path / "in"
    src.mkdir()
    (src / "shard.tar").write_bytes(tar_bytes({"t1.png": png_bytes(1)}))
    (src / "loose.png").write_bytes(png_bytes(2))
    (src / "broken.jpg").write_bytes(b"not a jpeg")
    (src / "notes.txt").write_text("hello")
    caplog.set_level(logging.WARNING, logger="pipeline")
    units = build_plan(str(src), None)
    assert sorted(u.kind for u in units) == ["files", "tar"]
    keys = {r.key: r for u in units for r in read_unit(u, None)}
    assert set(keys) == {"t1", "loose", "broken", "notes"} and keys["loose"].data == png_bytes(2)
    assert keys["notes"].sidecar and keys["notes"].data == b"hello" and not keys["loose"].sidecar
    assert "not planned" not in caplog.text


def test_no_resource_shape_deadlocks_two_jobs_on_two_cpus(tmp_path, local_ray, tiny_checkpoint):
    """Two jobs at once whose actors each want every CPU: one waits for the other, both finish.

    Actors read their own units, so no read task can be starved of a CPU an actor holds.
    """
    import concurrent.futures

    specs = []
    for name in ("a", "b"):
        (tmp_path / f"in-{name}").mkdir()
        for i in range(3):
            (tmp_path / f"in-{name}" / f"{name}{i}.png").write_bytes(png_bytes(600 + i))
        specs.append(JobSpec(input=str(tmp_path / f"in-{name}"), output=str(tmp_path / f"out-{name}"),
                             target_kind="qp", target_value=1.0, model=tiny_checkpoint, shard_bytes=4_000))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(run_job, s, None, None, 2.0) for s in specs]
        summaries = [f.result(timeout=400) for f in futures]
    assert [s["ok"] for s in summaries] == [3, 3] and all(s["shards_failed"] == [] for s in summaries)


def test_tar_shards_are_streamed_one_member_at_a_time(tmp_path):
    """Members are read one at a time (of eight 8 MB sidecars, about the one being read and the one just handed
    over are held, never half the shard); a shard cut short keeps the members before the cut."""
    import tracemalloc

    from pipeline.inputs import stream_unit
    from pipeline.spec import WorkUnit

    path = tmp_path / "big.tar"
    blobs = [(f"blob{i}.bin", bytes(8 << 20)) for i in range(8)]
    path.write_bytes(tar_bytes([("a.png", png_bytes(1)), *blobs[:4], ("b.png", png_bytes(2)), *blobs[4:]]))
    unit = WorkUnit("000000", "tar", (str(path),), path.stat().st_size, str(tmp_path))
    tracemalloc.start()
    keys = [(r.key, r.sidecar, r.data is not None) for r in stream_unit(unit, unit_spec(unit))]
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert keys == [("a", False, True), *[(f"blob{i}", True, True) for i in range(4)], ("b", False, True),
                    *[(f"blob{i}", True, True) for i in range(4, 8)]]
    assert peak < 32 << 20, f"peak {peak >> 20} MB while streaming a {path.stat().st_size >> 20} MB shard"
    # cut inside the last member: the first image survives, then one error record says where reading stopped
    cut = tmp_path / "cut.tar"
    with tarfile.open(path) as tf:
        b = tf.getmember("b.png")
    cut.write_bytes(path.read_bytes()[: b.offset_data + b.size // 2])
    cut_unit = WorkUnit("000001", "tar", (str(cut),), 1, str(tmp_path))
    recs = list(stream_unit(cut_unit, unit_spec(cut_unit)))
    assert recs[0].key == "a" and recs[0].data == png_bytes(1)
    assert recs[-1].data is None and "unreadable" in recs[-1].error
