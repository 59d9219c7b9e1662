"""The post-processing U-Net (released configuration) on integer codes.

Every tensor between layers stays in the main format (float64 codes, see
:mod:`msinn.portable.model`); each convolution rescales its input into its own
format, runs exactly (one or two float32 passes) and returns to the main
format. Pooling, pixel shuffle, ReLU, LeakyReLU (41/4096), concatenation and
the squeeze-excite's mean are exact on integers; the squeeze-excite's
sigmoid is a table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .exact import LEAKY_NUM, LEAKY_SHIFT, BoundError, pow2, rescale
from .model import MAIN_BOUND, MAIN_FRAC, from_main, to_main

if TYPE_CHECKING:  # pragma: no cover
    from .model import PortableMSINN

SIGMOID_FRAC = 14
SIGMOID_INPUT_BITS = 16
BLOCKS = ("conv1", "conv2", "conv3", "up_conv3", "up_conv2")
REFINE = 4


def _conv(pm: PortableMSINN, name: str, x: torch.Tensor) -> torch.Tensor:
    layer = pm.layers[name]
    return to_main(layer(from_main(x, layer)), layer.frac_out)


def _leaky(x: torch.Tensor) -> torch.Tensor:
    """LeakyReLU 41/4096 on float64 main codes (exact: |x| * 41 < 2**53)."""
    return torch.maximum(x, (x * (LEAKY_NUM * pow2(-LEAKY_SHIFT))).floor_())


def _se(pm: PortableMSINN, p: str, x: torch.Tensor) -> torch.Tensor:
    n = x.shape[2] * x.shape[3]
    total = x.to(torch.int64).sum(dim=(2, 3), keepdim=True)
    mean = torch.div(2 * total + n, 2 * n, rounding_mode="floor").double()  # round half up, exact in int64
    h = pm.layers[f"{p}.fc0"](mean).clamp_min_(0)
    z = pm.layers[f"{p}.fc2"](h)
    lut = pm.layers[f"{p}.sigmoid"]
    s = lut(rescale(z, MAIN_FRAC - pm.spec["layers"][f"{p}.sigmoid"]["frac_in"], lut.in_bound).float())
    return rescale(x * s.double(), SIGMOID_FRAC, MAIN_BOUND)


def _rcb(pm: PortableMSINN, p: str, x: torch.Tensor) -> torch.Tensor:
    a = _leaky(_conv(pm, f"{p}.c0", x))
    a = _se(pm, f"{p}.se", _conv(pm, f"{p}.c2", a))
    return (_conv(pm, f"{p}.up", x) + a).clamp_(-MAIN_BOUND, MAIN_BOUND)


def post_process(pm: PortableMSINN, x: torch.Tensor) -> torch.Tensor:
    """x + 0.3 * net(x) on main-format codes (the 0.3 is folded into the last convolution)."""
    bound = MAIN_BOUND
    u = "post.unet"
    h = _conv(pm, "post.conv1", x)
    x1 = _rcb(pm, f"{u}.conv1", h)
    x2 = _rcb(pm, f"{u}.conv2", F.max_pool2d(x1, 2))
    x3 = _rcb(pm, f"{u}.conv3", F.max_pool2d(x2, 2))
    for i in range(REFINE):
        r = _conv(pm, f"{u}.refine{i}.conv1", x3.clamp_min(0))
        x3 = (x3 + _conv(pm, f"{u}.refine{i}.conv2", r.clamp_min_(0))).clamp_(-bound, bound)
    d3 = _rcb(pm, f"{u}.up_conv3", torch.cat((x2, F.pixel_shuffle(_conv(pm, f"{u}.up3", x3), 2)), dim=1))
    d2 = _rcb(pm, f"{u}.up_conv2", torch.cat((x1, F.pixel_shuffle(_conv(pm, f"{u}.up2", d3), 2)), dim=1))
    out = _conv(pm, "post.conv2", d2)
    return (x + out).clamp_(-bound, bound)


def _conv_modules(net: Any) -> dict[str, Any]:
    """Layer name -> float module, in the order they run."""
    u = net.unet
    mods: dict[str, Any] = {"post.conv1": net.conv1}
    for b in BLOCKS:
        blk = getattr(u, b)
        mods[f"post.unet.{b}.c0"] = blk.conv[0]
        mods[f"post.unet.{b}.c2"] = blk.conv[2]
        mods[f"post.unet.{b}.up"] = blk.up_dim
    for i in range(REFINE):
        mods[f"post.unet.refine{i}.conv1"] = u.context_refine[i].conv1
        mods[f"post.unet.refine{i}.conv2"] = u.context_refine[i].conv2
    mods["post.unet.up3"] = u.up3[0]
    mods["post.unet.up2"] = u.up2[0]
    mods["post.conv2"] = net.conv2
    return mods


class PostNetBuilder:
    """Adds the post-net's layers to a conversion (:class:`msinn.portable.convert._Builder`)."""

    def __init__(self, builder: Any):
        self.b = builder

    def build(self) -> None:
        from .convert import HEADROOM, _log2_ceil, allocate

        net = self.b.model.post_net
        for name, mod in _conv_modules(net).items():
            plan = self.b.plan(name, mod)
            if name == "post.conv2":  # fold the residual's 0.3 into the last convolution
                plan.weight = plan.weight * net.scale
                plan.bias = plan.bias * net.scale
                if plan.stats.out_max is not None:
                    plan.stats.out_max = plan.stats.out_max * net.scale
            plan.split = 1
            allocate(plan)
            self.b.emit_conv(plan, None, 1 << 24)
        for b in BLOCKS:
            se = getattr(net.unet, b).conv[3]
            p = f"post.unet.{b}.se"
            for j in (0, 2):
                lin = se.fc[j]
                w = lin.weight.detach().double()
                self.b.emit_linear(f"{p}.fc{j}", w, torch.zeros(w.shape[0], dtype=torch.float64))
            st = self.b.stats.get(se.fc[2])
            out_max = float(st.out_max.max()) if st is not None and st.out_max is not None else 8.0
            e = _log2_ceil(out_max * HEADROOM)
            bits = SIGMOID_INPUT_BITS
            self.b.emit_lut(f"{p}.sigmoid", "sigmoid", bits - e, (1 << bits) - 1, SIGMOID_FRAC, 1 << SIGMOID_FRAC)


def dequantized_post_net(pm: PortableMSINN) -> dict[str, torch.Tensor]:
    """Float tensors of the post-net (its last convolution carries the folded 0.3: the float twin uses scale 1)."""
    sd: dict[str, torch.Tensor] = {}
    keys = {
        "post.conv1": "post_net.conv1",
        "post.conv2": "post_net.conv2",
        "post.unet.up3": "post_net.unet.up3.0",
        "post.unet.up2": "post_net.unet.up2.0",
    }
    for b in BLOCKS:
        keys[f"post.unet.{b}.c0"] = f"post_net.unet.{b}.conv.0"
        keys[f"post.unet.{b}.c2"] = f"post_net.unet.{b}.conv.2"
        keys[f"post.unet.{b}.up"] = f"post_net.unet.{b}.up_dim"
    for i in range(REFINE):
        for c in ("conv1", "conv2"):
            keys[f"post.unet.refine{i}.{c}"] = f"post_net.unet.context_refine.{i}.{c}"
    for name, prefix in keys.items():
        w, b = pm.layers[name].dequantized()
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"] = w, b
    for b in BLOCKS:
        for j in (0, 2):
            w, _ = pm.layers[f"post.unet.{b}.se.fc{j}"].dequantized()
            sd[f"post_net.unet.{b}.conv.3.fc.{j}.weight"] = w.float()
    return sd


def check_post_bounds(pm: PortableMSINN) -> None:
    """The post-net's own steps: its layers are checked with the rest; here the wiring."""
    for b in BLOCKS:
        p = f"post.unet.{b}.se"
        spec = pm.spec["layers"][f"{p}.sigmoid"]
        if spec["frac_out"] != SIGMOID_FRAC or pm.layers[f"{p}.sigmoid"].out_bound > 1 << SIGMOID_FRAC:
            raise BoundError(f"{p}.sigmoid: values beyond 1")
