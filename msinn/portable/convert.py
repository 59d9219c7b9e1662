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
5. *Prove*: :meth:`PortableMSINN.check_bounds` runs on the result.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import LATENT_CHANNELS
from ..model import MSINN
from .exact import F32_EXACT, F64_EXACT, pow2
from .model import (
    MAIN_BOUND,
    MAIN_FRAC,
    MUL_FRAC,
    TANH_FRAC,
    PortableMSINN,
)
from .tables import LOG_FRAC, canonical_table, exp2_table

HEADROOM = 2.0  # inputs cover twice the calibrated range
MIN_BITS, MAX_BITS = 6, 20
PRE_ACT_EXTRA_BITS = 3  # a nonlinearity's input: this many bits more than the next layer's input
PRE_ACT_MAX_BITS = 15
SPLIT_TARGET_DB = 52.0  # a layer allowed two passes takes them when one pass predicts less than this
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


@dataclass
class Stats:
    in_max: float = 0.0
    in_sq: float = 0.0
    in_n: int = 0
    out_max: torch.Tensor | None = None

    @property
    def in_ms(self) -> float:
        return self.in_sq / max(self.in_n, 1)


@dataclass
class ConvPlan:
    """One integer convolution to build: its float weights, its statistics, the formats chosen."""

    name: str
    weight: torch.Tensor  # float64, masked if masked
    bias: torch.Tensor  # float64
    stats: Stats
    bits: int = 0
    e_in: int = 0
    split: int = 0  # two float32 passes over hi/lo halves of the input (0: one pass)
    max_bits: int = 24
    act: str = "none"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def frac_in(self) -> int:
        return self.bits - self.e_in

    @property
    def in_bound(self) -> int:
        return (1 << self.bits) - 1

    @property
    def pass_bound(self) -> int:
        """The largest input magnitude one float32 pass sees."""
        return (1 << (self.bits - self.split)) if self.split else self.in_bound


def compact(t: torch.Tensor) -> torch.Tensor:
    """Integers in the narrowest of int16/int32/int64 that holds them (the file stays small)."""
    top = int(t.abs().max()) if t.numel() else 0
    for dtype in (torch.int16, torch.int32):
        if top <= torch.iinfo(dtype).max:
            return t.to(dtype)
    return t.to(torch.int64)


def _log2_ceil(v: float) -> int:
    return 0 if v <= 0 else math.ceil(math.log2(v))


# ---------------------------------------------------------------------- calibration
def calibrate(
    model: MSINN, images: Iterable[torch.Tensor], qps: Sequence[float] | None = None
) -> dict[nn.Module, Stats]:
    """Statistics of every convolution's input and output on the decoder path."""
    model.eval()
    stats: dict[nn.Module, Stats] = {}
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]

    def hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        st = stats.setdefault(mod, Stats())
        x = inp[0].detach().double()
        st.in_max = max(st.in_max, float(x.abs().max()))
        st.in_sq += float((x * x).sum())
        st.in_n += x.numel()
        o = out.detach().abs()
        per = o.amax(dim=tuple(d for d in range(o.dim()) if d != 1)).double() if o.dim() > 1 else o.double()
        st.out_max = per if st.out_max is None else torch.maximum(st.out_max, per)

    qps = list(range(model.anchor_num)) if qps is None else list(qps)
    with torch.inference_mode():
        for x in images:
            latents = model.analyze(x)
            handles = [m.register_forward_hook(hook) for m in convs]
            try:
                for qp in qps:
                    model.forward_latents(latents, qp)
            finally:
                for h in handles:
                    h.remove()
    return stats


# ---------------------------------------------------------------------- bit allocation
def _weight_exponents(
    w: torch.Tensor, b: torch.Tensor | None, frac_in: int, x_bound: int, limit: int
) -> list[int]:
    """Per output channel, the largest exponent s with sum|round(w 2**s)| X + |round(b 2**(s+frac_in))| <= limit.

    ``b=None``: the bias is added outside the float32 passes (two-pass layers).
    """
    out = []
    l1 = w.abs().sum(dim=1)
    for c in range(w.shape[0]):
        if float(l1[c]) > 0:
            s = math.floor(math.log2(limit / (float(l1[c]) * x_bound + 1e-300))) + 1
        else:
            s = 40
        s = min(s, 40)
        while s > -40:
            wq = torch.round(w[c] * pow2(s))
            bq = round(float(b[c]) * pow2(s + frac_in)) if b is not None else 0
            if float(wq.abs().sum()) * x_bound + abs(bq) <= limit:
                break
            s -= 1
        out.append(s)
    return out


def allocate(plan: ConvPlan, limit: int = F32_EXACT) -> None:
    """Choose the input's bits and range for ``plan`` (minimum predicted output noise).

    A layer that may take two passes (``plan.split`` set) takes them only when
    one pass cannot reach ``SPLIT_TARGET_DB``: small kernels often can.
    """
    w = plan.weight.reshape(plan.weight.shape[0], -1)
    st = plan.stats
    e_in = _log2_ceil(st.in_max * HEADROOM)
    signal = float((w * w).sum()) * max(st.in_ms, 1e-30)

    def best_of(candidates: list[tuple[int, int]]) -> tuple[float, int, int]:
        best = None
        for bits, split in candidates:
            frac_in = bits - e_in
            x_bound = (1 << split) if split else (1 << bits) - 1
            # one pass: keep a quarter of the budget for bias and rounding when predicting
            s = _weight_exponents(w, None if split else plan.bias, frac_in, x_bound, limit if split else limit * 3 // 4)
            scale = torch.tensor([pow2(v) for v in s], dtype=torch.float64).view(-1, 1)
            err = w - torch.round(w * scale) / scale
            act = pow2(-2 * frac_in) / 12 * float((w * w).sum())
            wt = float((err * err).sum()) * st.in_ms
            noise = (act + wt) / max(signal, 1e-30)
            if best is None or noise < best[0] * (1 - 1e-9):
                best = (noise, bits, split)
        assert best is not None
        return best

    best = best_of([(b, 0) for b in range(MIN_BITS, min(MAX_BITS, plan.max_bits) + 1)])
    if plan.split and -10 * math.log10(max(best[0], 1e-30)) < SPLIT_TARGET_DB:
        two = best_of([(2 * h, h) for h in range(MIN_BITS, 13) if 2 * h <= plan.max_bits])
        if two[0] < best[0]:
            best = two
    plan.bits, plan.e_in, plan.split = best[1], e_in, best[2]
    plan.extra["predicted_snr_db"] = -10 * math.log10(max(best[0], 1e-30))


def quantise(
    plan: ConvPlan, frac_out: int | None, out_bound: int, limit: int = F32_EXACT
) -> tuple[torch.Tensor, torch.Tensor, list[int], int]:
    """Integer weights, bias, exponents and the output format (``frac_out=None``: keep every accumulator bit)."""
    w = plan.weight.reshape(plan.weight.shape[0], -1)
    x_bound, frac_in = plan.pass_bound, plan.frac_in
    s = _weight_exponents(w, None if plan.split else plan.bias, frac_in, x_bound, limit)
    if frac_out is None:  # the accumulator reaches 2**24 per pass: 2**(24 + split) over both
        frac_out = min(frac_in + v for v in s) - plan.split
    k = plan.split
    for c in range(len(s)):
        while True:
            wq = torch.round(w[c] * pow2(s[c]))
            l1 = int(wq.abs().sum())
            bq = round(float(plan.bias[c]) * pow2(s[c] + frac_in))
            d = frac_in + s[c] - frac_out
            r = 1 << (d - 1) if d > 0 else 0
            if not k and l1 * x_bound + abs(bq + r) <= limit:
                break
            # two passes: the hi pass plus the carried quotient of the lo pass, and the lo pass with its bias share
            if k and l1 * x_bound + abs((bq + r) >> k) + l1 + 1 <= limit and l1 * ((1 << k) - 1) + (1 << k) <= limit:
                break
            s[c] -= 1
    scale = torch.tensor([pow2(v) for v in s], dtype=torch.float64)
    wq = torch.round(plan.weight * scale.view(-1, *([1] * (plan.weight.dim() - 1))))
    bq = torch.round(plan.bias * scale * pow2(frac_in))
    return wq, bq.to(torch.int64), s, frac_out


# ---------------------------------------------------------------------- building the spec
class _Builder:
    def __init__(self, model: MSINN, stats: dict[nn.Module, Stats]):
        self.model = model
        self.stats = stats
        self.spec: dict[str, Any] = {"layers": {}, "chains": {}}
        self.tensors: dict[str, torch.Tensor] = {}

    def plan(self, name: str, conv: nn.Conv2d, rows: slice | None = None) -> ConvPlan:
        w = conv.weight.detach().double()
        if hasattr(conv, "mask"):
            w = w * conv.mask.double()
        b = conv.bias.detach().double() if conv.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
        st = self.stats.get(conv, Stats())
        if rows is not None:
            w, b = w[rows], b[rows]
            if st.out_max is not None:
                st = Stats(st.in_max, st.in_sq, st.in_n, st.out_max[rows])
        return ConvPlan(name, w, b, st)

    def emit_conv(
        self, plan: ConvPlan, frac_out: int | None, out_bound: int, limit: int = F32_EXACT
    ) -> tuple[int, int]:
        wq, bq, s, frac_out = quantise(plan, frac_out, out_bound, limit)
        self.tensors[f"{plan.name}.w"] = compact(wq)
        self.tensors[f"{plan.name}.b"] = bq
        self.spec["layers"][plan.name] = {
            "kind": "conv",
            "wexp": s,
            "frac_in": plan.frac_in,
            "frac_out": frac_out,
            "in_bound": plan.in_bound,
            "out_bound": out_bound,
            "split": plan.split,
            "act": plan.act,
            "snr": round(plan.extra.get("predicted_snr_db", 0.0), 1),
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

    def pre_act(self, plan: ConvPlan, bits: int) -> tuple[int, int]:
        """(frac, bound) of a nonlinearity's input: ``bits`` over twice the calibrated output range."""
        out_max = float(plan.stats.out_max.max()) if plan.stats.out_max is not None else 1.0
        e = _log2_ceil(out_max * HEADROOM)
        return bits - e, (1 << bits) - 1

    def chain(self, prefix: str, convs: list[nn.Conv2d], final: tuple[int, int] | str, split: bool = False) -> None:
        """conv, GELU, ..., conv; the last conv's output goes to ``final`` ((frac, bound), "tanh")."""
        plans = [self.plan(f"{prefix}.conv{j}", c) for j, c in enumerate(convs)]
        for p in plans:
            p.split = int(split)
            allocate(p)
        self.spec["chains"][prefix] = len(plans)
        for j, p in enumerate(plans):
            if j < len(plans) - 1:
                nxt = plans[j + 1]
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
        p0, p1 = self.plan(f"ep{i}.conv0", c0), self.plan(f"ep{i}.conv1", c1)
        ps, pm = self.plan(f"ep{i}.scale", c2, slice(0, half)), self.plan(f"ep{i}.mean", c2, slice(half, None))
        whole = self.plan(f"ep{i}.last", c2)  # scales and means read one tensor: one format
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
        p1, p2 = self.plan(f"{n}.conv1", rb.conv1), self.plan(f"{n}.conv2", rb.conv2)
        affine = self.model.config.flow_coupling == "affine"
        half = zc.out_channels // 2
        if affine:
            pz = self.plan(f"{n}.shift", zc, slice(half, None))
            psc = self.plan(f"{n}.scale", zc, slice(0, half))
        else:
            pz = self.plan(f"{n}.shift", zc)
            psc = None
        pk = self.plan(f"{n}.skip", rb.skip) if rb.skip is not None else None
        # the two halves of the zero-conv read one tensor: allocate on the whole weight
        whole = self.plan(f"{n}.zc", zc)
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
    if model.config.post_process:
        from .postnet import PostNetBuilder
    stats = calibrate(model, images)
    b = _Builder(model, stats)
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


def dequantized_state_dict(pm: PortableMSINN) -> dict[str, torch.Tensor]:
    """The float state dict a portable model stands for (integer weights scaled back), for its float twin."""
    L = pm.layers
    sd: dict[str, torch.Tensor] = dict(pm.float_tensors)

    def put(prefix: str, *names: str) -> None:
        ws, bs = zip(*(L[n].dequantized() for n in names))
        sd[f"{prefix}.weight"] = torch.cat(ws).float()
        sd[f"{prefix}.bias"] = torch.cat(bs).float()

    cfg = pm.config
    for i in range(len(LATENT_CHANNELS)):
        put(f"entropy_parameters.{i}.0", f"ep{i}.conv0")
        put(f"entropy_parameters.{i}.2", f"ep{i}.conv1")
        put(f"entropy_parameters.{i}.4", f"ep{i}.scale", f"ep{i}.mean")
        for prefix, module in ((f"cc{i}", f"cc_transforms.{i - 1}"), (f"sc{i}", f"sc_transforms.{i}"),
                               (f"lrp{i}", f"lrp_transforms.{i}")):
            if prefix not in pm.spec["chains"]:
                continue
            for j in range(pm.spec["chains"][prefix]):
                put(f"{module}.{2 * j}", f"{prefix}.conv{j}")
    for s in range(4):
        for u in range(cfg.depths[s]):
            n, m = f"g{s}.{u}", f"g_a{s}.{u}.block"
            put(f"{m}.0.conv1", f"{n}.conv1")
            put(f"{m}.0.conv2", f"{n}.conv2")
            if f"{n}.skip" in L:
                put(f"{m}.0.skip", f"{n}.skip")
            if cfg.flow_coupling == "affine":
                put(f"{m}.1.conv", f"{n}.scale", f"{n}.shift")
            else:
                put(f"{m}.1.conv", f"{n}.shift")
    if cfg.post_process:
        from .postnet import dequantized_post_net

        sd.update(dequantized_post_net(pm))
    return sd


def calibration_crops(folder: str | Path, size: int = 256, limit: int = 16) -> list[torch.Tensor]:
    """Centre crops (``size`` square, or the whole image if smaller) of up to ``limit`` photos in ``folder``.

    Calibration sees the value ranges real photos produce; use photos like
    the ones you will code, and never your evaluation set.
    """
    from ..images import open_image
    from ..pixels import to_padded_tensor

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
