"""Shared checks for pipeline tests: make inputs, and verify an archive independently."""

from __future__ import annotations

import io
import socket
import tarfile

import numpy as np
import pyarrow.parquet as pq
from helpers import image_file
from PIL import Image

import msinn
from msinn.decoding import decode_image


def unit_summary(steps) -> dict:
    """Run a unit's steps (``UnitEncoder.unit_steps`` or ``steps``) to the end, as the pool does; its summary."""
    *_, (kind, summary) = steps
    assert kind == "done", kind
    return summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png_bytes(seed: int, w: int = 72, h: int = 56, mode: str = "RGB") -> bytes:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack(((x * 3 + seed * 17) % 256, (y * 4) % 256, (x + y + seed) % 256), axis=2).astype(np.float64)
    img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
    im = Image.fromarray(img)
    return image_file(im if mode == "RGB" else im.convert(mode))


def corrupt_bytes() -> dict[str, bytes]:
    good = png_bytes(99)
    return {"zero": b"", "text": b"this is not an image", "truncated": good[: len(good) // 2]}


def read_manifest(fs, root: str) -> list[dict]:
    paths = sorted(p for p in fs.find(f"{root}/manifest") if p.endswith(".parquet"))
    rows = []
    for p in paths:
        with fs.open(p, "rb") as f:
            rows += pq.read_table(f).to_pylist()
    return rows


def verify_archive(fs, root: str, expected_keys: set[str], model_path: str) -> dict[str, bytes]:
    """Every key once; every ok row decodes from its tar range; tars hold nothing the manifest lacks (images and
    the samples' stored parts).

    Returns the bitstream of every ok key, for byte-identity comparisons between runs.
    """
    every = read_manifest(fs, root)
    rows = [r for r in every if r.get("codec") != "none"]  # samples without an image keep only their parts
    keys = [r["key"] for r in rows]
    assert len(keys) == len(set(keys)), "a key appears more than once"
    assert set(keys) == expected_keys
    model = msinn.load(model_path)
    streams = {}
    for r in rows:
        assert r["status"] in ("ok", "error")
        if r["status"] == "error":
            assert r["error"]
            continue
        tar_path = r["tar_uri"].split("://", 1)[-1]
        with fs.open(tar_path, "rb") as f:
            f.seek(r["offset"])
            data = f.read(r["length"])
        assert len(data) == r["bytes"]
        decoded = decode_image(data, model, r["key"])
        assert decoded.pixels.shape[:2] == (r["height"], r["width"])
        streams[r["key"]] = data
    members = set()
    for p in fs.find(f"{root}/bitstreams"):
        if p.endswith(".tar"):
            with fs.open(p, "rb") as f, tarfile.open(fileobj=io.BytesIO(f.read())) as tf:
                members |= {m.name for m in tf.getmembers()}
    parts = {m["member"] for r in every for m in r.get("members") or () if m.get("member")}
    assert members == {f"{k}.msinn" for k in streams} | parts, "tar members and manifest rows differ"
    return streams


def unit_spec(unit, options=None, **kw):
    """A job whose input is the unit's root: what a worker reads the unit under."""
    from pipeline.spec import JobSpec

    return JobSpec(input=unit.root, output="/nonexistent", target_kind="qp", target_value=1.0,
                   input_options=options or {}, **kw)


def read_unit(unit, options=None, **kw) -> list:
    """A unit's records as the encoder sees them: streamed, then keys shared within the unit refused."""
    from pipeline.inputs import stream_unit
    from pipeline.keys import refuse_duplicates

    def fail(record, why: str) -> None:
        record.error, record.data = why, None

    records = list(stream_unit(unit, unit_spec(unit, options, **kw)))
    refuse_duplicates([r for r in records if not r.sidecar], fail)  # as the encoder does: images only
    return records


def tar_bytes(members) -> bytes:
    """An uncompressed tar of (name, data) pairs, in order (a dict, or a list when names repeat)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, data in (members.items() if isinstance(members, dict) else members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()
