"""Hostile inputs: files that lie about their size, corrupted streams, bad models, awkward names; and (issue
#23) a job that survives any input (actor deaths, hangs, huge images) and an archive that trusts nothing it
reads back (manifest rows, plans, selections, inline secrets, offsets).

The other items of the hostile-input review are tested beside the code they
concern: gc spellings and spec-file SQL in test_reencode.py, duplicate keys
in test_pipeline.py, multi-frame images and Pillow's limit in test_images.py,
size caps in test_ratecontrol.py, manifest and header trust, SQL and secrets
in test_archive_ops.py and test_cli.py, checkpoint configs in
test_checkpoint.py and test_portable.py.
"""

from __future__ import annotations

import json
import random
import resource
import struct
import time
import zlib
from pathlib import Path

import fsspec
import numpy as np
import pytest
from helpers import image_file, png_stream
from pipeline_helpers import png_bytes, read_manifest, unit_summary

import msinn
from msinn.container import MAGIC, _uvarint, encode_header, pack, read_header, unpack
from msinn.decoding import decode_image
from msinn.errors import BitstreamError
from pipeline.runner import run_job
from pipeline.spec import JobError, JobSpec

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="module")
def small_file() -> bytes:
    return (GOLDEN / "k03-qp4.msinn").read_bytes()


@pytest.fixture(scope="module")
def one_grid_file(model) -> bytes:
    """A 64x64 crop coded by the bundled model at qp 4: one latent grid, the cheapest file to decode (fuzzing)."""
    from PIL import Image

    from msinn.encoding import encode_image
    from msinn.ratecontrol import Target

    photo = Image.open(Path(__file__).resolve().parents[1] / "samples" / "kodim15.png").convert("RGB")
    data = encode_image(model, image_file(photo.crop((200, 100, 264, 164))), Target("qp", 4)).data
    header, _ = read_header(data)
    assert (header.width, header.height, len(header.tiles), len(header.tiles[0].level_digests)) == (64, 64, 1, 5)
    return data


def _claiming(data: bytes, width: int, height: int, stream_bytes: int | None = None) -> bytes:
    """The same streams (or the first stream_bytes of the first) behind a header claiming one tile of width x height."""
    header, payload = unpack(data)
    t = header.tiles[0]
    if stream_bytes is not None:
        payload = payload[t.offset : t.offset + stream_bytes]
        t.offset, t.length = 0, stream_bytes
        header.tiles = [t]
        header.alpha_offset = header.alpha_length = None
    t.width, t.height = width, height
    t.latent_shape = [-(-height // 64) * 4, -(-width // 64) * 4]
    header.width, header.height, header.tile_width, header.tile_height = width, height, width, height
    return pack(header, payload)


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.mark.parametrize("side", [4096, 8192, 100_000])
def test_a_small_file_claiming_a_huge_image_is_refused_before_allocating(model, small_file, side):
    data = _claiming(small_file, side, side)
    before, t0 = _rss_mb(), time.perf_counter()
    with pytest.raises(BitstreamError, match="over the limit|cannot hold"):
        decode_image(data, model, "bomb")
    assert time.perf_counter() - t0 < 2 and _rss_mb() - before < 200  # refused from the header alone


def test_a_stream_too_short_for_its_claimed_size_is_refused(model, small_file):
    data = _claiming(small_file, 2048, 2048, stream_bytes=40)  # 4 MP within the tile limit, in 40 bytes
    with pytest.raises(BitstreamError, match="cannot hold"):
        decode_image(data, model, "short")
    with pytest.raises(BitstreamError, match="over the limit of 1000 pixels"):
        decode_image(small_file, model, "x", max_pixels=1000)


def test_msinn_decode_takes_a_pixel_limit(tmp_path, small_file, capsys):
    from msinn.cli import main

    (tmp_path / "a.msinn").write_bytes(small_file)
    (tmp_path / "bomb.msinn").write_bytes(_claiming(small_file, 30000, 30000))
    assert main(["decode", str(tmp_path / "bomb.msinn"), str(tmp_path / "bomb.png")]) == 1
    assert "over the limit" in capsys.readouterr().err and not (tmp_path / "bomb.png").exists()
    assert main(["decode", str(tmp_path / "a.msinn"), str(tmp_path / "a.png"), "--max-pixels", "4096"]) == 1
    assert "over the limit of 4096 pixels" in capsys.readouterr().err
    assert main(["decode", str(tmp_path / "a.msinn"), str(tmp_path / "a.png")]) == 0


def test_five_hundred_seeded_corruptions_end_in_bitstream_errors(model, one_grid_file):
    """Header fields that decoding depends on and payload bytes, each behind recomputed CRCs."""
    header, start = read_header(one_grid_file)
    payload = one_grid_file[start:]
    rng = random.Random(14)
    before = _rss_mb()
    outcomes = {"refused": 0}
    for i in range(500):
        h, _ = read_header(one_grid_file)
        p = bytearray(payload)
        kind = i % 10
        if kind < 5:  # stream damage
            for _ in range(1 + rng.randrange(3)):
                p[rng.randrange(len(p))] ^= rng.randrange(1, 256)
        elif kind == 5:
            h.qp = rng.choice([-1.0, 11, -3, 4.5 + 1e-7, float("nan"), 1e300])
        elif kind == 6:
            t = h.tiles[0]
            t.latent_shape = [t.latent_shape[0] + rng.randrange(1, 4), t.latent_shape[1]]
        elif kind == 7:
            h.tiles[0].level_digests[rng.randrange(5)] = f"{rng.randrange(1 << 32):08x}"
        elif kind == 8:
            h.image_digest = f"{rng.randrange(1 << 64):016x}"
        else:
            h.model_hash = f"{rng.randrange(1 << 64):016x}"
        try:
            blob = pack(h, bytes(p))
        except (BitstreamError, ValueError):  # the writer itself refuses an impossible header
            outcomes["refused"] += 1
            continue
        try:
            decode_image(blob, model, f"case {i}")
        except BitstreamError:
            outcomes["refused"] += 1
            continue
        pytest.fail(f"case {i} (kind {kind}) decoded to an image")
    assert outcomes["refused"] == 500
    assert _rss_mb() - before < 500


def test_random_header_bytes_behind_a_recomputed_crc_never_decode_to_other_pixels(model, one_grid_file):
    header, start = read_header(one_grid_file)
    payload = one_grid_file[start:]
    ref = decode_image(one_grid_file, model).pixels
    rng = random.Random(15)
    for i in range(200):
        hb = bytearray(encode_header(header))
        hb[rng.randrange(len(hb))] ^= rng.randrange(1, 256)
        blob = MAGIC + bytes((2,)) + _uvarint(len(hb)) + bytes(hb) + struct.pack(">I", zlib.crc32(bytes(hb)))
        try:
            out = decode_image(blob + payload, model, f"case {i}").pixels
        except BitstreamError:
            continue
        assert np.array_equal(out, ref), f"case {i}: an informational field changed the pixels"


def test_a_bad_model_fails_before_the_plan_is_frozen(tmp_path, local_ray, tiny_checkpoint):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(1))
    spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp", target_value=1.0,
                   model=str(tmp_path / "no-such-model.pt"))
    with pytest.raises(JobError, match="cannot use model"):
        run_job(spec, actors=1)
    assert not (tmp_path / "out" / "_plan").exists()
    # a rerun may name another model: shards not yet committed use it
    summary = run_job(JobSpec(**{**spec.__dict__, "model": tiny_checkpoint}), actors=1)
    assert summary["ok"] == 1


def test_awkward_names_round_trip_or_are_refused_with_a_reason(tmp_path, local_ray, tiny_checkpoint):
    """'#' in a file name, a key '.', a 300-character name: archived and restored, or an error row."""
    from pipeline.cli import main
    from pipeline.reencode import run_reencode

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a#b.png").write_bytes(png_bytes(2))
    (src / "sub" / ("x" * 240 + ".png")).write_bytes(png_bytes(3))
    (src / "..png").write_bytes(png_bytes(4))  # its key is "."
    out = tmp_path / "out"
    run_job(JobSpec(input=str(src), output=str(out), target_kind="qp", target_value=1.0, model=tiny_checkpoint),
            actors=1)
    rows = {r["source_uri"].rsplit("/", 1)[1]: r for r in read_manifest(fsspec.filesystem("file"), str(out))}
    assert rows["a#b.png"]["status"] == "ok" and rows["a#b.png"]["key"] == "a#b"
    assert rows["x" * 240 + ".png"]["status"] == "error" and "too long" in rows["x" * 240 + ".png"]["error"]
    assert rows["..png"]["status"] == "error" and "unsafe key" in rows["..png"]["error"]
    assert main(["restore", str(out), str(tmp_path / "dest"), "--model", tiny_checkpoint]) == 0
    assert (tmp_path / "dest" / "a#b.png").exists()
    # re-encoding from the source reads the file whose name holds '#', not a tar member
    s = run_reencode(str(out), "key = 'a#b'", "qp", 2.0, model=tiny_checkpoint, source_mode="source",
                     source_prefix=str(src))
    assert s["selected"] == 1 and s["shards_failed"] == []


# ---------------------------------------------------------------- issue 23: a job that survives any input

@pytest.fixture(scope="module")
def small_archive(tmp_path_factory, tiny_checkpoint) -> Path:
    """An archive of two images written by the encoder itself, without Ray (input under in/, archive in arch/)."""
    from pipeline.encoder import UnitEncoder
    from pipeline.spec import WorkUnit

    root = tmp_path_factory.mktemp("small")
    (root / "in").mkdir()
    for name, seed in (("a", 1), ("b", 2)):
        (root / "in" / f"{name}.png").write_bytes(png_bytes(seed))
    uris = tuple(str(root / "in" / f"{n}.png") for n in "ab")
    spec = JobSpec(input=str(root / "in"), output=str(root / "arch"), target_kind="qp", target_value=1.0,
                   model=tiny_checkpoint)
    unit_summary(UnitEncoder(tiny_checkpoint).unit_steps(WorkUnit("000000", "files", uris, 1, str(root / "in")), spec))
    return root


def test_an_image_too_big_for_the_memory_budget_is_refused_before_decoding(tiny_checkpoint):
    """#23.1: a legitimate 16384x16384 PNG (256 MP, under --max-pixels) is refused from its header, in a moment."""
    from pipeline.encoder import UnitEncoder
    from pipeline.limits import memory_refusal, peak_bytes
    from pipeline.sources import InputRecord
    from pipeline.spec import WorkUnit

    data = png_stream(16384, 16384)
    assert len(data) < 2 << 20
    spec = JobSpec(input="/in", output="/out", target_kind="qp", target_value=1.0)
    enc = UnitEncoder(tiny_checkpoint)
    before, t0 = _rss_mb(), time.perf_counter()
    unit = WorkUnit("0", "files", (), 0, "/")
    row, pending = enc.prepare_record(InputRecord("huge", "/in/huge.png", data), spec, unit)
    assert pending is None and row.status == "error"
    assert row.error.startswith("refused: needs about") and "16384x16384" in row.error
    assert "--image-memory-mb" in row.error
    assert time.perf_counter() - t0 < 5 and _rss_mb() - before < 200
    # the budget is the user's to raise; small images are far below it
    assert memory_refusal(data, 64 << 30, spec.tile_pixels, 0) is None
    assert peak_bytes(4096, 4096, 1 << 21) < spec.image_memory < peak_bytes(16384, 16384, 1 << 21)


def test_every_way_an_actor_dies_is_named():
    """#23.1: the pool's words for a loss come from what Ray raised; a crash's text mentions 'the OOM killer'
    as one possible cause, which proves nothing."""
    from ray.exceptions import ActorDiedError, OutOfMemoryError

    from pipeline.pool import loss_cause

    assert loss_cause(OutOfMemoryError("1 worker(s) were killed due to the node running low on memory.")) \
        == "out of memory"
    crash = ActorDiedError()
    crash.error_msg = ("Worker unexpectedly exits ... (1) the process was killed by the OOM killer due to high memory "
                       "usage, (2) ray stop --force was called")
    assert loss_cause(RuntimeError(crash.error_msg)) == "its worker process died"
    assert loss_cause(RuntimeError("The node has died")) == "its node was lost"


def test_the_pool_finds_the_image_that_kills_or_stalls_its_actor(local_ray):
    """#23.1, #23.2 on light actors: a record that kills its actor, one that hangs (the time limit), one whose
    unit dies while committing; every other record is done, the job ends, and the losses are bounded."""
    import os
    import signal

    import ray

    from pipeline.pool import PoolSettings, run_pool
    from pipeline.runner import CAREFUL_STREAM
    from pipeline.spec import WorkUnit

    @ray.remote(num_cpus=0)
    class Steps:
        def ready(self) -> str:
            return "ok"

        def unit_steps(self, unit: WorkUnit, attempt):
            skip = dict(attempt.skip)
            for i, name in enumerate(unit.uris):
                yield "read", i
                if i not in skip and name == "die":
                    os.kill(os.getpid(), signal.SIGKILL)
                if i not in skip and name == "hang":
                    time.sleep(3600)
                yield "encode", i
            yield "commit", None
            if unit.unit_id == "u3":
                os.kill(os.getpid(), signal.SIGKILL)
            yield "done", {"unit_id": unit.unit_id, "refused": sorted(skip.items())}

    units = [WorkUnit(uid, "files", names, 1, "/") for uid, names in
             (("u0", ("a", "die", "b")), ("u1", ("c", "hang", "d")), ("u2", ("e",)), ("u3", ("f",)))]
    done: dict[str, list] = {}
    settings = PoolSettings(min_actors=0, max_actors=2, shape={"num_cpus": 0}, image_seconds=1.5, losses_per_unit=2)
    t0 = time.time()
    out = run_pool(units, len(units), lambda n: Steps.remote(),
                   lambda actor, unit, attempt: actor.unit_steps.options(
                       num_returns="streaming", **(CAREFUL_STREAM if attempt.careful else {})).remote(unit, attempt),
                   settings, on_result=lambda unit, res: done.update({res["unit_id"]: res["refused"]}))
    assert time.time() - t0 < 120
    assert done["u0"] == [(1, "killed its encoder twice: its worker process died")]
    assert done["u1"] == [(1, "stopped its encoder twice: over the time limit of 1.5 s per image (--image-timeout)")]
    assert done["u2"] == [] and out.failed == ["u3"] and "u3" not in done
    assert out.actors_lost == 3 + 3 + 2 and out.images_refused == 2


def test_an_image_that_kills_its_encoder_gets_an_error_row_and_the_rest_is_archived(tmp_path, local_ray,
                                                                                     tiny_checkpoint, capsys):
    """#23.1 end to end: a real actor death on one image (its process killed while reading it, as an OOM kill
    does); at most three losses, an error row that says so, every other image archived, a summary, exit 1."""
    from pipeline.cli import main

    (tmp_path / "in").mkdir()
    for name, seed in (("a", 1), ("die", 2), ("b", 3)):
        (tmp_path / "in" / f"{name}.png").write_bytes(png_bytes(seed))
    opts = '{"fail_every": 0, "die_on": "die.png"}'
    rc = main(["transcode", "--input", f"flaky://{tmp_path}/in", "--output", f"flaky://{tmp_path}/out", "--qp", "1",
               "--model", tiny_checkpoint, "--actors", "1", "--storage-options", opts])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1 and summary["shards_failed"] == [] and summary["ok"] == 2 and summary["errors"] == 1
    assert summary["actors_lost"] == 3 and summary["images_refused_unread"] == 1
    rows = {r["key"]: r for r in read_manifest(fsspec.filesystem("file"), str(tmp_path / "out"))}
    assert rows["a"]["status"] == rows["b"]["status"] == "ok"
    assert rows["die"]["error"] == "killed its encoder twice: its worker process died"


def test_a_fifo_reached_through_a_plan_or_a_row_is_refused_not_read(tmp_path):
    """#23.2: planned files are checked to be regular files when read; a FIFO never blocks a reader."""
    import os
    import threading

    from pipeline_helpers import read_unit

    from pipeline.spec import ArchivedRow, WorkUnit

    src = tmp_path / "in"
    src.mkdir()
    (src / "ok.png").write_bytes(png_bytes(1))
    os.mkfifo(src / "pipe.png")
    os.mkfifo(src / "pipe.tar")
    units = [WorkUnit("0", "files", (str(src / "ok.png"), str(src / "pipe.png")), 1, str(src)),
             WorkUnit("1", "tar", (str(src / "pipe.tar"),), 1, str(src)),
             WorkUnit("2", "rows", (), 1, str(tmp_path / "arch"),
                      (ArchivedRow("pipe", "ok", source_uri=str(src / "pipe.png")),))]
    got: dict[str, object] = {}

    def read_all() -> None:
        for u in units:
            got[u.unit_id] = {r.key: r for r in read_unit(u, None, source_root=str(src), source_mode="source")}

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(20)
    assert not reader.is_alive(), "a FIFO blocked the reader"
    assert got["0"]["ok"].data == png_bytes(1)
    assert got["0"]["pipe"].data is None and "a FIFO, not a regular file" in got["0"]["pipe"].error
    assert "a FIFO" in got["1"]["pipe.tar"].error and got["1"]["pipe.tar"].error.startswith("refused")
    assert got["2"]["pipe"].error.startswith("no input: source refused") and "a FIFO" in got["2"]["pipe"].error


class _CountingServer:
    """A real HTTP server on 127.0.0.1 that counts requests: proof that nothing was fetched."""

    def __enter__(self):
        import http.server
        import threading

        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - the standard library's name
                hits.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(png_bytes(9))

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()


def test_manifest_rows_cannot_choose_what_a_reencode_reads(tmp_path):
    """#23.3: a row's source_uri is read only under the archive's input, and only if it holds the row's key."""
    from pipeline_helpers import read_unit

    from pipeline.spec import ArchivedRow, WorkUnit

    src = tmp_path / "in"
    src.mkdir()
    for name in ("f", "e"):
        (src / f"{name}.png").write_bytes(png_bytes(ord(name)))
    (tmp_path / "outside.png").write_bytes(png_bytes(5))
    with _CountingServer() as web:
        rows = (ArchivedRow("a", "ok", source_uri="/etc/hostname"),
                ArchivedRow("b", "ok", source_uri=f"{web.url}/b.png"),
                ArchivedRow("c", "ok", source_uri=str(tmp_path / "outside.png")),
                ArchivedRow("c2", "ok", source_uri=f"{src}/../outside.png"),
                ArchivedRow("d", "ok", source_uri=str(src / "e.png")),
                ArchivedRow("f", "ok", source_uri=str(src / "f.png")))
        unit = WorkUnit("0", "rows", (), 1, str(tmp_path / "arch"), rows)
        recs = {r.key: r for r in read_unit(unit, None, source_root=str(src), source_mode="source")}
        nowhere = {r.key: r for r in read_unit(unit, None, source_mode="source")}  # no recorded input
    assert web.hits == []
    assert recs["f"].data == png_bytes(ord("f")) and recs["f"].encoded_from == "source"
    for key in "a", "b", "c", "c2":
        assert recs[key].data is None and "not under the input" in recs[key].error, recs[key].error
    assert "holds key 'e', not the row's 'd'" in recs["d"].error
    assert recs["a"].sha256 is None  # nothing of /etc/hostname was read, so nothing of it is stored
    assert all("--source-prefix" in r.error for r in nowhere.values())


def test_a_tampered_transcode_plan_is_refused_naming_the_file(tmp_path):
    """#23.4 and #23.11: units naming files outside the input, parts outside _plan/, unreadable parts."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.plan import PlanError
    from pipeline.runner import prepare_plan

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(1))
    (tmp_path / "elsewhere.png").write_bytes(png_bytes(2))
    spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp", target_value=1.0)
    spec, plan = prepare_plan(spec)
    assert [u.uris for u in plan] == [(str(tmp_path / "in" / "a.png"),)]
    part = tmp_path / "out" / "_plan" / "units-000000.parquet"
    table = pq.read_table(part).to_pylist()
    for bad in ("/etc/hostname", str(tmp_path / "elsewhere.png"), str(tmp_path / "in" / ".." / "elsewhere.png")):
        pq.write_table(pa.Table.from_pylist([{**table[0], "uris": [bad]}]), part)
        with pytest.raises(PlanError, match=f"{part}: unit '000000' names .*outside the job's input"):
            list(prepare_plan(spec)[1])
    part.write_bytes(b"PAR1 not parquet at all")
    with pytest.raises(PlanError, match=f"{part}: unreadable plan part"):
        list(prepare_plan(spec)[1])
    marker = tmp_path / "out" / "_plan" / "plan.json"
    m = json.loads(marker.read_text())
    for parts in (["../../in/a.parquet"], ["/etc/passwd"], ["units-000000.parquet/../../x"]):
        marker.write_text(json.dumps({**m, "parts": parts}))
        with pytest.raises(PlanError, match="plan.json: names a part"):
            prepare_plan(spec)


def test_a_planted_reencode_plan_cannot_fetch_a_model_or_read_another_archive(small_archive, tiny_checkpoint):
    """#23.4: a re-encode plan that matches the user's job is still checked unit by unit; decode models and the
    source mode are the command's, never the plan's."""
    import pyarrow.parquet as pq
    from pipeline_helpers import read_unit

    from pipeline.plan import PlanError, freeze_plan
    from pipeline.reencode import run_reencode
    from pipeline.spec import ArchivedRow, WorkUnit

    arch = str(small_archive / "arch")
    row = next(r for r in pq.read_table(small_archive / "arch" / "manifest" / "part-000000.parquet").to_pylist())
    run_id = "20990101T000000Z-planted0"
    job = {"archive": arch, "where": "qp < 2", "target_kind": "qp", "target_value": 2.0, "model": tiny_checkpoint,
           "from": "bitstream", "run_id": run_id}
    with _CountingServer() as web:
        evil = ArchivedRow.from_manifest(row, "bitstream", [f"{web.url}/m.pt"])
        other = str(small_archive / "someone-elses-archive")
        freeze_plan(f"{arch}/_reencode/{run_id}", [WorkUnit(f"{run_id}-000000", "rows", (), 1, other, (evil,))],
                    job, None)
        with pytest.raises(PlanError, match=f"reads rows of {other!r}, not of this archive"):
            run_reencode(arch, "qp < 2", "qp", 2.0, model=tiny_checkpoint, source_mode="bitstream")
        # the worker's side: the row's own decode model and mode are ignored; the registry does not know the
        # tiny model, so the row fails, and nothing is fetched
        unit = WorkUnit("x", "rows", (), 1, arch, (evil,))
        rec = read_unit(unit, None, source_mode="bitstream")[0]
    assert web.hits == []
    assert rec.data is None and "not a registered model" in rec.error


def test_duplicate_members_stay_refused_through_a_reencode_from_source(tmp_path):
    """#23.5 at the reader: dup.png twice in a tar; neither 'dup' nor 'dup~dup2' gets the last member."""
    from pipeline_helpers import read_unit, tar_bytes

    from pipeline.spec import ArchivedRow, WorkUnit

    src = tmp_path / "in"
    src.mkdir()
    (src / "s.tar").write_bytes(tar_bytes([("dup.png", png_bytes(1)), ("ok.png", png_bytes(2)),
                                           ("dup.png", png_bytes(3))]))
    rows = tuple(ArchivedRow(k, "error", source_uri=f"{src}/s.tar#{m}") for k, m in
                 (("dup", "dup.png"), ("dup~dup2", "dup.png"), ("ok", "ok.png")))
    recs = {r.key: r for r in read_unit(WorkUnit("0", "rows", (), 1, str(tmp_path / "a"), rows), None,
                                        source_root=str(src), source_mode="source")}
    assert recs["ok"].data == png_bytes(2)
    assert recs["dup"].data is None and "duplicate key 'dup': 2 inputs share it" in recs["dup"].error
    assert recs["dup~dup2"].data is None and "not the row's 'dup~dup2'" in recs["dup~dup2"].error


def test_exit_codes_bad_parameters_and_duplicates_through_reencode(tmp_path, local_ray, tiny_checkpoint, capsys):
    """#23.10 and #23.5 end to end: a bad --qp is refused before any plan is frozen (exit 2), the corrected run
    archives and exits 1 because images failed, and a re-encode from source keeps the duplicates refused."""
    from pipeline_helpers import tar_bytes

    from pipeline.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "s.tar").write_bytes(tar_bytes([("dup.png", png_bytes(1)), ("ok.png", png_bytes(2)),
                                                       ("dup.png", png_bytes(3))]))
    out = tmp_path / "out"
    base = ["transcode", "--input", str(tmp_path / "in"), "--output", str(out), "--model", tiny_checkpoint,
            "--actors", "1"]
    assert main([*base, "--qp", "99"]) == 2
    assert "bad target --qp 99" in capsys.readouterr().err and not out.exists()
    assert main([*base, "--qp", "1"]) == 1  # two images failed (a shared name): 1, as documented
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] == 1 and summary["errors"] == 2 and summary["shards_failed"] == []
    again = ["reencode", str(out), "--where", "key LIKE 'dup%'", "--from", "source", "--model", tiny_checkpoint,
             "--source-prefix", str(tmp_path / "in")]
    assert main([*again, "--qp", "99"]) == 2 and not (out / "_reencode").exists()
    capsys.readouterr()
    assert main([*again, "--qp", "2"]) == 1
    assert json.loads(capsys.readouterr().out)["errors_this_run"] == 2
    rows = [r for r in read_manifest(fsspec.filesystem("file"), str(out)) if r["key"].startswith("dup")]
    assert len(rows) == 4 and all(r["status"] == "error" for r in rows)
    assert all("duplicate key 'dup'" in r["error"] or "not the row's 'dup~dup2'" in r["error"] for r in rows)


def test_symlinks_fifos_and_dangling_links_in_a_local_input_are_planned_or_named(tmp_path, caplog):
    """#23.6: a link to a file inside the input is followed; anything else is named in the warning, with why."""
    import logging
    import os

    from pipeline_helpers import read_unit

    from pipeline.plan import build_plan

    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "a.png").write_bytes(png_bytes(1))
    (tmp_path / "secret.png").write_bytes(png_bytes(2))
    os.symlink(src / "a.png", src / "inside.png")
    os.symlink(tmp_path / "secret.png", src / "outside.png")
    os.symlink(src / "gone.png", src / "dangling.png")
    os.symlink(src / "sub", src / "folder.png")
    os.mkfifo(src / "pipe.png")
    caplog.set_level(logging.WARNING, logger="pipeline")
    units = build_plan(str(src), None)
    assert [os.path.basename(u) for unit in units for u in unit.uris] == ["a.png", "inside.png"]
    text = caplog.text
    assert "5 entries under" not in text and "4 entries under" in text
    assert "outside.png (a symlink to" in text and "outside the input" in text
    assert "dangling.png (a dangling symlink)" in text and "pipe.png (a FIFO, not a regular file)" in text
    assert "folder.png (a symlink to a folder" in text
    recs = {r.key: r for r in read_unit(units[0], None)}
    assert recs["inside"].data == png_bytes(1)
    # a link swapped to point outside after planning is refused when read
    os.remove(src / "inside.png")
    os.symlink(tmp_path / "secret.png", src / "inside.png")
    recs = {r.key: r for r in read_unit(units[0], None)}
    assert recs["inside"].data is None and "outside the input" in recs["inside"].error


def test_a_second_driver_with_another_job_is_refused_at_start(tmp_path):
    """#23.7: two drivers on one output with different targets: never both; a same-job rerun is not blocked."""
    import concurrent.futures

    from pipeline import claims
    from pipeline.plan import read_plan
    from pipeline.runner import prepare_plan

    (tmp_path / "in").mkdir()
    for i in range(3):
        (tmp_path / "in" / f"x{i}.png").write_bytes(png_bytes(i))
    opts = {"fail_every": 0, "list_delay": 0.5}  # a listing slow enough for the two drivers to overlap

    def spec(qp: float, out: str = "out") -> JobSpec:
        return JobSpec(input=f"flaky://{tmp_path}/in", output=str(tmp_path / out), target_kind="qp",
                       target_value=qp, input_options=opts)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(prepare_plan, spec(qp)) for qp in (1.0, 2.0)]
        outcomes = [f.exception() or f.result() for f in futures]
    won = [o for o in outcomes if not isinstance(o, Exception)]
    lost = [o for o in outcomes if isinstance(o, Exception)]
    assert len(won) <= 1 and all(isinstance(e, JobError) and "\n" not in str(e) for e in lost)
    assert all("being planned by another driver" in str(e) or "another job" in str(e) for e in lost)
    if won:
        assert read_plan(str(tmp_path / "out"), None).job["target_value"] == won[0][0].target_value
    # a driver still listing (its claim is live) refuses another job at once, but not a rerun of its own
    folder = str(tmp_path / "busy" / "_plan")
    mine = spec(1.0, "busy")
    claims.claim_output(folder, mine.output, "20990101T000000Z-driverA0", {**mine.job_dict(), "run_id": "x"}, None)
    with pytest.raises(JobError, match="being planned by another driver for a different job"):
        prepare_plan(spec(2.0, "busy"))
    assert prepare_plan(mine)[1].units == 1


@pytest.mark.parametrize("options", [
    {"connection_string": "DefaultEndpointsProtocol=https;AccountName=a;AccountKey=c2VjcmV0"},
    {"endpoint_url": "https://acct.blob.core.windows.net/c?sv=2024-01-01&sig=c2VjcmV0"},
    {"client_kwargs": {"headers": {"Authorization": "Bearer eyJhbGciOi"}}},
    {"client_kwargs": {"endpoint_url": "http://admin:hunter2@127.0.0.1:9000"}},
    {"passwd": "hunter2"},
    {"key": ["AKIAEXAMPLE", "wJalrXUtnFEMI"]},
    {"secret": 123456789},
    {"sas_token": "sv=2024&sig=abc"},
    {"account_key": "c2VjcmV0"},
    {"token": {"client_id": "x", "client_secret": "y"}},
])
def test_inline_storage_options_with_any_credential_are_refused(options, capsys):
    """#23.8: every form a credential takes inline is refused, naming the option, never echoing the value."""
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["stats", "/nonexistent", "--storage-options", json.dumps(options)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "@FILE" in err and "looks like a credential" in err
    for secret in ("c2VjcmV0", "hunter2", "wJalrXUtnFEMI", "123456789", "eyJhbGciOi", "abc"):
        assert secret not in err


def test_inline_storage_options_without_credentials_pass():
    from pipeline.storage_options import options_arg

    for ok in ({"anon": True}, {"client_kwargs": {"endpoint_url": "http://127.0.0.1:9000", "region_name": "x"}},
               {"config_kwargs": {"signature_version": "s3v4"}}, {"auto_mkdir": True}, {"key": None}):
        assert options_arg(json.dumps(ok)) == ok


@pytest.mark.parametrize("where", [
    "true)) OR ((true",
    "true)) LIMIT 1 --",
    "bpp > 0 LIMIT 1",
    "current_setting('memory_limit') = '1GB'",
    "key IN (SELECT name FROM duckdb_settings())",
    "length(repeat('x', 4000000000)) > 0",
    "getenv('HOME') IS NOT NULL",
    "no_such_column = 1",
    "main.manifest.key = 'a'",
])
def test_where_is_one_expression_over_the_manifest_columns(small_archive, capsys, where):
    """#23.9: parsed alone, checked node by node, refused before anything runs (no Ray, no memory, no time)."""
    from pipeline.cli import main

    t0 = time.perf_counter()
    for cmd in (["verify", str(small_archive / "arch")], ["restore", str(small_archive / "arch"), "/nonexistent"]):
        assert main([*cmd, "--where", where]) == 2
        assert "invalid selection" in capsys.readouterr().err
    assert time.perf_counter() - t0 < 5


def test_selections_stay_inside_their_guard_and_connections_are_bounded(small_archive, monkeypatch):
    """#23.9: the user's condition cannot widen the program's guard; every connection has memory and time limits."""
    from pipeline import sql
    from pipeline.archive import ArchiveError, connect, iter_select, query

    con = connect(str(small_archive / "arch"))
    rows = [r for b in iter_select(con, "key = 'a' OR true", guard="key = 'b'") for r in b]
    assert [r["key"] for r in rows] == ["b"]
    assert query(con, "SELECT current_setting('memory_limit')")[1][0][0] != ""
    assert query(con, "SELECT current_setting('max_execution_time')")[1][0][0] == int(sql.SQL_SECONDS * 1000)
    monkeypatch.setattr(sql, "SQL_SECONDS", 0.5)
    slow = connect(str(small_archive / "arch"), locked=False)
    t0 = time.perf_counter()
    with pytest.raises(ArchiveError, match="exceeded maximum execution time"):
        query(slow, "SELECT count(*) FROM range(100000000000) t(x) WHERE x % 7 = 3")
    assert time.perf_counter() - t0 < 10


def test_float32_numerics_are_informational_and_messages_blame_the_right_thing(tiny_model, tiny_checkpoint,
                                                                                monkeypatch):
    """#23.11: a header claiming 64 threads changes nothing; damage written here is damage, not this machine;
    a profile mismatch with the very model the file names is a damaged header, not advice to load it again."""
    import torch

    from msinn.decoding import NumericsMismatch
    from msinn.encoding import encode_image
    from msinn.ratecontrol import Target

    img = np.random.default_rng(5).integers(0, 256, (64, 64, 3), np.uint8)
    png = image_file(img)
    res = encode_image(tiny_model, png, Target("qp", 1))
    header, payload = unpack(res.data)
    header.numerics = header.numerics.replace(f"threads={torch.get_num_threads()}", "threads=64")
    threads_set: list[int] = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (threads_set.append(n), real(n))[1])
    assert np.array_equal(decode_image(pack(header, payload), tiny_model).pixels, res.reconstruction)
    assert 64 not in threads_set
    header, payload = unpack(res.data)  # this machine's own numerics, one level's digest damaged
    header.tiles[0].level_digests[1] = "00000000"
    with pytest.raises(BitstreamError, match="damaged: it was written under this machine's numerics") as exc:
        decode_image(pack(header, payload), tiny_model, "damaged")
    assert not isinstance(exc.value, NumericsMismatch)
    portable = msinn.load(tiny_checkpoint)
    pres = encode_image(portable, png, Target("qp", 1))
    header, payload = unpack(pres.data)
    header.profile = "float32"
    with pytest.raises(BitstreamError, match="header is damaged or was altered") as exc:
        decode_image(pack(header, payload), portable, "flipped")
    assert "decode with --model" not in str(exc.value)


def test_restore_checks_the_member_at_each_offset(small_archive, tiny_checkpoint):
    """#23.11: a row carrying another row's offset names another image: refused, never restored as this key."""
    import pyarrow.parquet as pq

    from pipeline.restore import decode_rows

    rows = {r["key"]: dict(r, archive_root=str(small_archive / "arch")) for r in
            pq.read_table(small_archive / "arch" / "manifest" / "part-000000.parquet").to_pylist()}
    assert [r["ok"] for r in decode_rows(list(rows.values()), None, [tiny_checkpoint])] == [True, True]
    swapped = dict(rows["a"], offset=rows["b"]["offset"], length=rows["b"]["length"])
    shifted = dict(rows["a"], offset=rows["a"]["offset"] + 512)
    results = decode_rows([swapped, shifted], None, [tiny_checkpoint])
    assert not results[0]["ok"] and "holds member 'b.msinn'" in results[0]["error"]
    assert "points at another image" in results[0]["error"]
    assert not results[1]["ok"] and "UntrustedReference" in results[1]["error"]
