"""Converting the post-processing U-Net (released configuration): its layers added to a conversion."""

from __future__ import annotations

from typing import Any

import torch

from .allocation import HEADROOM, allocate, log2_ceil
from .formats import SIGMOID_FRAC
from .postnet import BLOCKS, CONVS, REFINE

SIGMOID_INPUT_BITS = 16


def _float_modules(net: Any) -> dict[str, Any]:
    """Integer layer name -> float module, in the order they run."""
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
    assert set(mods) == set(CONVS)
    return mods


class PostNetBuilder:
    """Adds the post-net's layers to a conversion (:class:`msinn.portable.convert.Builder`)."""

    def __init__(self, builder: Any):
        self.b = builder

    def build(self) -> None:
        net = self.b.model.post_net
        for name, mod in _float_modules(net).items():
            alloc = self.b.allocation(name, mod)
            if name == "post.conv2":  # fold the residual's 0.3 into the last convolution
                alloc.weight = alloc.weight * net.scale
                alloc.bias = alloc.bias * net.scale
                if alloc.stats.out_max is not None:
                    alloc.stats.out_max = alloc.stats.out_max * net.scale
            alloc.split = 1
            allocate(alloc)
            self.b.emit_conv(alloc, None, 1 << 24)
        for b in BLOCKS:
            se = getattr(net.unet, b).conv[3]
            p = f"post.unet.{b}.se"
            for j in (0, 2):
                lin = se.fc[j]
                w = lin.weight.detach().double()
                self.b.emit_linear(f"{p}.fc{j}", w, torch.zeros(w.shape[0], dtype=torch.float64))
            st = self.b.stats.get(se.fc[2])
            out_max = float(st.out_max.max()) if st is not None and st.out_max is not None else 8.0
            e = log2_ceil(out_max * HEADROOM)
            bits = SIGMOID_INPUT_BITS
            self.b.emit_lut(f"{p}.sigmoid", "sigmoid", bits - e, (1 << bits) - 1, SIGMOID_FRAC, 1 << SIGMOID_FRAC)
