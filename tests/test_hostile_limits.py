"""Issue #29: bombs in every format, limits that hold for what they admit, and where originals may be read.

Every image's size is known from its header before a pixel is decoded (JPEG
XL included, whatever the file is called); archived members are held to
their rows' sizes before decoding; the memory estimate covers the effort a
job runs; every limit is checked the same way on every command; gc counts
retention from when a shard stopped being referenced; claims and resumed
evaluations cannot be planted.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from conftest import BUNDLED
from helpers import image_file, png_stream
from pipeline_helpers import png_bytes, read_manifest, unit_summary

from msinn.errors import BitstreamError, ImageInputError
from pipeline.spec import JobSpec, WorkUnit

REPO = Path(__file__).resolve().parents[1]
# a command in a fresh process: its exit code, its seconds after start-up (imports done) and its peak RSS (VmHWM: this
# process's own, where ru_maxrss would carry the forking test process's)
PEAK = ("import re, sys, time\nfrom msinn.cli import main\nt0 = time.perf_counter()\nrc = main(sys.argv[1:])\n"
        "t = time.perf_counter() - t0\nhwm = re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())\n"
        "print('RESULT', rc, t, int(hwm.group(1)) / 1024)")


def _jxl(width: int, height: int, container: bool = False) -> bytes:
    """A real JPEG XL file of black pixels (libjxl through imagecodecs): cheap to encode at any size."""
    import imagecodecs

    return imagecodecs.jpegxl_encode(np.zeros((height, width), np.uint8), effort=1, lossless=True,
                                     usecontainer=container)


@pytest.fixture(scope="module")
def jxl_bomb() -> bytes:
    """16000x16000 (256 MP, under the default --max-pixels) in about 26 KB."""
    data = _jxl(16000, 16000)
    assert len(data) < 64 << 10
    return data


def _webp_bomb(width: int, height: int) -> bytes:
    """A 34-byte lossless WebP of one colour whose header claims width x height (one colour costs no bits, so it
    decodes to that size)."""
    buf = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (16, 16)).save(buf, "WEBP", lossless=True)
    d = buf.getvalue()
    i = d.index(b"VP8L") + 8
    bits = struct.unpack_from("<I", d, i + 1)[0] & ~((1 << 28) - 1) | (width - 1) | ((height - 1) << 14)
    return d[: i + 1] + struct.pack("<I", bits) + d[i + 5 :]


def _in_child(*argv: str) -> tuple[int, float, float, str]:
    """(exit code, seconds after start-up, peak RSS in MB, stderr) of ``msinn ARGV`` in a fresh process."""
    out = subprocess.run([sys.executable, "-c", PEAK, *argv], capture_output=True, text=True, timeout=300, cwd=REPO)
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT"))
    rc, seconds, peak = line.split()[1:]
    return int(rc), float(seconds), float(peak), out.stderr


# ---------------------------------------------------------------- 1: sizes from headers, JPEG XL included

@pytest.mark.parametrize("container", [False, True])
def test_jpeg_xl_sizes_are_read_from_the_header_as_libjxl_decodes_them(container):
    import imagecodecs

    from msinn.sizing import image_size, is_jxl

    for w, h in ((1, 1), (64, 64), (1920, 1080), (517, 1999), (4096, 16), (9, 7), (1350, 1080), (3001, 17)):
        data = _jxl(w, h, container)
        assert is_jxl(data) and imagecodecs.jpegxl_decode(data).shape[:2] == (h, w)
        size = image_size(data, "x.png")  # by signature, whatever the name says
        assert (size.format, size.width, size.height) == ("JXL", w, h)
    with pytest.raises(ImageInputError, match="JPEG XL header unreadable"):
        image_size(_jxl(64, 64, container)[: 14 if container else 3], "cut.jxl")


def test_a_jpeg_xl_bomb_is_refused_from_its_header_by_every_reader(jxl_bomb, tiny_checkpoint):
    from msinn import classical
    from pipeline.encoder import UnitEncoder
    from pipeline.limits import memory_refusal
    from pipeline.sources import InputRecord

    t0 = time.perf_counter()
    with pytest.raises(ImageInputError, match="16000x16000 pixels exceeds the limit of 1000000"):
        classical.decode(jxl_bomb, "L", "bomb.jxl", max_pixels=1_000_000)
    assert "16000x16000" in memory_refusal(jxl_bomb, 8 << 30, 1 << 21, 0)
    enc = UnitEncoder(tiny_checkpoint)
    unit = WorkUnit("0", "files", (), 0, "/")
    t0 = time.perf_counter()
    for spec, why in ((JobSpec(input="/in", output="/out", target_kind="qp", target_value=1.0),
                       "refused: needs about"),  # the memory budget (8 GiB)
                      (JobSpec(input="/in", output="/out", target_kind="qp", target_value=1.0, max_pixels=1 << 20,
                               image_memory=1 << 40), "bad image: /in/x.png: 16000x16000 pixels exceeds")):
        row, pending = enc.prepare_record(InputRecord("x", "/in/x.png", jxl_bomb), spec, unit)  # named x.png
        assert pending is None and row.error.startswith(why), row.error
    assert time.perf_counter() - t0 < 2


def test_msinn_decode_and_encode_refuse_a_jpeg_xl_bomb_at_the_cost_of_its_header(tmp_path, jxl_bomb):
    """The issue's goal: a 16000x16000 JPEG XL of a few KB refused well under a second after start-up, under 600 MB
    peak, whatever the file is called."""
    (tmp_path / "bomb.jxl").write_bytes(jxl_bomb)
    (tmp_path / "x.png").write_bytes(jxl_bomb)
    for argv in (["decode", str(tmp_path / "bomb.jxl"), str(tmp_path / "out.png"), "--max-pixels", "1000000"],
                 ["encode", str(tmp_path / "x.png"), str(tmp_path / "x.msinn"), "--max-pixels", "1000000"]):
        rc, seconds, peak_mb, err = _in_child(*argv)
        assert rc == 1 and "16000x16000 pixels exceeds the limit of 1000000 pixels" in err, err[-1000:]
        assert seconds < 1.0 and peak_mb < 600, (argv[0], seconds, peak_mb)
    assert not (tmp_path / "out.png").exists() and not (tmp_path / "x.msinn").exists()


# ---------------------------------------------------------------- 2: archived members held to their rows

def _forged_archive(tmp_path: Path, members: dict[str, bytes]) -> tuple[str, dict[str, dict]]:
    """An archive shard holding ``members`` (name -> bytes), and a row for each claiming a 96x64 image."""
    arch = tmp_path / "arch"
    (arch / "bitstreams").mkdir(parents=True)
    tar = arch / "bitstreams" / "part-000000.tar"
    with tarfile.open(tar, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    rows = {}
    with tarfile.open(tar) as tf:
        for m in tf.getmembers():
            key, ext = m.name.rsplit(".", 1)
            codec = {"jpg": "jpeg"}.get(ext, ext)
            rows[key] = {"key": key, "status": "ok", "codec": codec, "mode": "RGB", "width": 96, "height": 64,
                         "pixel_hash": "0" * 16, "tar_uri": str(tar), "offset": m.offset_data, "length": m.size,
                         "archive_root": str(arch), "model": BUNDLED,
                         "model_hash": "cd158f947d2d9aa3"}
    return str(arch), rows


def test_archived_members_are_held_to_their_rows_size_before_decoding(tmp_path):
    """A 34-byte WebP and a JPEG XL of 12000x12000, and a .msinn file of another size, each in a 96x64 row."""
    from pipeline.restore import decode_rows

    golden = (Path(__file__).resolve().parent / "golden" / "k03-qp4.msinn").read_bytes()
    arch, rows = _forged_archive(tmp_path, {"w.webp": _webp_bomb(12000, 12000), "j.jxl": _jxl(12000, 12000),
                                            "m.msinn": golden})
    rss0, t0 = _rss_mb(), time.perf_counter()
    results = {r["key"]: r for r in decode_rows(list(rows.values()), None, None)}
    assert time.perf_counter() - t0 < 3 and _rss_mb() - rss0 < 200
    for key, codec in (("w", "webp"), ("j", "jxl"), ("m", "msinn")):
        err = results[key]["error"]
        assert not results[key]["ok"] and f"its {codec} file's header gives" in err, err
        assert "differs from the manifest's 96x64; refused before decoding" in err
    assert "12000x12000" in results["w"]["error"] and "12000x12000" in results["j"]["error"]
    # a row that agrees with its bomb is still held to the largest classical file the pipeline writes
    from pipeline.bitstreams import decode_row

    big = dict(rows["w"], width=12000, height=12000)
    with pytest.raises(BitstreamError, match="exceeds the limit of 40000000"):
        decode_row(big, None, None)
    with pytest.raises(BitstreamError, match="without the size of its image"):
        decode_row(dict(rows["w"], width=None, height=None), None, None)


def _rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- 4: where originals may be read

def test_where_originals_are_read_is_the_commands_word_never_the_archives(tmp_path, local_ray, tiny_checkpoint,
                                                                          capsys):
    """A plan.json whose input was edited to '/' and rows keyed 'etc/hostname' and 'private/secret' read nothing
    without --source-prefix: --from source is refused, --from auto re-encodes from bitstreams only."""
    from pipeline.cli import main
    from pipeline.encoder import UnitEncoder
    from pipeline.manifest import ManifestRow, to_parquet
    from pipeline.plan import freeze_plan

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(png_bytes(1))
    (tmp_path / "private").mkdir()
    (tmp_path / "private" / "secret.png").write_bytes(png_bytes(7))
    arch = tmp_path / "arch"
    spec = JobSpec(input=str(tmp_path / "in"), output=str(arch), target_kind="qp", target_value=1.0,
                   model=tiny_checkpoint, run_id="first")
    unit_summary(UnitEncoder(tiny_checkpoint).unit_steps(
        WorkUnit("000000", "files", (str(tmp_path / "in" / "a.png"),), 1, str(tmp_path / "in")), spec))
    freeze_plan(str(arch / "_plan"), iter([]), {**spec.job_dict(), "input": "/"}, None)  # planted: the whole disk
    now = datetime.now(UTC)
    planted = [ManifestRow(key="etc/hostname", status="ok", source_uri="/etc/hostname", run_id="planted",
                           created_at=now),
               ManifestRow(key="private/secret", status="ok", source_uri=str(tmp_path / "private" / "secret.png"),
                           run_id="planted", created_at=now)]
    (arch / "manifest" / "part-planted.parquet").write_bytes(to_parquet(planted))
    base = ["reencode", str(arch), "--qp", "2", "--model", tiny_checkpoint, "--decode-model", tiny_checkpoint,
            "--actors", "1"]
    assert main([*base, "--from", "source"]) == 2
    assert "--source-prefix" in capsys.readouterr().err and not (arch / "_reencode").exists()
    assert main([*base, "--from", "auto"]) == 1  # the planted rows fail, nothing of theirs read
    summary = json.loads(capsys.readouterr().out)
    assert summary["selected"] == 3 and summary["errors_this_run"] == 2
    import fsspec

    rows = {r["key"]: r for r in read_manifest(fsspec.filesystem("file"), str(arch))
            if r["run_id"] == summary["run_id"]}
    for key in ("etc/hostname", "private/secret"):
        assert rows[key]["status"] == "error" and "--source-prefix" in rows[key]["error"], rows[key]["error"]
        assert rows[key]["source_sha256"] is None and rows[key]["source_bytes"] is None
    assert rows["a"]["status"] == "ok" and rows["a"]["encoded_from"] == "bitstream"


# ---------------------------------------------------------------- 5: the memory estimate covers the effort

def test_the_memory_estimate_covers_the_effort_the_job_runs(tiny_checkpoint):
    from pipeline.encoder import UnitEncoder
    from pipeline.limits import memory_refusal, peak_bytes
    from pipeline.sources import InputRecord

    # measured with bench/image_memory.py (docs/pipeline.md, "Guarantees"): effort 0 and 1 at 512 and 1024 pixels a side
    for side, effort, measured_mb in ((512, 0, 186), (1024, 0, 757), (512, 1, 1161), (1024, 1, 4089)):
        assert measured_mb <= peak_bytes(side, side, 1 << 21, effort) / 2**20 <= measured_mb * 1.25
    assert peak_bytes(1024, 1024, 1 << 21, 2) == peak_bytes(1024, 1024, 1 << 21, 1)  # more steps, same peak
    assert peak_bytes(8192, 8192, 1 << 21, 1) - peak_bytes(8192, 8192, 1 << 21, 0) < 4 << 30  # one tile at a time
    data = png_stream(1024, 1024)
    budget = 2 << 30
    assert memory_refusal(data, budget, 1 << 21, 0) is None
    assert "1024x1024 at --effort 1" in memory_refusal(data, budget, 1 << 21, 1)
    # each weights' prepared encode is held until the choice (--also-model): counted once per weights
    assert peak_bytes(1024, 1024, 1 << 21, 0, weights=2) == 2 * peak_bytes(1024, 1024, 1 << 21, 0)
    assert "with 3 sets of weights" in memory_refusal(data, budget, 1 << 21, 0, weights=3)
    spec = JobSpec(input="/in", output="/out", target_kind="qp", target_value=1.0, effort=1, image_memory=budget)
    row, pending = UnitEncoder(tiny_checkpoint).prepare_record(InputRecord("k", "/in/k.png", data), spec,
                                                               WorkUnit("0", "files", (), 0, "/"))
    assert pending is None and row.error.startswith("refused: needs about") and "--effort 1" in row.error
    # with --also-model the actor counts its weights: a budget one set fits, two do not
    budget = int(1.5 * peak_bytes(1024, 1024, 1 << 21, 0))
    spec = JobSpec(input="/in", output="/out", target_kind="qp", target_value=1.0, image_memory=budget,
                   also_models=(tiny_checkpoint,))
    row, pending = UnitEncoder(tiny_checkpoint, also_models=[tiny_checkpoint]).prepare_record(
        InputRecord("k", "/in/k.png", data), spec, WorkUnit("0", "files", (), 0, "/"))
    assert pending is None and "with 2 sets of weights" in row.error
    assert memory_refusal(data, budget, 1 << 21, 0) is None


# ---------------------------------------------------------------- 6: a selection over the time limit

def test_a_selection_over_the_sql_time_limit_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline import sql
    from pipeline.cli import main

    n = 300_000
    (tmp_path / "manifest").mkdir()
    pq.write_table(pa.table({"key": [f"k{i:07d}" for i in range(n)], "status": ["ok"] * n,
                             "bpp": np.linspace(0, 1, n), "run_id": ["r"] * n}),
                   tmp_path / "manifest" / "part-000000.parquet")
    monkeypatch.setattr(sql, "SQL_SECONDS", 0.001)
    for cmd in (["verify", str(tmp_path)], ["restore", str(tmp_path), str(tmp_path / "out")]):
        assert main([*cmd, "--where", "bpp > 0.5"]) == 2
        err = capsys.readouterr().err
        assert "ran over the time limit of 0.001 s (MSINN_SQL_SECONDS raises it)" in err
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------- 7: every limit checked once, the same way

@pytest.mark.parametrize(("key", "value", "option"), [
    ("image_timeout", "-1", "--image-timeout"), ("image_memory_mb", "-1", "--image-memory-mb"),
    ("image_memory_mb", "0", "--image-memory-mb"), ("actors", '"two"', "--actors"),
    ("rows_per_shard", "0", "--rows-per-shard"), ("retention_hours", "nan", "--retention-hours"),
])
def test_limits_are_refused_alike_on_every_command_and_in_specs(tmp_path, capsys, key, value, option):
    from pipeline.cli import main

    spec = tmp_path / "nightly.toml"
    spec.write_text(f'archive = "{tmp_path / "arch"}"\n{key} = {value}\n\n[target]\nkind = "qp"\nvalue = 1\n')
    assert main(["scheduled", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"bad {key} " in err and "must be" in err and len(err.strip().splitlines()) == 1, err
    cli_value = value.strip('"')
    for argv in (["reencode", str(tmp_path / "arch"), "--qp", "1"],
                 ["transcode", "--input", str(tmp_path), "--output", str(tmp_path / "out"), "--qp", "1"]):
        if argv[0] == "transcode" and key in ("rows_per_shard", "retention_hours"):
            continue
        try:
            rc = main([*argv, option, cli_value])
        except SystemExit as exc:  # argparse's own type check (an int option given "two")
            rc = exc.code
        assert rc == 2, (argv[0], option)
        assert option in capsys.readouterr().err or cli_value == "two"
    assert not (tmp_path / "out").exists() and not (tmp_path / "arch").exists()


def test_one_check_for_every_limit_whoever_builds_the_job():
    from pipeline.spec import JobError, check_limits

    with pytest.raises(JobError, match=r"bad image_seconds -1: must be a number above 0"):
        JobSpec(input="/in", output="/out", target_kind="qp", target_value=1.0, image_seconds=-1)
    with pytest.raises(JobError, match=r"bad --actors 'two': must be a whole number of at least 1"):
        check_limits({"actors": "two"})
    with pytest.raises(JobError, match=r"bad actors 2.5"):
        check_limits({"actors": 2.5}, option_style=False)
    check_limits({"actors": 2, "image_timeout": 0.5, "retention_hours": 0, "unrelated": "x", "max_actors": None})


# ---------------------------------------------------------------- 8: JPEG XL read everywhere; outputs named by content

def test_jpeg_xl_is_read_wherever_images_are_and_outputs_are_named_by_what_they_hold(tmp_path, capsys):
    from msinn.cli import main

    png = tmp_path / "a.png"
    png.write_bytes(image_file(np.random.default_rng(4).integers(0, 256, (48, 64, 3), np.uint8)))
    assert main(["encode", str(png), str(tmp_path / "a.msinn"), "--codecs", "jxl", "--psnr", "28"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["codec"] == "jxl" and out["output"] == str(tmp_path / "a.jxl")  # one classical codec: never .msinn
    assert not (tmp_path / "a.msinn").exists()
    # a fresh process, where no --codecs option registered the plugin: msinn decode reads what encode wrote, and
    # a .jxl input encodes with the model alone
    code = ("import sys\nfrom msinn.cli import main\n"
            f"print('RC', main(['decode', {str(tmp_path / 'a.jxl')!r}, {str(tmp_path / 'back.png')!r}]), "
            f"main(['encode', {str(tmp_path / 'a.jxl')!r}, {str(tmp_path / 'b.msinn')!r}, '--qp', '1']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert "RC 0 0" in res.stdout, res.stderr[-2000:]
    from PIL import Image

    assert Image.open(tmp_path / "back.png").size == (64, 48) and (tmp_path / "b.msinn").stat().st_size > 0
    from msinn.images import IMAGE_EXTENSIONS

    assert ".jxl" in IMAGE_EXTENSIONS and ".avif" in IMAGE_EXTENSIONS  # listed inputs too: the formats it writes


# ---------------------------------------------------------------- 9: gc's retention from when a shard was released

def test_gc_keeps_a_shard_for_the_retention_after_the_run_that_stopped_referencing_it(tmp_path):
    """An archive written ten days ago, re-encoded an hour ago: its old shard stays for the week's retention."""
    from pipeline.manifest import ManifestRow, to_parquet
    from pipeline.reencode import gc_shards

    arch = tmp_path / "arch"
    (arch / "manifest").mkdir(parents=True)
    (arch / "bitstreams").mkdir()
    now = datetime.now(UTC)
    ten_days, hour = now - timedelta(days=10), now - timedelta(hours=1)
    bits = arch / "bitstreams"

    def rows(tar: str, run: str, at: datetime) -> bytes:
        return to_parquet([ManifestRow(key=k, status="ok", tar_uri=str(bits / tar), offset=512, length=1, run_id=run,
                                       created_at=at) for k in ("a", "b")])

    (arch / "manifest" / "part-000000.parquet").write_bytes(rows("part-000000.tar", "old", ten_days))
    (arch / "manifest" / "part-new-000000.parquet").write_bytes(rows("part-new-000000.tar", "new", hour))
    for name in ("part-000000.tar", "part-new-000000.tar", "part-orphan-000000.tar"):
        (bits / name).write_bytes(b"x")
        os.utime(bits / name, (ten_days.timestamp(), ten_days.timestamp()))  # all written ten days ago
    week = 168.0
    res = gc_shards(str(arch), None, week)
    assert res["kept_within_retention"] == [str(bits / "part-000000.tar")]  # released an hour ago: kept
    assert res["deleted"] == [str(bits / "part-orphan-000000.tar")]  # never referenced: from when it was written
    later = gc_shards(str(arch), None, week, dry_run=True, now=hour + timedelta(hours=week + 1))
    assert later["deleted"] == [str(bits / "part-000000.tar")]
    assert (bits / "part-000000.tar").exists() and (bits / "part-new-000000.tar").exists()


# ---------------------------------------------------------------- 10a: planted claims

@pytest.mark.parametrize("at", ["Infinity", "1e300", "NaN", '"soon"'])
def test_a_claim_from_the_future_or_not_a_time_blocks_nobody(tmp_path, caplog, at):
    from pipeline.claims import claim_output
    from pipeline.spec import JobError

    folder = tmp_path / "out" / "_plan"
    (folder / "claims").mkdir(parents=True)
    (folder / "claims" / "planted.json").write_text(f'{{"at": {at}, "job": {{"target_value": 9}}}}')
    claim = claim_output(str(folder), str(tmp_path / "out"), "mine", {"target_value": 1}, None)
    assert "unreadable claim ignored" in caplog.text
    claim.release()
    # a live claim of another driver (written now, or a few seconds ahead on its clock) still refuses
    (folder / "claims" / "planted.json").write_text(json.dumps({"at": time.time() + 5, "job": {"target_value": 9}}))
    with pytest.raises(JobError, match="being planned by another driver"):
        claim_output(str(folder), str(tmp_path / "out"), "mine", {"target_value": 1}, None)


# ---------------------------------------------------------------- 10b: a damaged eval JSON is never resumed

def test_a_damaged_or_edited_eval_json_is_refused_in_one_line(tmp_path, tiny_model, capsys):
    import msinn
    from msinn.cli import eval as eval_cli

    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(image_file(np.random.default_rng(3).integers(0, 256, (48, 64, 3),
                                                                                            np.uint8)))
    model = tmp_path / "tiny.pt"
    msinn.save_checkpoint(model, tiny_model)
    out = tmp_path / "rd.json"
    argv = [str(tmp_path / "imgs"), "--model", str(model), "--qps", "1", "--codecs", "jpeg", "--json", str(out)]
    assert eval_cli.main(argv) == 0
    good = json.loads(out.read_text())
    capsys.readouterr()

    def damaged(change) -> dict:
        doc = json.loads(json.dumps(good))
        change(doc)
        return doc

    cases = {
        "truncated": out.read_text()[:200],
        "a list": "[]",
        "psnr text": json.dumps(damaged(lambda d: d["per_image"][0]["points"][0].update(psnr="high"))),
        "fabricated psnr": json.dumps(damaged(lambda d: d["per_image"][0]["points"][0].update(psnr=99.0))),
        "quality missing": json.dumps(damaged(lambda d: d["per_image"][0]["codecs"]["jpeg"].pop())),
        "no checksum": json.dumps(damaged(lambda d: d.pop("per_image_sha256"))),
    }
    for name, text in cases.items():
        out.write_text(text)
        assert eval_cli.main([*argv, "--resume"]) == 1, name
        err = capsys.readouterr().err
        assert f"{out}: cannot be resumed" in err and "Traceback" not in err, (name, err)
        assert out.read_text() == text  # never overwritten by a run that did not start
    # plausibility, not only the checksum: a re-hashed forgery of impossible points is refused too
    from msinn.evaluation.report import per_image_digest, resumable

    forged = damaged(lambda d: d["per_image"][0]["points"][0].update(psnr=120.0))
    forged["per_image_sha256"] = per_image_digest(forged["per_image"])
    with pytest.raises(ValueError, match=r"points\[0\]\.psnr 120.0 is outside"):
        resumable(forged, good["model"])
    forged = damaged(lambda d: d["per_image"][0]["points"][0].update(bpp=0.001))
    forged["per_image_sha256"] = per_image_digest(forged["per_image"])
    with pytest.raises(ValueError, match=r"bpp 0.001 is not its \d+ bytes"):
        resumable(forged, good["model"])
    assert resumable(good, good["model"]) == good["per_image"]
