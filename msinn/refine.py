"""Encoder-side refinement (``--effort``): latents optimised for the file, not only for the analysis.

The analysis transform gives latents, and coding rounds each symbol to the
nearest integer. Nearest is rarely best for the whole file: a symbol rounded
the other way may cost fewer bits for almost no distortion, and change the
context of every symbol after it. Refinement searches for latents whose
rounded symbols minimise rate + lambda x distortion of the decoded image,
with stochastic Gumbel annealing (SGA: Yang, Bamler, Mandt, "Improving
Inference for Neural Image Compression", NeurIPS 2020): rounding is replaced
by a soft, random choice between floor and ceiling whose temperature falls
during the optimisation, so the latents learn which way to round.

Gradients flow through a float model of the decoder (for a portable model,
its float twin: the integer weights dequantised). Only the latents change:
the refined latents are coded by the ordinary path, exact for portable
models, so files stay ``portable-1`` and decode with every decoder. Lambda
is the model's own rate-distortion slope at the chosen qp, measured on the
image, so any checkpoint works without knowing how it was trained.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch loads on first refinement: the levels are read by light callers (job specs)
    import torch

    from .interface import CodecModel


@dataclass(frozen=True)
class Effort:
    """One refinement level: how many optimisation steps, at what step size (in quantisation steps)."""

    iterations: int
    lr: float
    tau_start: float = 0.5  # SGA temperature: soft at first ...
    tau_end: float = 0.05  # ... nearly hard rounding at the end


# The levels users can ask for; docs/refinement.md has what each gains and costs (BD-rate against effort 0
# on 256x256 crops: level 1 -4.2% Kodak, -8.3% graphics; level 2 -6.1% and -10.2%; about 60x and 140x the
# encode time on a CPU). A level ships only where it gains at least 3% on both sets.
EFFORTS: dict[int, Effort] = {1: Effort(iterations=60, lr=0.01), 2: Effort(iterations=150, lr=0.01)}


def effort_of(level: int) -> Effort | None:
    """The refinement of ``--effort level`` (None for 0), or a ValueError naming the levels there are."""
    if level == 0:
        return None
    if level not in EFFORTS:
        shipped = ", ".join(str(k) for k in sorted(EFFORTS)) or "none beyond 0"
        raise ValueError(f"effort {level} is not a level of this version (levels: 0, {shipped})")
    return EFFORTS[level]


def sga_round(v: torch.Tensor, tau: float, generator: torch.Generator) -> torch.Tensor:
    """Stochastic Gumbel annealing: a differentiable random choice between floor(v) and floor(v) + 1.

    The closer v lies to one of them, the likelier it is chosen; as ``tau``
    falls, the choice hardens into rounding.
    """
    import torch

    f = torch.floor(v).detach()
    r = (v - f).clamp(1e-5, 1 - 1e-5)
    logits = torch.stack((-torch.atanh(r), -torch.atanh(1 - r)), dim=-1) / tau
    u = torch.rand(logits.shape, generator=generator, device="cpu").to(v.device).clamp(1e-10, 1 - 1e-10)
    p = torch.softmax((logits - torch.log(-torch.log(u))) / tau, dim=-1)
    return f + p[..., 1]


def _mse(x_hat: torch.Tensor, x: torch.Tensor, region: tuple[int, int]) -> torch.Tensor:
    h, w = region
    return ((x_hat[..., :h, :w] - x[..., :h, :w]) ** 2).mean()


def rd_slope(
    model: CodecModel, latents: list[torch.Tensor], x: torch.Tensor, qp: float, region: tuple[int, int]
) -> float | None:
    """Lambda for ``qp``: bits per pixel saved per unit of mean squared error given up, measured at qp +- 0.25."""
    import torch

    m = model.float_model  # gradients flow through it: a portable model's float twin, or the model itself
    lo, hi = max(qp - 0.25, 0.0), min(qp + 0.25, float(m.anchor_num - 1))
    if hi <= lo:
        return None
    pixels = region[0] * region[1]
    with torch.no_grad():
        points = []
        for q in (lo, hi):
            bits, x_hat = m.soft_forward(latents, q, torch.round)
            points.append((float(bits) / pixels, float(_mse(x_hat, x, region))))
    (r0, d0), (r1, d1) = points
    if not (d0 > d1 and r1 > r0):
        return None
    return (r1 - r0) / (d0 - d1)


def refine_latents(
    model: CodecModel,
    latents: list[torch.Tensor],
    x: torch.Tensor,
    qp: float,
    effort: Effort,
    region: tuple[int, int] | None = None,
    seed: int = 0,
) -> tuple[list[torch.Tensor], float | None]:
    """Latents whose rounded symbols code ``x`` at ``qp`` with a lower rate + lambda x distortion, and lambda.

    ``x`` is the padded image (1x3xHxW in [0, 1]) the latents were analysed
    from and ``region`` (height, width) the part of it that is the image (the
    padding costs bits but its distortion does not matter). The search is
    seeded, so one image refines the same way every time. Returns the input
    latents (and None) when the model's slope cannot be measured (a flat curve).
    """
    import torch

    m = model.float_model  # gradients flow through it: a portable model's float twin, or the model itself
    region = region or (x.shape[2], x.shape[3])
    lam = rd_slope(model, latents, x, qp, region)
    if lam is None:
        return latents, None
    gains = m.gains(qp)
    steps = [gains[i][0].detach() for i in range(len(latents))]  # a symbol is (y - mean) * gain
    start = [t.detach() for t in latents]
    deltas = [torch.zeros_like(t, requires_grad=True) for t in start]  # in quantisation steps
    opt = torch.optim.Adam(deltas, lr=effort.lr)
    gen = torch.Generator().manual_seed(seed)
    pixels = region[0] * region[1]
    decay = math.log(effort.tau_start / effort.tau_end)
    frozen = [p for p in m.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        for it in range(effort.iterations):
            tau = effort.tau_start * math.exp(-decay * it / max(effort.iterations - 1, 1))
            y = [t + d / s for t, d, s in zip(start, deltas, steps)]
            bits, x_hat = m.soft_forward(y, qp, lambda v, tau=tau: sga_round(v, tau, gen))
            loss = bits / pixels + lam * _mse(x_hat, x, region)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return [(t + d / s).detach() for t, d, s in zip(start, deltas, steps)], lam
