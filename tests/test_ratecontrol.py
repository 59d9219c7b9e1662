"""Rate control lands inside the promised windows, or says the target is out of range."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from helpers import image_file
from PIL import Image

from msinn.encoding import encode_image
from msinn.ratecontrol import RateSearch, Target, snap_qp


@pytest.fixture(scope="module")
def image_bytes() -> bytes:
    rng = np.random.default_rng(5)
    y, x = np.mgrid[0:128, 0:192]
    base = np.stack((x, y * 1.5, (x + y) / 2), axis=2)
    img = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    return image_file(img)


@pytest.fixture(scope="module")
def anchor_points(tiny_model, image_bytes):
    return {q: encode_image(tiny_model, image_bytes, Target("qp", q)) for q in (0, 1, 2, 3)}


@pytest.mark.parametrize("between", [(0, 1), (1, 2), (2, 3)])
def test_bpp_cap_lands_in_window(tiny_model, image_bytes, anchor_points, between):
    a, b = (anchor_points[q] for q in between)
    target = math.sqrt(a.bpp * b.bpp)
    res = encode_image(tiny_model, image_bytes, Target("bpp", target))
    assert res.in_range, res.note
    assert 0.98 * target <= res.bpp <= target
    assert between[0] <= res.qp <= between[1]
    assert res.probes <= 4


def test_bytes_cap_counts_the_whole_file(tiny_model, image_bytes, anchor_points):
    cap = int((anchor_points[1].bytes + anchor_points[2].bytes) / 2)
    res = encode_image(tiny_model, image_bytes, Target("bytes", cap))
    assert 0.98 * cap <= len(res.data) <= cap


@pytest.mark.parametrize("between", [(0, 1), (1, 2), (2, 3)])
def test_psnr_floor_lands_in_window(tiny_model, image_bytes, anchor_points, between):
    a, b = (anchor_points[q] for q in between)
    target = (a.psnr + b.psnr) / 2
    res = encode_image(tiny_model, image_bytes, Target("psnr", target))
    assert res.in_range, res.note
    assert target <= res.psnr <= target + 0.1
    assert res.probes <= 4


def test_targets_outside_the_range_return_the_nearest_end(tiny_model, image_bytes, anchor_points):
    low = encode_image(tiny_model, image_bytes, Target("bpp", anchor_points[0].bpp * 0.5))
    assert low.qp == 0 and not low.in_range and "below" in low.note
    high = encode_image(tiny_model, image_bytes, Target("bpp", anchor_points[3].bpp * 2))
    assert high.qp == 3 and not high.in_range and "above" in high.note
    assert high.bpp <= anchor_points[3].bpp * 2
    best = encode_image(tiny_model, image_bytes, Target("psnr", anchor_points[3].psnr + 5))
    assert best.qp == 3 and not best.in_range
    worst = encode_image(tiny_model, image_bytes, Target("psnr", anchor_points[0].psnr - 5))
    assert worst.qp == 0 and not worst.in_range


def test_fixed_qp_is_exact(tiny_model, image_bytes):
    res = encode_image(tiny_model, image_bytes, Target("qp", 1.3))
    assert res.qp == 1.3 and res.probes == 1


def test_invalid_targets():
    for kind, value in (("bpp", 0), ("psnr", -1), ("size", 3), ("bytes", float("nan"))):
        with pytest.raises(ValueError):
            Target(kind, value)


def test_search_on_a_synthetic_curve():
    """The solver itself: a smooth curve whose estimate is off by a constant and a tilt."""
    true = lambda q: 8.0 + 0.7 * q + 0.05 * q * q
    est = lambda q: true(q) - 0.4 + 0.03 * q
    calls = []

    def measure(q):
        calls.append(q)
        return true(q), q

    target = true(3.3)
    s = RateSearch(8, est, measure, target + math.log(0.98), target, target + math.log(0.99), cap=True)
    res = s.run()
    assert res.in_range and target + math.log(0.98) <= true(res.qp) <= target
    assert len(calls) <= 3
    assert snap_qp(res.qp, 7) == res.qp


def test_code_length_is_the_rans_stream_length(tiny_model, image_bytes):
    """The size the search relies on equals what the coder writes, escapes (bypass codes) included."""
    from msinn.images import open_image
    from msinn.tensors import to_padded_tensor

    img = open_image(image_bytes, "noise.png")
    latents = tiny_model.analyze(to_padded_tensor(img.rgb, tiny_model.gain.device))
    for qp in (0, 0.5, 1.75, 3):
        enc = tiny_model.encode_latents(latents, qp, code=False)
        predicted = enc.code_length()
        assert predicted == len(enc.data)
    tables = tiny_model.tables()
    rng = np.random.default_rng(3)
    n = 5000
    indexes = rng.integers(0, len(tables.cdf_lengths), n).astype(np.int32)
    symbols = rng.normal(0, 40, n).round().astype(np.int32)  # many far outside the tables: bypass-coded
    offsets = np.asarray(tables.offsets)[indexes]
    lengths = np.asarray(tables.cdf_lengths)[indexes]
    escaped = (symbols - offsets < 0) | (symbols - offsets >= lengths - 2)
    assert escaped.sum() > n // 10
    assert tables.code_length(symbols, indexes) == len(tables.encode(symbols, indexes))


def test_only_the_kept_encode_is_entropy_coded(tiny_model, image_bytes, anchor_points, monkeypatch):
    from msinn.entropy import RansTables

    calls = []
    real_encode = RansTables.encode
    monkeypatch.setattr(RansTables, "encode", lambda self, s, i: calls.append(len(s)) or real_encode(self, s, i))
    target = math.sqrt(anchor_points[1].bpp * anchor_points[2].bpp)
    res = encode_image(tiny_model, image_bytes, Target("bpp", target))
    assert res.probes >= 2 and len(calls) == 1
    assert 0.98 * target <= res.bpp <= target


def test_a_wrong_size_prediction_never_breaks_the_cap(tiny_model, image_bytes, anchor_points, monkeypatch):
    """If the predicted size were ever off, the final check searches again with real sizes."""
    from msinn.entropy import RansTables

    real_length, real_encode, calls = RansTables.code_length, RansTables.encode, []
    monkeypatch.setattr(RansTables, "code_length", lambda self, s, i: int(real_length(self, s, i) * 0.8))
    monkeypatch.setattr(RansTables, "encode", lambda self, s, i: calls.append(len(s)) or real_encode(self, s, i))
    target = math.sqrt(anchor_points[1].bpp * anchor_points[2].bpp)
    res = encode_image(tiny_model, image_bytes, Target("bpp", target))
    assert len(calls) > 1  # the first pick overshot, and every later probe was really coded
    assert res.in_range, res.note
    assert 0.98 * target <= res.bpp <= target


@pytest.mark.parametrize("w,h,target", [(64, 64, ("bpp", 0.5)), (64, 64, ("bytes", 500)), (1, 1, ("bytes", 300)),
                                        (65, 129, ("bpp", 0.8)), (130, 70, ("bytes", 900))])
def test_a_cap_within_reach_is_never_exceeded_on_small_images(w, h, target):
    """Small and odd sizes: the header is a large share of the file, and is counted exactly."""
    import msinn

    model = msinn.load()
    photo = np.asarray(Image.open(Path(__file__).resolve().parents[1] / "samples" / "kodim23.png").convert("RGB"))
    t = Target(*target)
    res = encode_image(model, image_file(photo[200 : 200 + h, 300 : 300 + w]), t)
    assert res.in_range, res.note  # each target here is reachable
    assert res.bytes <= t.cap_bytes(w * h), (res.bytes, t.cap_bytes(w * h))
