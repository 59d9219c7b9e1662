"""Per-image codec choice: classical codecs as archive formats, their quality search, the choice's rule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import image_file
from PIL import Image

from msinn import classical
from msinn.choice import Candidate, ChoiceOptions, choose, encode_best, parse_codecs, pick
from msinn.container import image_digest
from msinn.images import PreparedImage, open_image
from msinn.ratecontrol import QualitySearch, Target
from msinn.refine import EFFORTS

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


def _photo(w: int = 192, h: int = 128, name: str = "kodim23.png") -> PreparedImage:
    im = Image.open(KODAK / name).convert("RGB").crop((200, 150, 200 + w, 150 + h))
    return open_image(image_file(im), name)


def _with_alpha(img: PreparedImage, mode: str) -> PreparedImage:
    rng = np.random.default_rng(3)
    alpha = rng.integers(0, 256, (img.height, img.width), dtype=np.uint8)
    if mode == "LA":
        gray = np.repeat(img.rgb[:, :, :1], 3, axis=2)
        return PreparedImage(gray, alpha, "LA", "LA", 8, "PNG")
    return PreparedImage(img.rgb, alpha, "RGBA", "RGBA", 8, "PNG")


# ------------------------------------------------------------------ classical codecs as archive formats


@pytest.mark.parametrize("codec", ["avif", "webp", "jxl"])
@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_survives_exactly_or_the_file_is_refused(codec, mode):
    img = _with_alpha(_photo(64, 48), mode)
    coded = classical.code(codec, img, 40)
    assert coded.pixels.shape == (48, 64, 4 if mode == "RGBA" else 2)
    assert np.array_equal(coded.pixels[..., -1], img.alpha)  # random alpha: any loss would show
    assert classical.decode(coded.data, mode).tobytes() == coded.pixels.tobytes()


def test_jpeg_cannot_carry_alpha():
    with pytest.raises(ValueError, match="alpha"):
        classical.encode("jpeg", _with_alpha(_photo(32, 32), "RGBA"), 50)


@pytest.mark.parametrize("codec", ["avif", "jpeg", "webp", "jxl"])
def test_gray_images_decode_to_gray(codec):
    g = _photo(64, 48)
    img = PreparedImage(np.repeat(g.rgb[:, :, :1], 3, axis=2), None, "L", "L", 8, "PNG")
    coded = classical.code(codec, img, 60)
    assert coded.pixels.shape == (48, 64) and coded.psnr > 25


def test_a_decoded_size_is_checked_before_pixels_are_allocated():
    data = classical.encode("avif", _photo(128, 96), 50)
    from msinn.errors import ImageInputError

    with pytest.raises(ImageInputError, match="exceeds the limit"):
        classical.decode(data, "RGB", "big.avif", max_pixels=128 * 96 - 1)


def test_codec_versions_name_the_libraries():
    v = classical.versions("avif")
    assert "libavif" in v and "dav1d" in v and "aom" in v
    assert "libwebp" in classical.versions("webp") and "pillow-jxl-plugin" in classical.versions("jxl")


# ------------------------------------------------------------------ the quality search


def _curve(slope: float, offset: float):
    calls = []

    def measure(q: int):
        calls.append(q)
        return offset + slope * q, q

    return measure, calls


@pytest.mark.parametrize("cap", [True, False])
@pytest.mark.parametrize("limit", [3.3, 17.0, 49.95, 88.2])
@pytest.mark.parametrize("start,slope_guess", [(50, 1.0), (5, 0.3), (95, 3.0)])
def test_the_search_finds_the_boundary_and_proves_it(cap, limit, start, slope_guess):
    measure, calls = _curve(1.0, 0.0)  # g(q) = q: the answer is floor(limit) for caps, ceil(limit) for floors
    res = QualitySearch(0, 100, measure, limit, cap, start, slope_guess).run()
    want = math.floor(limit) if cap else math.ceil(limit)
    assert res.quality == want and res.in_range and res.note == ""
    assert (want + 1 if cap else want - 1) in calls  # the neighbour across the limit was measured: proven
    assert res.measures == len(set(calls)) <= 6


def test_a_file_within_the_window_needs_no_proof():
    """As the model's rate control, a file within [floor, floor + window] is accepted without its neighbour."""
    measure, calls = _curve(0.2, 30.0)  # 0.2 dB per quality step: quality 26 gives 35.2 dB
    res = QualitySearch(0, 100, measure, 35.15, False, 26, 0.2, window=0.1).run()
    assert (res.quality, res.measures, calls) == (26, 1, [26])  # 0.05 dB over the floor: taken as it is
    calls.clear()
    res = QualitySearch(0, 100, measure, 35.05, False, 26, 0.2, window=0.1).run()
    assert (res.quality, calls) == (26, [26, 25])  # 0.15 dB over: its neighbour proves it the smallest


def test_the_search_flags_a_target_beyond_the_codec():
    measure, _ = _curve(0.1, 30.0)  # PSNR 30 .. 40
    low = QualitySearch(0, 100, measure, 45.0, False, 50, 0.1).run()
    assert (low.quality, low.in_range) == (100, False) and "highest quality" in low.note
    high = QualitySearch(0, 100, measure, 25.0, False, 50, 0.1).run()
    assert (high.quality, high.in_range) == (0, True)  # every quality meets the floor: the smallest wins
    cap = QualitySearch(0, 100, measure, 20.0, True, 50, 0.1).run()
    assert (cap.quality, cap.in_range) == (0, False) and "lowest rate" in cap.note


def test_the_search_stops_when_the_outcome_is_decided():
    measure, calls = _curve(1.0, 0.0)
    res = QualitySearch(0, 100, measure, 60.5, False, 10, 1.0, decided=lambda s: len(s.meas) >= 1).run()
    assert res.decided and res.measures == 1 and calls == [10]


def test_non_monotone_curves_still_meet_the_limit():
    rng = np.random.default_rng(0)
    g = np.cumsum(rng.uniform(-0.2, 1.0, 101))  # mostly rising, with dips

    def measure(q: int):
        return float(g[q]), q

    for limit in np.linspace(g.min() + 1, g.max() - 1, 15):
        for cap in (True, False):
            res = QualitySearch(0, 100, measure, float(limit), cap, 50, 0.5).run()
            assert (g[res.quality] <= limit) if cap else (g[res.quality] >= limit)


# ------------------------------------------------------------------ the choice's rule


def _cand(codec: str, nbytes: int, psnr: float) -> Candidate:
    return Candidate(codec, b"x" * nbytes, psnr, 1.0, True, "", 1, 0, 0.0, np.zeros((1, 1), np.uint8), "h", "v")


def test_pick_follows_the_documented_rule():
    a, b, c = _cand("msinn", 100, 34.0), _cand("avif", 80, 33.5), _cand("webp", 120, 36.0)
    floor = Target("psnr", 33.8)
    assert pick([a, b, c], floor, 33.8, 1000).codec == "msinn"  # smallest that reaches the floor
    assert pick([b], floor, 33.8, 1000).codec == "avif"  # none reaches it: the highest PSNR
    cap = Target("bytes", 110)
    assert pick([a, b, c], cap, None, 1000).codec == "msinn"  # highest PSNR within the cap
    assert pick([c], cap, None, 1000).codec == "webp"  # none fits: the smallest


def test_parse_codecs_refuses_what_it_does_not_know():
    assert parse_codecs("msinn, AVIF,avif") == ("msinn", "avif")
    assert parse_codecs(None) == ("msinn",)
    with pytest.raises(ValueError, match="gif"):
        parse_codecs("msinn,gif")
    with pytest.raises(ValueError, match="speed"):
        ChoiceOptions(("avif",), 11)


@pytest.fixture(scope="module")
def portable_tiny_path(tmp_path_factory, tiny_model) -> str:
    from conftest import save_portable_copy

    return save_portable_copy(tiny_model, tmp_path_factory.mktemp("m") / "tiny-choice.pt")


@pytest.fixture(scope="module")
def portable_tiny(portable_tiny_path):
    import msinn

    return msinn.load(portable_tiny_path)


@pytest.mark.parametrize("target", [Target("psnr", 31.0), Target("bpp", 0.6), Target("qp", 2)])
def test_every_target_kind_is_met_whichever_codec_wins(portable_tiny, target):
    img = _photo()
    res = encode_best(portable_tiny, img, target, ChoiceOptions(("msinn", "avif", "webp")))
    pixels = img.width * img.height
    assert {c.codec for c in res.candidates} == {"msinn", "avif", "webp"}
    w = res.winner
    if target.kind == "bpp":
        assert w.bytes * 8 / pixels <= 0.6
        assert w.psnr == max(c.psnr for c in res.candidates if c.bytes * 8 / pixels <= 0.6)
    else:
        floor = 31.0 if target.kind == "psnr" else res.candidates[0].psnr  # qp: the model's PSNR is the floor
        assert res.floor == pytest.approx(floor) and w.psnr >= floor
        assert w.bytes == min(c.bytes for c in res.candidates if c.psnr >= floor)
    # the kept file is what a decoder gives back, and its hash is that of its decoded pixels
    if w.codec != "msinn":
        assert image_digest(classical.decode(w.data, img.mode)) == w.pixel_hash


def test_a_codec_that_cannot_win_stops_early(portable_tiny):
    """Against an unbeatable leader the AVIF search ends after an encode or two, not a full search."""
    img = _photo()
    tiny = _cand("msinn", 40, 60.0)  # 40 bytes at 60 dB: nothing AVIF writes can beat it
    tiny.pixels = img.rgb
    from msinn.choice import search_classical

    beaten = search_classical("avif", img, Target("psnr", 35.0), 35.0, 6, best=tiny)
    alone = search_classical("avif", img, Target("psnr", 35.0), 35.0, 6)
    assert beaten.probes < alone.probes and "stopped" in beaten.note
    assert alone.psnr >= 35.0 and alone.note == ""


def test_qp_without_the_model_is_refused():
    with pytest.raises(ValueError, match="needs msinn"):
        choose(_photo(), Target("qp", 2), ChoiceOptions(("avif",)))


# ------------------------------------------------------------------ AVIF files decode to their hash anywhere

_DECODE_SCRIPT = """
import sys
from PIL import AvifImagePlugin
AvifImagePlugin.DEFAULT_MAX_THREADS = int(sys.argv[2])
from msinn.classical import decode
from msinn.container import image_digest
print(image_digest(decode(open(sys.argv[1], "rb").read(), sys.argv[3])))
"""


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_avif_files_decode_to_the_recorded_hash_in_other_processes_and_thread_counts(tmp_path, mode):
    img = _photo(256, 192)
    if mode == "RGBA":
        img = _with_alpha(img, "RGBA")
    coded = classical.code("avif", img, 45)
    recorded = image_digest(coded.pixels)
    path = tmp_path / "a.avif"
    path.write_bytes(coded.data)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for threads in (1, 2, 8):
        out = subprocess.run([sys.executable, "-c", _DECODE_SCRIPT, str(path), str(threads), mode], env=env,
                             capture_output=True, text=True, check=True)
        assert out.stdout.strip() == recorded, f"{threads} threads"


# ------------------------------------------------------------------ the command line


def test_msinn_encode_writes_the_winner_in_its_own_format(tmp_path, portable_tiny_path, capsys):
    from msinn.cli import codec as codec_cli

    src = tmp_path / "in.png"
    Image.fromarray(_photo().rgb).save(src)
    assert codec_cli.main("encode", [str(src), str(tmp_path / "out.msinn"), "--psnr", "33", "--model",
                                     portable_tiny_path, "--codecs", "msinn,avif"]) == 0
    out = json.loads(capsys.readouterr().out)
    written = Path(out["output"])
    assert written.suffix == "." + {"msinn": "msinn", "avif": "avif"}[out["codec"]] and written.is_file()
    assert out["psnr"] >= 33 and len(out["candidates"]) == 2
    decode = ["--model", portable_tiny_path] if out["codec"] == "msinn" else []
    assert codec_cli.main("decode", [str(written), str(tmp_path / "back.png"), *decode]) == 0
    assert Image.open(tmp_path / "back.png").size == (192, 128)
    assert codec_cli.main("encode", [str(src), str(tmp_path / "x.msinn"), "--qp", "1", "--codecs", "avif"]) == 2
    assert "needs msinn" in capsys.readouterr().err


def test_a_codec_this_build_lacks_is_refused_at_the_start_in_one_line(tmp_path, monkeypatch, capsys):
    """Not once per image: the job stops before it plans anything (Pillow builds without AVIF exist)."""
    from pipeline.cli import main

    real = classical.codec_available
    monkeypatch.setattr(classical, "codec_available",
                        lambda name: "KeyError: 'AVIF' (not in this build)" if name == "avif" else real(name))
    (tmp_path / "in").mkdir()
    Image.fromarray(_photo(64, 64).rgb).save(tmp_path / "in" / "a.png")
    rc = main(["transcode", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--target-psnr", "30",
               "--codecs", "msinn,avif"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "avif" in err[0] and "not in this build" in err[0]
    assert not (tmp_path / "out").exists()
    assert main(["transcode", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), "--qp", "2",
                 "--codecs", "avif"]) == 2
    assert "needs msinn" in capsys.readouterr().err


# ------------------------------------------------------------------ encoder-side refinement


def test_refinement_keeps_the_target_and_the_portable_profile(portable_tiny, monkeypatch):
    """Whatever refinement does, the file meets its target, decodes exactly, and is never worse than effort 0."""
    from msinn import refine
    from msinn.decoding import decode_image
    from msinn.encoding import encode_image

    monkeypatch.setitem(refine.EFFORTS, 9, refine.Effort(iterations=4, lr=0.02))
    img = _photo(128, 96)
    reach = encode_image(portable_tiny, img, Target("qp", 2))  # targets the tiny model reaches
    for target in (Target("psnr", reach.psnr + 0.5), Target("bpp", reach.bpp * 1.1), Target("qp", 2)):
        plain = encode_image(portable_tiny, img, target)
        refined = encode_image(portable_tiny, img, target, effort=9)
        assert refined.header.profile == "portable-1"
        decoded = decode_image(refined.data, portable_tiny)
        assert np.array_equal(decoded.pixels, refined.reconstruction)
        assert refined.probes >= plain.probes
        assert plain.in_range and refined.in_range
        if target.kind == "psnr":
            assert refined.psnr >= target.value and refined.bytes <= plain.bytes
        elif target.kind == "bpp":
            assert refined.bpp <= target.value and refined.psnr >= plain.psnr - 1e-9


def test_soft_forward_with_rounding_is_the_coding_path():
    """The refinement's differentiable model, with hard rounding, costs what the coder writes (to its tables)."""
    import torch

    import msinn
    from msinn.tensors import to_padded_tensor, to_uint8

    model = msinn.load()
    img = _photo(128, 64)
    x = to_padded_tensor(img.rgb, "cpu")
    with torch.no_grad():
        lat = model.analyze(x)
        bits, x_hat = model.float_model.soft_forward(lat, 3.0, torch.round)
    enc = model.encode_latents(lat, 3, keep_state=True, code=False)
    coded = enc.code_length() * 8
    assert abs(float(bits) - coded) / coded < 0.05  # the CDF tables cost a little more than the Gaussian
    exact = model.to_uint8(enc.finish())
    assert np.abs(exact.astype(int) - to_uint8(x_hat).astype(int)).mean() < 3  # the float twin, roughly


@pytest.mark.parametrize("level", sorted(EFFORTS)[:1])
def test_a_shipped_effort_level_saves_bytes_on_photo_crops(level):
    """The lowest shipped level, on the bundled model: floors still reached, fewer bytes in total than effort 0."""
    import msinn
    from msinn.decoding import decode_image
    from msinn.encoding import encode_image

    model = msinn.load()
    plain_total = refined_total = 0
    for name in ("kodim23.png", "kodim07.png"):
        img = _photo(128, 128, name)
        target = Target("psnr", 32.0)
        plain = encode_image(model, img, target)
        refined = encode_image(model, img, target, effort=level)
        assert refined.psnr >= 32.0 and refined.bytes <= plain.bytes
        assert np.array_equal(decode_image(refined.data, model).pixels, refined.reconstruction)
        plain_total, refined_total = plain_total + plain.bytes, refined_total + refined.bytes
    assert refined_total < plain_total


def test_unknown_effort_levels_are_refused():
    from msinn.refine import effort_of

    assert effort_of(0) is None
    with pytest.raises(ValueError, match="not a level"):
        effort_of(99)


def test_scheduled_specs_take_codecs_and_effort(tmp_path):
    from pipeline.scheduled import load_spec

    good = tmp_path / "good.toml"
    good.write_text('archive = "a"\ncodecs = ["msinn", "AVIF"]\navif_speed = 4\n[target]\nkind = "psnr"\nvalue = 35\n')
    assert load_spec(good)["codecs"] == ("msinn", "avif")
    bad = tmp_path / "bad.toml"
    bad.write_text('archive = "a"\ncodecs = "msinn,gif"\n[target]\nkind = "psnr"\nvalue = 35\n')
    with pytest.raises(ValueError, match=r"bad.toml: unknown codec\(s\) gif"):
        load_spec(bad)
    also = tmp_path / "also.toml"
    also.write_text('archive = "a"\nalso_models = ["x-p1"]\n[target]\nkind = "psnr"\nvalue = 35\n')
    assert load_spec(also)["also_models"] == ["x-p1"]
    also.write_text('archive = "a"\nalso_models = "x-p1"\n[target]\nkind = "psnr"\nvalue = 35\n')
    with pytest.raises(ValueError, match="also.toml: also_models must be a list"):
        load_spec(also)
    also.write_text('archive = "a"\nalso_models = ["x-p1"]\n[target]\nkind = "lossless"\n')
    with pytest.raises(ValueError, match="also.toml: also_models names weights of the model"):
        load_spec(also)
    also.write_text('archive = "a"\ncodecs = ["avif"]\nalso_models = ["x-p1"]\n[target]\nkind = "psnr"\nvalue = 35\n')
    with pytest.raises(ValueError, match="which this job does not run"):
        load_spec(also)


def test_images_a_codec_cannot_carry_go_to_the_others(monkeypatch):
    """JPEG never takes an image with alpha; a large image goes to the model alone; the reasons are kept."""
    from msinn import choice

    rgba = _with_alpha(_photo(64, 48), "RGBA")
    res = choose(rgba, Target("psnr", 30.0), ChoiceOptions(("jpeg", "webp")))
    assert res.winner.codec == "webp" and "alpha" in res.failed["jpeg"]
    monkeypatch.setattr(choice, "CLASSICAL_MAX_PIXELS", 64 * 48 - 1)
    with pytest.raises(ValueError, match="none of the codecs"):
        choose(_photo(64, 48), Target("psnr", 30.0), ChoiceOptions(("avif",)))
