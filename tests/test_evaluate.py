"""``msinn eval``: BD-rate arithmetic, real-coding evaluation end to end, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msinn import classical, image_files, metrics
from msinn.cli import eval as eval_cli
from msinn.evaluation import bdrate
from msinn.evaluation import rd as evaluate

KODIM23 = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "kodak" / "kodim23.png"

RATES = [0.12, 0.21, 0.33, 0.52, 0.80, 1.25]
PSNRS = [28.1, 30.2, 32.0, 34.1, 36.3, 38.2]


# ---------------------------------------------------------------------------------------------- BD-rate
def test_bd_rate_identical_curves_is_zero():
    assert bdrate.bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_scaled_rates():
    cheaper = [0.8 * r for r in RATES]
    assert bdrate.bd_rate(RATES, PSNRS, cheaper, PSNRS) == pytest.approx(-20.0, abs=0.5)
    # Swapping anchor and test inverts the ratio: 1/0.8 - 1 = +25 %.
    assert bdrate.bd_rate(cheaper, PSNRS, RATES, PSNRS) == pytest.approx(25.0, abs=0.5)


def test_bd_rate_partial_overlap_and_order_independence():
    # Log-linear curves (PCHIP reproduces them exactly); the test curve is sampled at other,
    # unsorted PSNRs covering only part of the anchor's range and needs half the rate.
    anchor_rate = [0.01 * math.exp(0.15 * p) for p in PSNRS]
    test_psnr = [37.0, 31.0, 33.5, 39.0]
    test_rate = [0.5 * 0.01 * math.exp(0.15 * p) for p in test_psnr]
    assert bdrate.bd_rate(anchor_rate, PSNRS, test_rate, test_psnr) == pytest.approx(-50.0, abs=1e-6)


def test_bd_rate_without_overlap_is_none():
    value, reason = bdrate.bd_rate_with_reason(RATES, PSNRS, RATES, [p + 20 for p in PSNRS])
    assert value is None
    assert "overlap" in reason
    assert bdrate.bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS]) is None
    assert bdrate.bd_rate(RATES, PSNRS, [0.5], [30.0]) is None  # one point is no curve


def _eval_doc(model: str, scale: dict[str, float], qps: list[int]) -> dict:
    """An ``msinn eval --json`` document whose images' rates are the curve above times ``scale[image]``."""
    per_image = [{"image": f"/data/{name}", "points": [{"qp": q, "bpp": RATES[i] * f, "psnr": PSNRS[i]}
                                                      for i, q in enumerate(range(6)) if q in qps]}
                 for name, f in scale.items()]
    points = [{"qp": q, "bpp": RATES[q] * float(np.mean(list(scale.values()))), "psnr": PSNRS[q]} for q in qps]
    return {"model": model, "points": points, "per_image": per_image}


def test_compare_rd_gates_model_against_model_over_the_common_qps(tmp_path, capsys):
    """scripts/compare_rd.py: a candidate 10% cheaper on one image and 5% dearer on the other, measured at more
    qps than the default, is compared over the qps both have; files with nothing in common are refused."""
    mod = _load_script("compare_rd")
    old = _eval_doc("old", {"a.png": 1.0, "b.png": 1.0}, [0, 2, 4])
    new = _eval_doc("new", {"a.png": 0.9, "b.png": 1.05}, [0, 1, 2, 3, 4, 5])
    r = mod.compare_files(new, old)
    assert r["qps"] == [0, 2, 4]
    assert r["per_image"]["a.png"] == pytest.approx(-10.0, abs=1e-6)
    assert r["per_image"]["b.png"] == pytest.approx(5.0, abs=1e-6)
    assert r["bd_rate"] == pytest.approx(-2.5, abs=1e-6)
    (tmp_path / "new.json").write_text(json.dumps(new))
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert mod.main([str(tmp_path / "new.json"), str(tmp_path / "old.json")]) == 0
    out = capsys.readouterr().out
    assert "BD-rate -2.50%" in out and "1 of 2 images better" in out
    (tmp_path / "other.json").write_text(json.dumps(_eval_doc("x", {"c.png": 1.0}, [0, 2])))
    assert mod.main([str(tmp_path / "other.json"), str(tmp_path / "old.json")]) == 1
    assert "no image" in capsys.readouterr().err
    (tmp_path / "one.json").write_text(json.dumps(_eval_doc("y", {"a.png": 1.0}, [0])))
    assert mod.main([str(tmp_path / "one.json"), str(tmp_path / "old.json")]) == 1
    assert "at least two" in capsys.readouterr().err


def test_the_per_image_choice_takes_each_images_smaller_codec_at_each_floor():
    """Two images: the model wins on one, the codec on the other; the choice is the mean of the smaller rates."""
    model = {"bpp": [0.2, 0.5, 1.2], "psnr": [30.0, 34.0, 38.0]}
    pts = lambda c: [{"bpp": b, "psnr": p} for b, p in zip(c["bpp"], c["psnr"])]  # noqa: E731
    half = {"bpp": [b / 2 for b in model["bpp"]], "psnr": model["psnr"]}
    double = {"bpp": [b * 2 for b in model["bpp"]], "psnr": model["psnr"]}
    result = {"per_image": [{"points": pts(model), "codecs": {"avif": pts(half)}},
                            {"points": pts(model), "codecs": {"avif": pts(double)}}]}
    fl = evaluate.floor_curves(result, ["msinn", "avif"], floors=[30.0, 34.0, 38.0, 39.0])
    assert fl["curves"]["choice"]["psnr"] == [30.0, 34.0, 38.0]  # 39 dB: no image reaches it
    want = [(b / 2 + b) / 2 for b in model["bpp"]]
    assert fl["curves"]["choice"]["bpp"] == pytest.approx(want)
    assert fl["bd_rate_vs"]["avif"] == pytest.approx(-40.0, abs=0.5)  # 0.75 of the model vs 1.25 of it


def test_a_floor_below_a_codecs_lowest_quality_costs_its_smallest_file_reaching_it():
    """Graphics: a codec's lowest quality is already above the floor; that file reaches it, so it counts."""
    rate, psnr = [0.1, 0.2, 0.4], [41.0, 44.0, 47.0]
    assert bdrate.rate_reaching(rate, psnr, 35.0) == pytest.approx(0.1)  # the smallest file, 41 dB >= 35 dB
    assert bdrate.rate_reaching(rate, psnr, 48.0) is None  # out of reach
    assert bdrate.rate_reaching(rate, psnr, 44.0) == pytest.approx(0.2)
    assert 0.1 < bdrate.rate_reaching(rate, psnr, 42.5) < 0.2  # inside: interpolated
    pts = lambda r, p: [{"bpp": b, "psnr": q} for b, q in zip(r, p)]  # noqa: E731
    result = {"per_image": [{"points": pts([0.3, 0.6, 1.2], [30.0, 35.0, 40.0]), "codecs": {"avif": pts(rate, psnr)}}]}
    fl = evaluate.floor_curves(result, ["msinn", "avif"], floors=[32.0, 38.0])
    assert fl["curves"]["choice"]["bpp"] == pytest.approx([0.1, 0.1])  # AVIF's 41 dB file beats the model at both
    assert fl["curves"]["avif"]["psnr"] == [32.0, 38.0]


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (176, 168, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert metrics.psnr_uint8(a, b) == pytest.approx(10 * math.log10(255**2 / mse))
    assert metrics.psnr_uint8(a, a) == math.inf
    s = metrics.ms_ssim_uint8(a, b)
    assert s is not None and 0.5 < s < 1.0
    assert metrics.ms_ssim_uint8(a, a) == pytest.approx(1.0, abs=1e-5)
    assert metrics.ms_ssim_uint8(a[:160], b[:160]) is None  # too small for five scales


# ---------------------------------------------------------------------------------------------- end to end
def _crops(d: Path, boxes: dict[str, tuple[int, int, int, int]]) -> Path:
    """A folder of crops of kodim23 (skips when the dataset is absent)."""
    if not KODIM23.is_file():
        pytest.skip(f"{KODIM23} not available")
    d.mkdir()
    img = Image.open(KODIM23).convert("RGB")
    for name, box in boxes.items():
        img.crop(box).save(d / name)
    return d


@pytest.fixture()
def kodak_crops(tmp_path: Path) -> Path:
    # a.png 96x80: padded to 128x128 for coding; b.png 128x128
    return _crops(tmp_path / "imgs", {"a.png": (300, 200, 396, 280), "b.png": (100, 100, 228, 228)})


@pytest.fixture()
def small_dir(tmp_path: Path) -> Path:
    """Two 64x64-or-smaller crops: one 64x64 latent grid each, the cheapest the model codes."""
    return _crops(tmp_path / "small", {"a.png": (300, 200, 364, 248), "b.png": (100, 100, 164, 164)})


@pytest.fixture()
def checkpoint(tiny_float_checkpoint) -> str:
    return tiny_float_checkpoint


def test_code_image_pads_and_crops(tiny_model):
    img = np.random.default_rng(2).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    nbytes, rec, enc_s, dec_s = evaluate.code_image(tiny_model, img, 3)
    assert rec.shape == img.shape and rec.dtype == np.uint8
    assert nbytes > 0 and enc_s >= 0 and dec_s >= 0


def test_eval_end_to_end(kodak_crops: Path, checkpoint: str, tmp_path: Path, capsys):
    out_json, out_png = tmp_path / "out.json", tmp_path / "out.png"
    argv = [str(kodak_crops), "--model", checkpoint, "--qps", "0,3", "--codecs", "jpeg,webp", "--choice", "msinn,jpeg"]
    rc = eval_cli.main([*argv, "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    doc = json.loads(out_json.read_text())
    assert set(doc) == {"model", "points", "per_image", "per_image_sha256", "codecs", "bd_rate", "choice"}
    assert doc["choice"]["codecs"] == ["msinn", "jpeg"] and "choice" in doc["choice"]["curves"]
    assert doc["model"] == "tiny-float.pt"
    assert [p["qp"] for p in doc["points"]] == [0, 3]
    for p in doc["points"]:
        assert set(p) == {"qp", "bpp", "psnr", "ms_ssim", "encode_s", "decode_s"}
        assert math.isfinite(p["psnr"]) and p["bpp"] > 0
        assert p["ms_ssim"] is None  # both crops are below MS-SSIM's minimum size
    assert doc["points"][1]["bpp"] > doc["points"][0]["bpp"]
    assert len(doc["per_image"]) == 2
    sizes = {Path(im["image"]).name: (im["width"], im["height"]) for im in doc["per_image"]}
    assert sizes == {"a.png": (96, 80), "b.png": (128, 128)}
    for im in doc["per_image"]:
        bpps = [p["bpp"] for p in im["points"]]
        assert bpps[1] > bpps[0]
        # bpp is over the original (not the padded) pixel count.
        assert bpps[0] == pytest.approx(im["points"][0]["bytes"] * 8 / (im["width"] * im["height"]))
    mean_bpp = np.mean([im["points"][0]["bpp"] for im in doc["per_image"]])
    assert doc["points"][0]["bpp"] == pytest.approx(mean_bpp)
    assert set(doc["codecs"]) == {"jpeg", "webp"}
    for name, pts in doc["codecs"].items():
        assert [p["quality"] for p in pts] == list(classical.CODEC_QUALITIES[name])
        assert all(set(p) == {"quality", "bpp", "psnr", "ms_ssim", "encode_s"} and math.isfinite(p["psnr"])
                   for p in pts)
        for im in doc["per_image"]:  # each image's own points, for per-image analyses
            mine = im["codecs"][name]
            assert [p["quality"] for p in mine] == [p["quality"] for p in pts]
            assert all(p["bpp"] == pytest.approx(p["bytes"] * 8 / (im["width"] * im["height"])) for p in mine)
        assert pts[-1]["bpp"] > pts[0]["bpp"]
    assert set(doc["bd_rate"]) == {"jpeg", "webp"}
    assert all(v is None or math.isfinite(v) for v in doc["bd_rate"].values())
    assert out_png.is_file() and out_png.stat().st_size > 1000
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stdout = capsys.readouterr().out
    assert "BD-rate" in stdout and "jpeg" in stdout and "webp" in stdout


def test_eval_skips_corrupt_image(small_dir: Path, checkpoint: str, tmp_path: Path, capsys):
    (small_dir / "0_corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    out_json = tmp_path / "out.json"
    rc = eval_cli.main([str(small_dir), "--model", checkpoint, "--qps", "1", "--json", str(out_json)])
    assert rc == 0
    captured = capsys.readouterr()
    assert "0_corrupt.png" in captured.err and "skipped" in captured.err
    assert "0_corrupt.png" in captured.out  # the summary lists it too
    doc = json.loads(out_json.read_text())
    assert sorted(Path(im["image"]).name for im in doc["per_image"]) == ["a.png", "b.png"]
    assert doc["codecs"] == {} and doc["bd_rate"] == {}


def test_limit_counts_readable_images_and_coder_is_swappable(small_dir: Path, tiny_model, monkeypatch):
    (small_dir / "0_corrupt.png").write_bytes(b"garbage")
    uris = image_files.list_images(str(small_dir))
    original = evaluate.code_image
    header = 100

    def with_header(model, img, qp):
        nbytes, rec, enc_s, dec_s = original(model, img, qp)
        return nbytes + header, rec, enc_s, dec_s

    def quiet(msg: str) -> None:
        pass

    a = evaluate.evaluate(tiny_model, uris, [2], limit=1, progress=quiet)
    monkeypatch.setattr(evaluate, "code_image", with_header)
    b = evaluate.evaluate(tiny_model, uris, [2], limit=1, progress=quiet)
    assert [Path(im["image"]).name for im in a["per_image"]] == ["a.png"]  # corrupt file did not use up the limit
    assert [Path(s["image"]).name for s in a["skipped"]] == ["0_corrupt.png"]
    assert b["per_image"][0]["points"][0]["bytes"] == a["per_image"][0]["points"][0]["bytes"] + header
    assert b["points"][0]["bpp"] == pytest.approx(a["points"][0]["bpp"] + header * 8 / (64 * 48))


def test_eval_usage_errors(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        eval_cli.main([str(tmp_path), "--codecs", "jpeg,bmpx"])
    assert exc.value.code == 2
    assert "bmpx" in capsys.readouterr().err
    assert eval_cli.main([str(tmp_path / "missing"), "--model", str(tmp_path / "none.pt")]) == 1


def test_resume_keeps_earlier_images_and_codes_only_the_rest(small_dir: Path, checkpoint: str, tmp_path: Path):
    """An interrupted run (here: stopped after one image) resumes from its --json file, not coding that image again."""
    out_json = tmp_path / "out.json"
    argv = [str(small_dir), "--model", checkpoint, "--qps", "1,3", "--codecs", "jpeg", "--json", str(out_json)]
    assert eval_cli.main([*argv, "--limit", "1"]) == 0
    first = json.loads(out_json.read_text())["per_image"]
    assert len(first) == 1
    assert eval_cli.main([*argv, "--resume"]) == 0
    doc = json.loads(out_json.read_text())
    assert sorted(Path(im["image"]).name for im in doc["per_image"]) == ["a.png", "b.png"]
    assert doc["per_image"][0] == first[0]  # timings included: taken from the file, not measured again
    assert [p["qp"] for p in doc["points"]] == [1, 3] and set(doc["bd_rate"]) == {"jpeg"}
    # a file from a sweep of other qps is refused, not mixed in
    other = [str(small_dir), "--model", checkpoint, "--qps", "2", "--json", str(out_json), "--resume"]
    assert eval_cli.main(other) == 1
    assert json.loads(out_json.read_text())["per_image"] == doc["per_image"]
    assert not (tmp_path / "out.json.part").exists()


def _load_script(name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_weights_choice_keeps_each_images_cheaper_weights_and_refuses_mismatched_files(tmp_path, capsys):
    """scripts/weights_choice.py: weights B codes image a in 30% fewer bits and image b in 30% more; the choice
    takes B's points for a and A's for b, so it is cheaper than A alone against the same AVIF points.
    On log-linear curves (which PCHIP reproduces exactly) the BD-rates are known in closed form."""
    mod = _load_script("weights_choice")
    qps = [0, 1, 2, 3, 4, 5]
    curve = lambda p: 0.01 * math.exp(0.15 * p)  # noqa: E731 -- bpp at PSNR p
    psnr = {q: 28.0 + 2 * q for q in qps}
    extra = {"ms_ssim": 0.9, "encode_s": 1.0, "decode_s": 1.0}

    def doc(scale: dict[str, float], with_avif: bool, dpsnr: float = 0.0) -> dict:
        per_image = []
        for name, f in scale.items():
            points = [{"qp": q, "bpp": curve(psnr[q]) * f, "psnr": psnr[q] + dpsnr, **extra} for q in qps]
            avif = [{"quality": q, "bpp": 0.9 * curve(26.0 + 2 * i), "psnr": 26.0 + 2 * i, "ms_ssim": 0.9,
                     "encode_s": 0.1} for i, q in enumerate(classical.CODEC_QUALITIES["avif"])]
            codecs = {"avif": avif} if with_avif else {}
            per_image.append({"image": f"/data/{name}", "points": points, "codecs": codecs})
        mean = [{"qp": q, "bpp": float(np.mean([im["points"][q]["bpp"] for im in per_image])),
                 "psnr": psnr[q] + dpsnr} for q in qps]
        return {"model": "m", "points": mean, "per_image": per_image, "codecs": {}}

    a, b = doc({"a.png": 1.0, "b.png": 1.0}, True), doc({"a.png": 0.7, "b.png": 1.3}, False)
    lambdas = [0.001 * 2**k for k in range(6)]
    chosen, wins = mod.choose([a, b], lambdas)
    assert wins == [6, 6]
    assert [p["bpp"] for p in chosen[0]["points"]] == pytest.approx([0.7 * curve(psnr[q]) for q in qps])
    assert [p["bpp"] for p in chosen[1]["points"]] == pytest.approx([curve(psnr[q]) for q in qps])
    for i, d in enumerate((a, b)):
        (tmp_path / f"{i}.json").write_text(json.dumps(d))
    argv = [str(tmp_path / "0.json"), str(tmp_path / "1.json"), "--lambdas", *map(str, lambdas)]
    assert mod.main(argv) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("avif "))
    alone, choice = (float(v.rstrip("%")) for v in row.split()[1:3])
    assert alone == pytest.approx(100 / 0.9 - 100, abs=0.01)  # A alone needs 1/0.9 of AVIF's rate
    assert choice == pytest.approx(85 / 0.9 - 100, abs=0.01)  # the choice: the mean of 0.7 and 1.0 of A's
    assert mod.main([str(tmp_path / "1.json"), str(tmp_path / "0.json"), "--lambdas", *map(str, lambdas)]) == 1
    assert "no classical codecs" in capsys.readouterr().err
    (tmp_path / "2.json").write_text(json.dumps(doc({"a.png": 1.0}, False)))
    assert mod.main([str(tmp_path / "0.json"), str(tmp_path / "2.json"), "--lambdas", "0.1"]) == 1
    assert "missing" in capsys.readouterr().err
    assert mod.main([str(tmp_path / "0.json"), str(tmp_path / "1.json"), "--lambdas", "0.1", "0.2"]) == 1
    assert "no lambda" in capsys.readouterr().err
    twice = doc({"a.png": 1.0}, True)
    twice["per_image"].append({**twice["per_image"][0], "image": "/other/a.png"})
    (tmp_path / "3.json").write_text(json.dumps(twice))
    assert mod.main([str(tmp_path / "3.json"), str(tmp_path / "1.json"), "--lambdas", "0.1"]) == 1
    assert "two images a.png" in capsys.readouterr().err
    (tmp_path / "4.json").write_text(json.dumps({"model": "m"}))
    assert mod.main([str(tmp_path / "0.json"), str(tmp_path / "4.json"), "--lambdas", "0.1"]) == 1
    assert "no per-image results" in capsys.readouterr().err
    # compare_rd --codecs-from: B's run alone (coded without codecs) against A's run's AVIF points
    cmp = _load_script("compare_rd")
    j = [str(tmp_path / f"{i}.json") for i in range(3)]
    assert cmp.main([j[1], j[0], "--codecs-from", j[0]]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("m against avif:"))
    assert float(line.split()[-1].rstrip("%")) == pytest.approx(100 / 0.9 - 100, abs=0.01)  # B's mean is A's curve
    assert cmp.main([j[0], j[2], "--codecs-from", j[2]]) == 1
    assert "images without codec results" in capsys.readouterr().err


def test_weights_choice_weighs_bits_against_distortion_with_each_qps_lambda(tmp_path):
    """Weights B save 20% of the bits for 1 dB less: worth it where lambda is small (low qps), not where it is
    large; the lambdas come from the checkpoint's meta, and a checkpoint without them is refused."""
    import torch

    mod = _load_script("weights_choice")
    qps = list(range(6))
    psnr = {q: 28.0 + 2 * q for q in qps}
    bpp = {q: 0.01 * math.exp(0.15 * psnr[q]) for q in qps}
    mse = {q: 10 ** (-psnr[q] / 10) for q in qps}
    # B wins at qp q exactly when lambda < 0.2 bpp / (255^2 (10^0.1 - 1) mse): half that below qp 3, twice above
    even = {q: 0.2 * bpp[q] / (255**2 * (10**0.1 - 1) * mse[q]) for q in qps}
    lambdas = [even[q] * (0.5 if q < 3 else 2.0) for q in qps]
    torch.save({"meta": {"lambdas": lambdas}}, tmp_path / "w.pt")
    assert mod.lambdas_of(str(tmp_path / "w.pt")) == pytest.approx(lambdas)
    torch.save({"meta": {}}, tmp_path / "none.pt")
    with pytest.raises(ValueError, match="no training lambdas"):
        mod.lambdas_of(str(tmp_path / "none.pt"))

    def doc(f: float, dpsnr: float) -> dict:
        pts = [{"qp": q, "bpp": bpp[q] * f, "psnr": psnr[q] + dpsnr} for q in qps]
        return {"per_image": [{"image": "/x/c.png", "points": pts}]}

    chosen, wins = mod.choose([doc(1.0, 0.0), doc(0.8, -1.0)], mod.lambdas_of(str(tmp_path / "w.pt")))
    assert wins == [3, 3]
    assert [p["psnr"] for p in chosen[0]["points"]] == pytest.approx([psnr[q] - (1 if q < 3 else 0) for q in qps])
    backwards, _ = mod.choose([doc(1.0, 0.0), doc(0.8, -1.0)], lambdas[::-1])  # lambdas the wrong way round
    assert [p["psnr"] for p in backwards[0]["points"]] == pytest.approx([psnr[q] - (0 if q < 3 else 1) for q in qps])
