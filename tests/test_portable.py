"""The portable profile: the same pixels on every thread count, process, kernel path and machine.

Golden files under tests/golden/ were written by scripts/make_golden.py in the
configurations golden.json records (torch versions, CPU architectures); every
run decodes them again. The exactness proof and the kernel check have their
own files: test_portable_proof.py, test_portable_kernels.py.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLED
from helpers import image_file

import msinn
from msinn.checkpoint import CheckpointError, load_portable, save_portable
from msinn.container import MAGIC, _uvarint, encode_header, pack, read_header, unpack
from msinn.decoding import NumericsMismatch, decode_image
from msinn.encoding import EncodeOptions, encode_image
from msinn.errors import BitstreamError
from msinn.images import pixels_sha256 as _digest
from msinn.portable import exact, kernels
from msinn.ratecontrol import Target

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
INDEX = json.loads((GOLDEN / "golden.json").read_text())


@pytest.fixture(scope="module")
def coded(model) -> dict[str, tuple[bytes, str]]:
    """Files encoded here with one thread: (bytes, digest of the encoder's reconstruction)."""
    from PIL import Image

    rng = np.random.default_rng(5)
    k15 = np.asarray(Image.open(REPO / "samples" / "kodim15.png").convert("RGB"))
    noise = rng.integers(0, 256, (64, 80, 3), np.uint8)
    images = {"a": k15[64:192, 128:320], "b": k15[300:364, 400:592], "noise": noise}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, img in images.items():
            for qp in (0, 3.5, 6.25, 10):
                res = encode_image(model, image_file(img), Target("qp", qp))
                out[f"{name}@{qp}"] = (res.data, _digest(res.reconstruction))
    finally:
        torch.set_num_threads(threads)
    return out


DECODE_SCRIPT = """
import json, sys, torch
torch.set_num_threads(int(sys.argv[1]))
import msinn
from msinn.decoding import decode_image
from msinn.images import pixels_sha256
m = msinn.load(sys.argv[2])
out = {path: pixels_sha256(decode_image(open(path, "rb").read(), m, path).pixels) for path in sys.argv[3:]}
print("RESULT " + json.dumps(out))
"""


def _decode_elsewhere(threads: int, paths: list[str]) -> dict[str, str]:
    proc = subprocess.run(
        [sys.executable, "-c", DECODE_SCRIPT, str(threads), BUNDLED, *paths],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def test_encode_on_one_thread_decode_on_two_and_three_in_other_processes(coded, tmp_path):
    paths = {}
    for name, (data, _) in coded.items():
        p = tmp_path / f"{name}.msinn"
        p.write_bytes(data)
        paths[str(p)] = name
    for threads in (2, 3):
        got = _decode_elsewhere(threads, list(paths))
        for path, digest in got.items():
            assert digest == coded[paths[path]][1], f"{paths[path]} differs with {threads} threads"


def test_decode_inside_a_ray_task_is_identical(coded, local_ray):
    ray = local_ray

    @ray.remote(num_cpus=1)
    def decode_all(name: str, blobs: dict[str, bytes]) -> dict[str, str]:
        import msinn as m
        from msinn.decoding import decode_image as dec
        from msinn.images import pixels_sha256

        model = m.load(name)
        return {k: pixels_sha256(dec(v, model, k).pixels) for k, v in blobs.items()}

    got = ray.get(decode_all.remote(BUNDLED, {k: v[0] for k, v in coded.items()}))
    assert got == {k: v[1] for k, v in coded.items()}


@pytest.fixture(scope="module")
def golden_models(model) -> dict[str, object]:
    """Each published portable model that wrote golden files, loaded once (the default fixture reused)."""
    return {BUNDLED: model}


@pytest.mark.parametrize("name", sorted(INDEX))
def test_golden_file_decodes_to_its_recorded_pixels(golden_models, name):
    entry = INDEX[name]
    data = (GOLDEN / entry["file"]).read_bytes()
    header, _ = read_header(data)
    assert header.profile == "portable-1" and data[len(MAGIC)] == 2
    assert header.model_name == entry["model"]
    if entry["model"] not in golden_models:
        golden_models[entry["model"]] = msinn.load(entry["model"])
    decoded = decode_image(data, golden_models[entry["model"]], name)
    assert list(decoded.pixels.shape) == entry["shape"]
    assert _digest(decoded.pixels) == entry["pixels_sha256"], f"written on {entry['written_on']}"


def test_fast_kernels_equal_the_float64_reference_path(model):
    """The float32 kernels (oneDNN, GEMM) and the float64 im2col path give the same integers."""
    data = (GOLDEN / INDEX["k03-qp7.375"]["file"]).read_bytes()
    assert kernels.kernels_are_exact(torch.device("cpu"))
    fast = decode_image(data, model).pixels
    with kernels.reference_path():  # as on a device whose kernels failed the check
        slow = decode_image(data, model).pixels
    assert np.array_equal(fast, slow)
    assert _digest(slow) == INDEX["k03-qp7.375"]["pixels_sha256"]


def _forge_payload(data: bytes, payload: bytes) -> bytes:
    header, _ = read_header(data)
    header.payload_crc32 = zlib.crc32(payload)
    return pack(header, payload)


def test_seeded_fuzz_of_corrupted_portable_files(model):
    """400 corruptions: every one is refused, or (an informational header field forged) decodes unchanged."""
    data = (GOLDEN / INDEX["k03-qp4"]["file"]).read_bytes()
    ref = decode_image(data, model).pixels
    header, start = read_header(data)
    payload = data[start:]
    rng = random.Random(20261125)
    refused = same = 0
    for i in range(400):
        kind = ("flip", "forged-payload", "truncate", "extend", "forged-header")[i % 5]
        if kind == "flip":  # any byte, checksums left as they are
            b = bytearray(data)
            b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
            blob = bytes(b)
        elif kind == "forged-payload":  # stream damage behind a recomputed CRC
            p = bytearray(payload)
            p[rng.randrange(len(p))] ^= rng.randrange(1, 256)
            blob = _forge_payload(data, bytes(p))
        elif kind == "truncate":
            blob = data[: rng.randrange(len(data))]
        elif kind == "extend":
            blob = data + bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        else:  # header damage behind a recomputed header CRC
            hb = bytearray(encode_header(header))
            hb[rng.randrange(len(hb))] ^= rng.randrange(1, 256)
            blob = MAGIC + bytes((2,)) + _uvarint(len(hb)) + bytes(hb) + struct.pack(">I", zlib.crc32(bytes(hb)))
            blob += payload
        try:
            out = decode_image(blob, model, f"case {i}").pixels
        except BitstreamError:
            refused += 1
            continue
        assert kind == "forged-header", f"case {i} ({kind}) decoded"
        assert np.array_equal(out, ref), f"case {i}: a forged header decoded to other pixels"
        same += 1
    assert refused >= 360 and refused + same == 400


def test_a_float_model_refuses_a_portable_file_by_profile(tiny_model):
    data = (GOLDEN / INDEX["k03-qp4"]["file"]).read_bytes()
    with pytest.raises(BitstreamError, match="portable-1 file.*--model msinn-small-2026-11d-p1"):
        decode_image(data, tiny_model, "x")


def test_the_rate_parameter_must_lie_on_the_portable_grid(model):
    data = (GOLDEN / INDEX["k03-qp4"]["file"]).read_bytes()
    header, payload = unpack(data)
    header.qp = 4 + 1e-9  # between two codable values
    with pytest.raises(BitstreamError, match="2\\*\\*-16"):
        decode_image(pack(header, payload), model, "x")
    assert model.snap_qp(3.1) == round(3.1 * 65536) / 65536


# ---------------------------------------------------------------------- the exactness proof
@pytest.fixture(scope="module")
def state(model) -> dict:
    return model.state()


def _tampered(state: dict, **changes) -> dict:
    obj = dict(state)
    obj["tensors"] = dict(state["tensors"])
    obj["spec"] = json.loads(json.dumps(state["spec"]))
    for fn in changes.values():
        fn(obj)
    return obj


def test_a_model_whose_weights_break_the_bound_is_refused(state):
    def grow(obj):
        name = next(n for n, s in obj["spec"]["layers"].items() if s["kind"] == "conv" and not s.get("split"))
        obj["tensors"][f"{name}.w"] = obj["tensors"][f"{name}.w"].to(torch.int32) * 64

    with pytest.raises(CheckpointError, match="exactness proof.*exceeds 2\\*\\*24"):
        load_portable("tampered", _tampered(state, w=grow))


def test_a_model_whose_wiring_breaks_the_bound_is_refused(state):
    def widen(obj):
        obj["spec"]["layers"]["cc1.conv0"]["out_bound"] *= 4

    with pytest.raises(CheckpointError, match="exactness proof|exceeds"):
        load_portable("tampered", _tampered(state, s=widen))


def test_malformed_portable_files_are_checkpoint_errors(state):
    with pytest.raises(CheckpointError, match="malformed"):
        load_portable("bad", _tampered(state, s=lambda o: o["spec"]["layers"].pop("ep0.mean")))
    with pytest.raises(CheckpointError, match="version"):
        load_portable("bad", {**state, "version": 99})


def test_every_bound_of_the_bundled_model_is_proved(model):
    model.check_bounds()  # raises on any violation
    worst = max(layer.worst_case() for layer in model.layers.values() if isinstance(layer, exact.QConv))
    assert worst <= exact.F32_EXACT
    two_pass = [n for n, layer in model.layers.items() if isinstance(layer, exact.QConv) and layer.split]
    assert two_pass and all(model.layers[n].fast_split() for n in two_pass if not n.startswith("lrp1.conv0"))


def test_the_float_twin_carries_the_dequantised_integer_weights_and_takes_gradients(model):
    """What encoder-side work (analysis, rate estimates, refinement) runs on; a new one is the caller's."""
    twin = model.float_twin()
    w, b = model.layers["g0.0.conv1"].dequantized()
    for m in (twin, model.float_model):
        assert torch.equal(m.state_dict()["g_a0.0.block.0.conv1.weight"], w)
        assert torch.equal(m.state_dict()["g_a0.0.block.0.conv1.bias"], b)
    assert twin is not model.float_model
    x = torch.rand(1, 3, 64, 64, requires_grad=True)
    twin.analyze(x)[0].square().sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


# ---------------------------------------------------------------------- conversion
def _crops(n: int = 3) -> list[torch.Tensor]:
    from PIL import Image

    from msinn.tensors import to_padded_tensor

    img = np.asarray(Image.open(REPO / "samples" / "kodim23.png").convert("RGB"))
    return [to_padded_tensor(img[64 * i : 64 * i + 128, 96 * i : 96 * i + 128], torch.device("cpu")) for i in range(n)]


def test_conversion_of_the_released_configuration_is_exact_and_saves(recipe_models, tmp_path):
    """The published checkpoints' layout (post-net included) converts, round-trips, reloads with its hash."""
    from msinn.portable.convert import convert

    pm = convert(recipe_models[8], _crops(2), meta={"note": "test"})
    x = _crops(1)[0][..., :64, :128]
    with torch.inference_mode():
        enc = pm.encode_latents(pm.analyze(x), 2.5, keep_state=True)
        recon = pm.to_uint8(enc.finish())
        out = pm.to_uint8(pm.decode_latents(enc.data, enc.latent_shape, 2.5))
    assert np.array_equal(recon, out)
    path = tmp_path / "a8-portable.pt"
    save_portable(path, pm)
    again = msinn.load(str(path))
    assert again.weights_sha256 == pm.weights_sha256 and again.profile == "portable-1"
    with torch.inference_mode():
        assert np.array_equal(again.to_uint8(again.decode_latents(enc.data, enc.latent_shape, 2.5)), out)
    # the post-net's squeeze-excite reads the mean of main-path codes: its declared input bound must cover it
    state = pm.state()
    state["spec"] = json.loads(json.dumps(state["spec"]))
    state["spec"]["layers"]["post.unet.conv1.se.fc0"]["in_bound"] = 15
    with pytest.raises(CheckpointError, match="exactness proof.*se.fc0.*mean"):
        load_portable("tampered", state)


def test_convert_cli_then_encode_and_decode(tiny_float_checkpoint, tmp_path, capsys):
    from PIL import Image

    from msinn.cli import main

    cal = tmp_path / "cal"
    cal.mkdir()
    for i, c in enumerate(_crops(2)):
        Image.fromarray((c[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(cal / f"{i}.png")
    out = tmp_path / "tiny-portable.pt"
    from msinn.checkpoint import load_object, save_atomic

    source = tmp_path / "tiny-float-lambdas.pt"  # a float file that records its training lambdas
    obj = dict(load_object(tiny_float_checkpoint)[1])
    save_atomic({**obj, "meta": {**obj.get("meta", {}), "lambdas": [0.002, 0.008, 0.03, 0.1]}}, source)
    assert main(["convert", str(source), str(out), "--calibration", str(cal), "--crop", "64"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    converted = msinn.load(str(out))
    assert report["sha256"] == converted.weights_sha256
    assert converted.checkpoint_meta["lambdas"] == [0.002, 0.008, 0.03, 0.1]  # carried over: weights_set reads it
    src = tmp_path / "in.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (70, 90, 3), np.uint8)).save(src)
    assert main(["encode", str(src), str(tmp_path / "x.msinn"), "--qp", "1.5", "--model", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == "tiny-portable.pt"
    assert main(["decode", str(tmp_path / "x.msinn"), str(tmp_path / "o.png"), "--model", str(out)]) == 0
    assert read_header((tmp_path / "x.msinn").read_bytes())[0].profile == "portable-1"
    assert main(["convert", str(out), str(tmp_path / "again.pt"), "--calibration", str(cal)]) == 2


# ---------------------------------------------------------------------- float32 files
def test_float_file_records_its_numerics_and_explains_a_mismatch(tiny_model):
    img = np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)
    res = encode_image(tiny_model, image_file(img), Target("qp", 1))
    header, payload = unpack(res.data)
    assert header.profile == "float32" and "threads=" in header.numerics and "torch=" in header.numerics
    assert np.array_equal(decode_image(res.data, tiny_model).pixels, res.reconstruction)
    # what another machine's float32 arithmetic looks like from here: the decoded symbols disagree
    header.tiles[0].level_digests[2] = "00000000"
    header.numerics = "device=cpu;arch=riscv64;threads=3;torch=2.0.0"
    with pytest.raises(NumericsMismatch, match="written by device=cpu.*threads tried.*re-encode.*level 2"):
        decode_image(pack(header, payload), tiny_model, "drifted")


def test_version_1_files_still_decode_as_float32(tiny_model):
    img = np.random.default_rng(3).integers(0, 256, (64, 64, 3), np.uint8)
    res = encode_image(tiny_model, image_file(img), Target("qp", 2))
    header, start = read_header(res.data)
    header.numerics = ""
    body = encode_header(header)
    body = body[: body.rindex(bytes((20, len(b"float32"))))]  # drop the profile field, as version 1 wrote
    v1 = MAGIC + bytes((1,)) + _uvarint(len(body)) + body + struct.pack(">I", zlib.crc32(body)) + res.data[start:]
    h1, _ = read_header(v1)
    assert h1.profile == "float32" and h1.numerics == ""
    assert np.array_equal(decode_image(v1, tiny_model).pixels, res.reconstruction)


def test_tiles_and_alpha_take_the_portable_path(model):
    """Tiles and alpha go through the portable path like whole images."""
    rng = np.random.default_rng(4)
    rgba = np.dstack([rng.integers(0, 256, (130, 200, 3), np.uint8), rng.integers(0, 256, (130, 200), np.uint8)])
    res = encode_image(model, image_file(rgba, mode="RGBA"), Target("bpp", 1.0),
                       EncodeOptions(tile_pixels=4096, tile_size=128))
    assert len(res.header.tiles) == 4 and res.header.mode == "RGBA" and res.header.profile == "portable-1"
    assert np.array_equal(decode_image(res.data, model).pixels, res.reconstruction)


def test_a_portable_files_config_must_match_its_tensors(state):
    with pytest.raises(CheckpointError, match="disagrees with the tensors"):
        load_portable("huge", {**state, "config": {**state["config"], "N": 1_000_000}})
