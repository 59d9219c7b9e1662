"""Hostile inputs: files that lie about their size, corrupted streams, bad models, awkward names.

The other items of the hostile-input review are tested beside the code they
concern: gc spellings and spec-file SQL in test_reencode.py, duplicate keys
in test_pipeline.py, multi-frame images and Pillow's limit in test_images.py,
size caps in test_ratecontrol.py, manifest and header trust, SQL and secrets
in test_archive_ops.py and test_cli.py, checkpoint configs in
test_checkpoint.py and test_portable.py.
"""

from __future__ import annotations

import random
import resource
import struct
import time
import zlib
from pathlib import Path

import fsspec
import numpy as np
import pytest
from pipeline_helpers import png_bytes, read_manifest

import msinn
from msinn.codec import decode_image
from msinn.container import MAGIC, _uvarint, encode_header, pack, read_header, unpack
from msinn.errors import BitstreamError
from pipeline.runner import run_job
from pipeline.spec import JobError, JobSpec

GOLDEN = Path(__file__).resolve().parent / "golden"


@pytest.fixture(scope="module")
def model():
    return msinn.load()


@pytest.fixture(scope="module")
def small_file() -> bytes:
    return (GOLDEN / "k03-qp4.msinn").read_bytes()


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


def test_five_hundred_seeded_corruptions_end_in_bitstream_errors(model, small_file):
    """Header fields that decoding depends on and payload bytes, each behind recomputed CRCs."""
    header, start = read_header(small_file)
    payload = small_file[start:]
    rng = random.Random(14)
    before = _rss_mb()
    outcomes = {"refused": 0}
    for i in range(500):
        h, _ = read_header(small_file)
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


def test_random_header_bytes_behind_a_recomputed_crc_never_decode_to_other_pixels(model, small_file):
    header, start = read_header(small_file)
    payload = small_file[start:]
    ref = decode_image(small_file, model).pixels
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
    s = run_reencode(str(out), "key = 'a#b'", "qp", 2.0, model=tiny_checkpoint, source_mode="source")
    assert s["selected"] == 1 and s["shards_failed"] == []
