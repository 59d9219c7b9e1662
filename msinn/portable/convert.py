"""Converting a float MS-INN model to the portable profile (post-training quantisation).

Steps:

1. *Calibrate*: run the float model's decoder path (``forward_latents``) on
   calibration images at every anchor and record, for each convolution, the
   largest input magnitude, the input's mean square and the largest output
   per channel.
2. *Allocate bits*: a float32 convolution is exact when ``sum|w| * X +
   |bias| <= 2**24`` (``X`` the input clamp), so activation bits and weight
   bits trade against each other. For each layer the split minimising the
   predicted output noise (input rounding through the weights, plus weight
   rounding times the input's power) is chosen; each output channel then gets
   the finest weight exponent that keeps its bound.
3. *Formats*: an input covers twice the calibrated range (values beyond are
   clamped: never inexact, only lossy); pre-activation outputs get a few bits
   more than the next layer's input; outputs that leave the float32 world
   (means, shifts, scales) keep every bit the accumulator has.
4. *Tables*: canonical function tables, the gains' log2 in fixed point, the
   entropy coder's CDF tables and scale table, all shipped in the file.
5. *Prove*: building the :class:`PortableMSINN` runs the exactness proof
   (:mod:`msinn.portable.proof`) on the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import LATENT_CHANNELS
from ..model import MSINN
from .allocation import HEADROOM, ConvAllocation, Stats, allocate, calibrate, compact, log2_ceil, quantise
from .convert_postnet import PostNetBuilder
from .exact import pow2
from .formats import F32_EXACT, F64_EXACT, MAIN_BOUND, MAIN_FRAC, MUL_FRAC, TANH_FRAC
from .model import PortableMSINN
from .tables import LOG_FRAC, canonical_table, exp2_table

PRE_ACT_EXTRA_BITS = 3  # a nonlinearity's input: this many bits more than the next layer's input
PRE_ACT_MAX_BITS = 15
EXP_INPUT_BITS = 16  # the coupling multiplier's table input
TANH_INPUT_BITS = 16
# Which parts may run as two float32 passes (precision) rather than one (speed). Measured on the
# bundled model: the synthesis (coupling) path needs them everywhere (one pass left 52 dB of noise
# in the inverse transform), the entropy parameters at high rates, the residual prediction at the
# coarse levels; the finest level's prediction and the two context networks cost too much time
# for the little they gain (+0.54% BD-rate on Kodak for the whole conversion).
SPLIT = {"cc": False, "sc": False, "ep_levels": (0, 1, 2, 3, 4), "lrp_levels": (0, 1, 2, 3), "coupling": True}
# float tensors the encoder's analysis needs as they are (the rest is dequantised from integers)
FLOAT_KEPT = ("gain", "inv_gain", "scale_gain", "initial_scale")


# ---------------------------------------------------------------------- building the spec
class Builder:
    """Collects a conversion's spec (formats, bounds per layer) and integer tensors, layer by layer."""

    def __init__(self, model: MSINN, stats: dict[nn.Module, Stats]):
        self.model = model
        self.stats = stats
        self.spec: dict[str, Any] = {"layers": {}, "chains": {}}
        self.tensors: dict[str, torch.Tensor] = {}

    def allocation(self, name: str, conv: nn.Conv2d, rows: slice | None = None) -> ConvAllocation:
        w = conv.weight.detach().double()
        if hasattr(conv, "mask"):
            w = w * conv.mask.double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        st = self.stats.get(conv, Stats())
        if rows is not None:
            w, b = w[rows], b[rows]
            if st.out_max is not None:
                st = Stats(st.in_max, st.in_sq, st.in_n, st.out_max[rows])
        return ConvAllocation(name, w, b, st)

    def emit_conv(
        self, alloc: ConvAllocation, frac_out: int | None, out_bound: int, limit: int = F32_EXACT
    ) -> tuple[int, int]:
        wq, bq, s, frac_out = quantise(alloc, frac_out, out_bound, limit)
        self.tensors[f"{alloc.name}.w"] = compact(wq)
        self.tensors[f"{alloc.name}.b"] = bq
        self.spec["layers"][alloc.name] = {
            "kind": "conv",
            "wexp": s,
            "frac_in": alloc.frac_in,
            "frac_out": frac_out,
            "in_bound": alloc.in_bound,
            "out_bound": out_bound,
            "split": alloc.split,
            "act": alloc.act,
            "snr": round(alloc.extra.get("predicted_snr_db", 0.0), 1),
        }
        return frac_out, out_bound

    def emit_lut(self, name: str, fn: str, frac_in: int, in_bound: int, frac_out: int, out_bound: int) -> None:
        self.spec["layers"][name] = {
            "kind": "lut",
            "fn": fn,
            "frac_in": frac_in,
            "in_bound": in_bound,
            "frac_out": frac_out,
            "out_bound": out_bound,
        }

    def pre_act(self, alloc: ConvAllocation, bits: int) -> tuple[int, int]:
        """(frac, bound) of a nonlinearity's input: ``bits`` over twice the calibrated output range."""
        out_max = float(alloc.stats.out_max.max()) if alloc.stats.out_max is not None else 1.0
        e = log2_ceil(out_max * HEADROOM)
        return bits - e, (1 << bits) - 1

    def chain(self, prefix: str, convs: list[nn.Conv2d], final: tuple[int, int] | str, split: bool = False) -> None:
        """conv, GELU, ..., conv; the last conv's output goes to ``final`` ((frac, bound), "tanh")."""
        allocs = [self.allocation(f"{prefix}.conv{j}", c) for j, c in enumerate(convs)]
        for p in allocs:
            p.split = int(split)
            allocate(p)
        self.spec["chains"][prefix] = len(allocs)
        for j, p in enumerate(allocs):
            if j < len(allocs) - 1:
                nxt = allocs[j + 1]
                frac, bound = self.pre_act(p, min(nxt.bits + PRE_ACT_EXTRA_BITS, PRE_ACT_MAX_BITS + int(split)))
                self.emit_conv(p, frac, bound)
                self.emit_lut(f"{prefix}.act{j}", "gelu", frac, bound, nxt.frac_in, nxt.in_bound)
            elif final == "tanh":
                frac, bound = self.pre_act(p, TANH_INPUT_BITS)
                self.emit_conv(p, frac, bound)
                self.emit_lut(f"{prefix}.tanh", "tanh", frac, bound, TANH_FRAC, 1 << TANH_FRAC)
            else:
                self.emit_conv(p, final[0], final[1])

    def entropy_parameters(self, i: int) -> tuple[int, int]:
        seq = self.model.entropy_parameters[i]
        c0, c1, c2 = seq[0], seq[2], seq[4]
        half = c2.out_channels // 2
        p0, p1 = self.allocation(f"ep{i}.conv0", c0), self.allocation(f"ep{i}.conv1", c1)
        ps = self.allocation(f"ep{i}.scale", c2, slice(0, half))
        pm = self.allocation(f"ep{i}.mean", c2, slice(half, None))
        whole = self.allocation(f"ep{i}.last", c2)  # scales and means read one tensor: one format
        split = int(i in SPLIT["ep_levels"])
        for p in (p0, p1, whole):
            p.split = split
            allocate(p)
        for p in (ps, pm):
            p.bits, p.e_in, p.split = whole.bits, whole.e_in, whole.split
        top = PRE_ACT_MAX_BITS + split
        frac, bound = self.pre_act(p0, min(p1.bits + PRE_ACT_EXTRA_BITS, top))
        self.emit_conv(p0, frac, bound)
        self.emit_lut(f"ep{i}.act0", "gelu", frac, bound, p1.frac_in, p1.in_bound)
        frac, bound = self.pre_act(p1, min(ps.bits + PRE_ACT_EXTRA_BITS, top))
        self.emit_conv(p1, frac, bound)
        self.emit_lut(f"ep{i}.act1", "gelu", frac, bound, ps.frac_in, ps.in_bound)
        self.emit_conv(ps, None, F32_EXACT)
        self.emit_conv(pm, None, F32_EXACT)
        return p0.frac_in, p0.in_bound

    def coupling(self, s: int, u: int, unit: nn.Module) -> None:
        n = f"g{s}.{u}"
        rb, zc = unit.block[0], unit.block[1].conv
        p1, p2 = self.allocation(f"{n}.conv1", rb.conv1), self.allocation(f"{n}.conv2", rb.conv2)
        affine = self.model.config.flow_coupling == "affine"
        half = zc.out_channels // 2
        if affine:
            pz = self.allocation(f"{n}.shift", zc, slice(half, None))
            psc = self.allocation(f"{n}.scale", zc, slice(0, half))
        else:
            pz = self.allocation(f"{n}.shift", zc)
            psc = None
        pk = self.allocation(f"{n}.skip", rb.skip) if rb.skip is not None else None
        # the two halves of the zero-conv read one tensor: allocate on the whole weight
        whole = self.allocation(f"{n}.zc", zc)
        # the synthesis path: every bit of its error reaches the pixels, so two float32 passes each
        for p in (p1, p2, whole, pk, pz, psc):
            if p is not None:
                p.split = int(SPLIT["coupling"])
        # LeakyReLU's 41/4096 is exact on float32 codes below 2**18
        p2.max_bits = whole.max_bits = 18
        for p in (p1, p2, whole) + ((pk,) if pk else ()):
            allocate(p)
        for p in (pz, psc):
            if p is not None:
                p.bits, p.e_in, p.split = whole.bits, whole.e_in, whole.split
        p1.act = p2.act = "leaky"
        zc_in = (pz.frac_in, pz.in_bound)
        self.emit_conv(p1, p2.frac_in, p2.in_bound)
        self.emit_conv(p2, *zc_in)
        if pk is not None:
            self.emit_conv(pk, *zc_in)
        self.emit_conv(pz, None, F32_EXACT)
        if psc is not None:
            frac, bound = self.pre_act(psc, EXP_INPUT_BITS)
            self.emit_conv(psc, frac, bound)
            self.emit_lut(f"{n}.exp", "inv_coupling_scale", frac, bound, MUL_FRAC, F32_EXACT)
        self.mix(n, unit)

    def mix(self, n: str, unit: nn.Module) -> None:
        """The inverse channel permutation with the act-norm's inverse folded in, as one float64 1x1 layer."""
        perm = unit.permute
        c = unit.block[0].conv1.in_channels * 2
        if hasattr(perm, "weight"):
            inv = torch.linalg.inv(perm.weight.detach().double())
        else:
            inv = torch.zeros(c, c, dtype=torch.float64)
            inv[torch.arange(c), perm.indices_inverse.cpu()] = 1.0
        bias = torch.zeros(c, dtype=torch.float64)
        if unit.use_act_norm:
            inv = torch.exp(-unit.actnorm.logs.detach().double().view(c, 1)) * inv
            bias = -unit.actnorm.bias.detach().double().view(c)
        self.emit_linear(f"{n}.mix", inv, bias)

    def emit_linear(self, name: str, w: torch.Tensor, bias: torch.Tensor) -> None:
        """A float64 channel-mixing layer from main codes to main codes (:class:`QMix`)."""
        s = []
        for ci in range(w.shape[0]):
            e = 60
            while True:
                wq = torch.round(w[ci] * pow2(e))
                bq = round(float(bias[ci]) * pow2(e + MAIN_FRAC))
                r = 1 << (e - 1) if e > 0 else 0
                if e <= 0 or float(wq.abs().sum()) * MAIN_BOUND + abs(bq + r) <= F64_EXACT:
                    break
                e -= 1
            s.append(e)
        scale = torch.tensor([pow2(v) for v in s], dtype=torch.float64).view(-1, 1)
        self.tensors[f"{name}.w"] = compact(torch.round(w * scale))
        self.tensors[f"{name}.b"] = torch.round(bias * scale.view(-1) * pow2(MAIN_FRAC)).to(torch.int64)
        self.spec["layers"][name] = {
            "kind": "mix",
            "wexp": s,
            "frac_in": MAIN_FRAC,
            "frac_out": MAIN_FRAC,
            "in_bound": MAIN_BOUND,
            "out_bound": MAIN_BOUND,
        }


def _log_gains(t: torch.Tensor) -> torch.Tensor:
    """round(log2(max(gain, 0.01)) * 2**16) per anchor and channel (the float model's lower bound)."""
    v = t.detach().double().clamp_min(0.01).reshape(t.shape[0], -1)
    return torch.round(torch.log2(v) * (1 << LOG_FRAC)).to(torch.int64)


def convert(model: MSINN, images: Sequence[torch.Tensor], meta: dict | None = None) -> PortableMSINN:
    """The portable model for a float ``model``, calibrated on ``images`` (1x3xHxW in [0, 1], sides multiples of 64)."""
    model = model.cpu().eval()
    stats = calibrate(model, images)
    b = Builder(model, stats)
    for i in range(len(LATENT_CHANNELS)):
        ep_in = b.entropy_parameters(i)
        if i > 0:
            seq = model.cc_transforms[i - 1]
            b.chain(f"cc{i}", [seq[j] for j in range(0, len(seq), 2)], ep_in, split=SPLIT["cc"])
        seq = model.sc_transforms[i]
        b.chain(f"sc{i}", [seq[j] for j in range(0, len(seq), 2)], ep_in, split=SPLIT["sc"])
        if model.config.lrp:
            seq = model.lrp_transforms[i]
            b.chain(f"lrp{i}", [seq[j] for j in range(0, len(seq), 2)], "tanh", split=i in SPLIT["lrp_levels"])
    for s in range(4):
        for u, unit in enumerate(model.stage(s)):
            b.coupling(s, u, unit)
    if model.config.post_process:
        PostNetBuilder(b).build()
    ep0 = b.spec["layers"]["ep0.conv0"]
    init = model.initial_scale.detach().double().view(-1) * pow2(ep0["frac_in"])
    b.tensors["initial_scale_codes"] = torch.round(init).clamp(-ep0["in_bound"], ep0["in_bound"]).to(torch.int64)
    b.tensors["log_inv_gain"] = _log_gains(model.inv_gain)
    b.tensors["log_scale_gain"] = _log_gains(model.scale_gain)
    gc = model.gaussian_conditional
    if gc._offset.numel() == 0:
        model.update()
    b.tensors["cdf"] = gc.quantized_cdf.detach().cpu().to(torch.int32)
    b.tensors["cdf_length"] = gc.cdf_length.detach().cpu().reshape(-1).to(torch.int32)
    b.tensors["cdf_offset"] = gc.offset.detach().cpu().reshape(-1).to(torch.int32)
    b.tensors["scale_table"] = gc.scale_table.detach().cpu().double()
    for fn in ("gelu", "tanh", "inv_coupling_scale", "sigmoid"):
        b.tensors[f"canon.{fn}"] = compact(torch.from_numpy(canonical_table(fn)))
    b.tensors["exp2"] = torch.from_numpy(exp2_table())
    float_tensors = {}
    for name, t in model.state_dict().items():
        if name in FLOAT_KEPT or ".actnorm." in name or ".permute." in name:
            float_tensors[name] = t.detach().cpu().clone()
    return PortableMSINN(model.config, b.spec, b.tensors, float_tensors, meta)


def calibration_crops(folder: str | Path, size: int = 256, limit: int = 16) -> list[torch.Tensor]:
    """Centre crops (``size`` square, or the whole image if smaller) of up to ``limit`` photos in ``folder``.

    Calibration sees the value ranges real photos produce; use photos like
    the ones you will code, and never your evaluation set.
    """
    from ..images import open_image
    from ..tensors import to_padded_tensor

    exts = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".ppm"}
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in exts)[:limit]
    if not paths:
        raise ValueError(f"{folder}: no images to calibrate on")
    crops = []
    for p in paths:
        rgb = open_image(p.read_bytes(), str(p)).rgb
        h, w = rgb.shape[:2]
        ch, cw = min(size, h), min(size, w)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        crops.append(to_padded_tensor(rgb[y0 : y0 + ch, x0 : x0 + cw], torch.device("cpu")))
    return crops
