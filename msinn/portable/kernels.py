"""Stock torch kernels that compute exact sums of products, and the check that proves it on each device.

An IEEE float32 sum of integer products is exact, in whatever order a kernel
adds (blocked, vectorised, split over threads, fused multiply-add), when every
partial sum is an integer of magnitude at most 2**24; float64 likewise up to
2**53. What breaks this is a kernel that does not compute a plain float32 sum
of products: operands rounded to TF32 or bf16 ("fast math", allowed by
``torch.set_float32_matmul_precision``, the ``fp32_precision`` settings,
``TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1`` or ``ONEDNN_DEFAULT_FPMATH_MODE=BF16``),
or Winograd/FFT transforms (cuDNN may choose them).

This module never changes the process's settings (another thread may be
running a float model under them). Instead:

- the fast path avoids the kernels that transform: on CPU ``F.conv2d`` at
  batch size 1 (oneDNN's direct convolution, or im2col + GEMM; NNPACK is only
  chosen for batches of 16 or more), elsewhere im2col + GEMM (no cuDNN), and
  1x1 layers as one GEMM;
- :func:`kernels_are_exact` runs those kernels, under the settings in force,
  on probes whose operands have more significant bits than TF32 (11) or bf16
  (8) keep, at input bounds from 2**12 to 2**23 and sums as close to 2**24 as
  one more weight step allows, and compares with an exact integer result. The
  verdict is cached per device, kernel and settings; when the settings change,
  the check runs again;
- where the check fails, :func:`conv2d_exact` uses the float64 im2col path,
  which no precision setting touches and which is exact by construction.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from .formats import F32_EXACT, F64_EXACT

# settings objects of torch >= 2.9 (read only: reading the legacy flags after a new-API write raises)
_PRECISION_OBJECTS = ("", "mkldnn", "mkldnn.conv", "mkldnn.matmul", "cuda.matmul", "cudnn", "cudnn.conv")
_PRECISION_ENV = ("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE", "ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")
_LOCAL = threading.local()
_CHECK_LOCK = threading.Lock()
_VERDICTS: dict[tuple, bool] = {}


def precision_settings() -> tuple:
    """What the process's settings say float32 kernels may do, read without changing or mixing APIs."""
    found: list = []
    for path in _PRECISION_OBJECTS:
        obj = torch.backends
        for part in path.split(".") if path else ():
            obj = getattr(obj, part, None)
        found.append(getattr(obj, "fp32_precision", None))
    if all(v is None for v in found):  # torch before the fp32_precision API: only the legacy flags exist
        found += [torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32,
                  torch.backends.cudnn.allow_tf32]
    found.append(torch.backends.mkldnn.enabled)
    found += [os.environ.get(k) for k in _PRECISION_ENV]
    return tuple(found)


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Run this thread's exact convolutions on the float64 path, whatever the check says (for comparisons)."""
    before = getattr(_LOCAL, "reference", False)
    _LOCAL.reference = True
    try:
        yield
    finally:
        _LOCAL.reference = before


# ---------------------------------------------------------------------- kernels
def conv2d_f64(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """Convolution as im2col + float64 GEMM: exact whenever the float32 bound holds (and up to 2**53)."""
    n, _, h, wd = x.shape
    cout, _, kh, kw = w.shape
    x = x.double()
    cols = F.unfold(x, (kh, kw), padding=padding) if kh > 1 or kw > 1 else x.reshape(n, -1, h * wd)
    out = torch.matmul(w.double().reshape(cout, -1), cols) + b.double().view(1, cout, 1)
    return out.view(n, cout, h, wd)


def fast_conv2d(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """The float32 kernel the exact layers use: a GEMM for 1x1 (several times faster for few channels),
    otherwise oneDNN's direct convolution on CPU and im2col + GEMM elsewhere (no cuDNN: it may pick
    Winograd). Looked up at call time, so tests can wrap it to emulate inexact hardware."""
    n, c, h, wd = x.shape
    if w.shape[-1] == 1 and w.shape[-2] == 1 and n == 1:
        y = torch.addmm(b.view(-1, 1), w.view(w.shape[0], c), x.reshape(c, h * wd))
        return y.view(1, -1, h, wd)
    if x.device.type == "cpu":
        return F.conv2d(x, w, b, padding=padding)
    cols = F.unfold(x, w.shape[-2:], padding=padding)
    y = torch.matmul(w.reshape(w.shape[0], -1), cols) + b.view(1, -1, 1)
    return y.view(n, -1, h, wd)


def conv2d_exact(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """float32 convolution of integer codes within the proved bound; the same integers on every device."""
    if getattr(_LOCAL, "reference", False) or not kernels_are_exact(x.device):
        return conv2d_f64(x, w, b, padding).float()
    return fast_conv2d(x, w, b, padding)


# ---------------------------------------------------------------------- the check
# (input bound, weight magnitude of the large taps): operands with 12 to 23 significant bits
_PROBE_BOUNDS = ((4095, 2049), (8191, 1025), (65535, 129), ((1 << 20) - 1, 9), ((1 << 23) - 1, 1))
# (in channels, out channels, kernel): the model's kinds of layer (direct 3x3, GEMM 1x1, wide GEMM)
_PROBE_SHAPES = ((6, 48, 3), (48, 48, 3), (96, 24, 3), (12, 48, 1), (192, 160, 1), (48, 6, 5))


def _probe(g: torch.Generator, cin: int, cout: int, k: int, bound: int, big: int) -> tuple:
    """Integer input, weights and bias with the largest sums a layer may reach (2**24 minus a little)."""
    h, w = 7, 9
    x = torch.randint(-bound, bound + 1, (1, cin, h, w), generator=g, dtype=torch.int64)
    x[..., ::3, ::2] = bound  # many operands at the bound itself
    x |= 1  # odd: every bit up to the top is significant
    x.clamp_(-bound, bound)
    budget = (F32_EXACT - 64) // bound  # L1 norm per output channel
    wt = torch.zeros(cout, cin, k, k, dtype=torch.int64)
    for c in range(cout):
        top = min(big + 2 * int(torch.randint(0, max(big // 2, 1), (1,), generator=g)), budget)
        wt[c, c % cin, k // 2, k // 2] = top if c % 2 else -top
        rest = budget - top
        if rest > 0:
            small = torch.randint(-rest, rest + 1, (cin * k * k,), generator=g, dtype=torch.int64)
            small = torch.div(small * rest, max(int(small.abs().sum()), 1), rounding_mode="trunc")
            small[(c % cin) * k * k + (k // 2) * k + k // 2] = 0
            wt[c] += small.view(cin, k, k)
    # one output position per channel reaches the budget: its input window is sign(w) * bound
    x[0, :, 2 : 2 + k, 3 : 3 + k] = torch.where(wt[0] >= 0, bound, -bound)
    b = torch.randint(-32, 33, (cout,), generator=g, dtype=torch.int64)
    return x, wt, b


def _exact_reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, padding: int) -> torch.Tensor:
    """The convolution in int64 on the CPU: the ground truth the fast kernels must reproduce."""
    cout, _, kh, kw = w.shape
    cols = F.unfold(x.double(), (kh, kw), padding=padding).round().to(torch.int64)
    out = torch.matmul(w.reshape(cout, -1), cols) + b.view(1, cout, 1)
    return out.view(1, cout, x.shape[2], x.shape[3])


def _run_check(device: torch.device) -> bool:
    g = torch.Generator().manual_seed(20261201)
    for bound, big in _PROBE_BOUNDS:
        for cin, cout, k in _PROBE_SHAPES:
            x, w, b = _probe(g, cin, cout, k, bound, big)
            expect = _exact_reference(x, w, b, k // 2)
            got = fast_conv2d(x.float().to(device), w.float().to(device), b.float().to(device), k // 2)
            if not torch.equal(got.cpu().double(), expect.double()):
                return False
    return True


def _f64_gemm_is_exact(device: torch.device) -> bool:
    """The float64 path's GEMM at the main path's bound (codes below 2**36, sums near 2**53)."""
    g = torch.Generator().manual_seed(20261202)
    bound = (1 << 36) - 1
    x = torch.randint(-bound, bound + 1, (24, 40), generator=g, dtype=torch.int64) | 1
    w = torch.randint(-(1 << 12), (1 << 12) + 1, (16, 24), generator=g, dtype=torch.int64)
    w = w * ((F64_EXACT // bound) // 2) // w.abs().sum(dim=1, keepdim=True).clamp_min(1)
    expect = w @ x
    got = torch.matmul(w.double().to(device), x.double().to(device)).cpu()
    return bool(torch.equal(got, expect.double()))


def kernels_are_exact(device: torch.device | str) -> bool:
    """Whether the fast float32 kernels are exact on ``device`` under the process's current settings.

    Runs the probes the first time a device is used and again whenever the
    precision settings or the kernel change (tens of milliseconds on a CPU); the float64 path
    serves the device while they fail. Raises ``RuntimeError`` if even float64
    GEMMs are inexact there (no exact path exists on such a device).
    """
    device = torch.device(device)
    key = (device.type, device.index, fast_conv2d, precision_settings())
    verdict = _VERDICTS.get(key)
    if verdict is None:
        with _CHECK_LOCK:
            verdict = _VERDICTS.get(key)
            if verdict is None:
                if not _f64_gemm_is_exact(device):
                    raise RuntimeError(f"float64 GEMMs on {device} are not exact: the portable profile cannot run here")
                verdict = _VERDICTS[key] = _run_check(device)
    return verdict
