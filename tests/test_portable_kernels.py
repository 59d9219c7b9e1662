"""The kernel check catches kernels that are not exact, and the exact path ignores the process's settings.

TF32 keeps 10 mantissa bits and bf16 7: a kernel that rounds its operands to
them is emulated here by wrapping the real one. The check must fail on it and
decoding must still give the golden pixels (the float64 path takes over).
Precision settings a user or a container may have made are tried in a fresh
process, and a float computation runs beside an exact decode in two threads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import BUNDLED

from msinn.decoding import decode_image
from msinn.images import pixels_sha256
from msinn.portable import kernels

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
INDEX = json.loads((GOLDEN / "golden.json").read_text())
CASE = "k03-qp4"
SMALL = "gray-qp0"


def _round_mantissa(t: torch.Tensor, bits: int) -> torch.Tensor:
    """float32 rounded to ``bits`` explicit mantissa bits, to nearest even (TF32: 10, bf16: 7)."""
    drop = 23 - bits
    i = t.contiguous().view(torch.int32)
    i = (i + ((1 << (drop - 1)) - 1) + ((i >> drop) & 1)) & ~((1 << drop) - 1)
    return i.view(torch.float32)


def _emulated(bits: int):
    real = kernels.fast_conv2d

    def kernel(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
        return real(_round_mantissa(x, bits), _round_mantissa(w, bits), b, padding)

    return kernel


def test_the_emulation_rounds_like_tf32_and_bf16():
    x = torch.tensor([2047.0, 2049.0, 8191.0, 255.0, 257.0, -8191.0])
    assert _round_mantissa(x, 10).tolist() == [2047.0, 2048.0, 8192.0, 255.0, 257.0, -8192.0]
    assert _round_mantissa(x, 7).tolist() == [2048.0, 2048.0, 8192.0, 255.0, 256.0, -8192.0]


def test_the_check_passes_on_this_cpu():
    assert kernels.kernels_are_exact("cpu")


@pytest.mark.parametrize("bits, name", [(10, "TF32"), (7, "bf16")])
def test_a_rounding_kernel_fails_the_check_and_the_float64_path_decodes_the_golden_pixels(model, monkeypatch,
                                                                                         bits, name):
    data = (GOLDEN / INDEX[SMALL]["file"]).read_bytes()
    monkeypatch.setattr(kernels, "fast_conv2d", _emulated(bits))
    assert not kernels.kernels_are_exact("cpu"), f"{name} operands passed the kernel check"
    assert pixels_sha256(decode_image(data, model).pixels) == INDEX[SMALL]["pixels_sha256"]


@pytest.mark.parametrize("bits", [10, 7])
def test_trusting_a_rounding_kernel_changes_a_real_layer_at_its_bound(model, monkeypatch, bits):
    """What the check prevents: the model's widest layer, inputs at its bound, on a kernel that rounds."""
    name, layer = max(((n, v) for n, v in model.layers.items() if hasattr(v, "pass_bound")),
                      key=lambda item: item[1].pass_bound())
    g = torch.Generator().manual_seed(11)
    x = torch.randint(-layer.in_bound, layer.in_bound + 1, (1, layer.w.shape[1], 8, 8), generator=g).float()
    x[..., ::2, ::3] = float(layer.in_bound)
    with kernels.reference_path():
        exact = layer(x.clone())
    monkeypatch.setattr(kernels, "fast_conv2d", _emulated(bits))
    monkeypatch.setattr(kernels, "kernels_are_exact", lambda device: True)
    assert not torch.equal(layer(x.clone()), exact), f"{name}: the rounding kernel went unnoticed"


SETTINGS_SCRIPT = r"""
import json, sys, torch
import msinn
from msinn.decoding import decode_image
from msinn.images import pixels_sha256
from msinn.portable import kernels

m = msinn.load(sys.argv[1])
data = open(sys.argv[2], "rb").read()
b = torch.backends
steps = [
    ("legacy matmul allow_tf32", lambda: setattr(b.cuda.matmul, "allow_tf32", True)),
    ("legacy cudnn allow_tf32", lambda: setattr(b.cudnn, "allow_tf32", True)),
    ("set_float32_matmul_precision high", lambda: torch.set_float32_matmul_precision("high")),
    ("set_float32_matmul_precision medium", lambda: torch.set_float32_matmul_precision("medium")),
]
if hasattr(b.cuda.matmul, "fp32_precision"):
    steps += [
        ("mkldnn conv bf16", lambda: setattr(b.mkldnn.conv, "fp32_precision", "bf16")),
        ("mkldnn matmul bf16", lambda: setattr(b.mkldnn.matmul, "fp32_precision", "bf16")),
        ("cuda matmul tf32", lambda: setattr(b.cuda.matmul, "fp32_precision", "tf32")),
        ("cudnn conv tf32", lambda: setattr(b.cudnn.conv, "fp32_precision", "tf32")),
    ]
out = {"initial": pixels_sha256(decode_image(data, m).pixels)}
for name, apply in steps:
    apply()
    before = kernels.precision_settings()
    out[name] = pixels_sha256(decode_image(data, m).pixels)
    assert kernels.precision_settings() == before, name + ": the exact path changed the settings"
print("RESULT " + json.dumps(out))
"""


def test_every_precision_setting_decodes_the_same_pixels():
    """Legacy and new APIs one after the other, in a process started as NVIDIA's containers start one."""
    env = {"TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": "1", "ONEDNN_DEFAULT_FPMATH_MODE": "BF16"}
    proc = subprocess.run([sys.executable, "-c", SETTINGS_SCRIPT, BUNDLED, str(GOLDEN / INDEX[SMALL]["file"])],
                          capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1][len("RESULT "):])
    assert len(got) >= 5 and set(got.values()) == {INDEX[SMALL]["pixels_sha256"]}, got


def test_a_float_computation_beside_an_exact_decode_sees_its_own_settings(model):
    """Two threads at once: a float convolution and an exact decode; both results and the settings unchanged."""
    data = (GOLDEN / INDEX[CASE]["file"]).read_bytes()
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(1, 16, 48, 48, generator=g), torch.randn(16, 16, 3, 3, generator=g)
    expect = F.conv2d(x, w, padding=1)
    settings = kernels.precision_settings()
    seen, floats, stop = set(), [], threading.Event()

    def float_work() -> None:
        while not stop.is_set():
            seen.add((kernels.precision_settings(), torch.backends.cudnn.enabled, torch._C._get_nnpack_enabled()))
            floats.append(bool(torch.equal(F.conv2d(x, w, padding=1), expect)))

    t = threading.Thread(target=float_work)
    t.start()
    try:
        pixels = [pixels_sha256(decode_image(data, model).pixels) for _ in range(2)]
    finally:
        stop.set()
        t.join()
    assert set(pixels) == {INDEX[CASE]["pixels_sha256"]}
    assert floats and all(floats)
    assert seen == {(settings, torch.backends.cudnn.enabled, torch._C._get_nnpack_enabled())}
