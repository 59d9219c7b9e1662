"""The post-processing U-Net (released configuration) on integer codes.

Every tensor between layers stays in the main format (float64 codes); each
convolution rescales its input into its own format, runs exactly (one or two
float32 passes) and returns to the main format. Pooling, pixel shuffle, ReLU,
LeakyReLU (41/4096), concatenation and the squeeze-excite's mean are exact on
integers; the squeeze-excite's sigmoid is a table. Written against the
decoder's arithmetic (:mod:`msinn.portable.ops`), so the proof follows it too.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch.nn.functional as F

from .formats import MAIN_BOUND, MAIN_FRAC, SIGMOID_FRAC

BLOCKS = ("conv1", "conv2", "conv3", "up_conv3", "up_conv2")
REFINE = 4
CONVS = (
    ("post.conv1",)
    + tuple(f"post.unet.{b}.{c}" for b in BLOCKS for c in ("c0", "c2", "up"))
    + tuple(f"post.unet.refine{i}.conv{j}" for i in range(REFINE) for j in (1, 2))
    + ("post.unet.up3", "post.unet.up2", "post.conv2")
)


class _Net(Protocol):
    layers: dict[str, Any]

    def run(self, o: Any, name: str, x: Any) -> Any: ...


def _max_pool(x: Any) -> Any:
    return F.max_pool2d(x, 2)


def _shuffle(x: Any) -> Any:
    return F.pixel_shuffle(x, 2)


def _conv(net: _Net, o: Any, name: str, x: Any) -> Any:
    layer = net.layers[name]
    return o.to_main(net.run(o, name, o.from_main(x, name, layer)), layer.frac_out)


def _se(net: _Net, o: Any, p: str, x: Any) -> Any:
    """Squeeze-excite: x times sigmoid(fc2(relu(fc0(mean of x))))."""
    h = o.relu(net.run(o, f"{p}.fc0", o.spatial_mean(x)))
    z = net.run(o, f"{p}.fc2", h)
    lut = net.layers[f"{p}.sigmoid"]
    s = net.run(o, f"{p}.sigmoid", o.to_f32(o.rescale(z, MAIN_FRAC, lut.frac_in, lut.in_bound)))
    return o.rescale(o.mul(x, o.to_f64(s)), MAIN_FRAC + SIGMOID_FRAC, MAIN_FRAC, MAIN_BOUND)


def _rcb(net: _Net, o: Any, p: str, x: Any) -> Any:
    a = o.leaky(_conv(net, o, f"{p}.c0", x))
    a = _se(net, o, f"{p}.se", _conv(net, o, f"{p}.c2", a))
    return o.clamp(o.add(_conv(net, o, f"{p}.up", x), a), MAIN_BOUND)


def post_process(net: _Net, o: Any, x: Any) -> Any:
    """x + 0.3 * net(x) on main-format codes (the 0.3 is folded into the last convolution)."""
    u = "post.unet"
    h = _conv(net, o, "post.conv1", x)
    x1 = _rcb(net, o, f"{u}.conv1", h)
    x2 = _rcb(net, o, f"{u}.conv2", o.rearrange(_max_pool, x1))
    x3 = _rcb(net, o, f"{u}.conv3", o.rearrange(_max_pool, x2))
    for i in range(REFINE):
        r = _conv(net, o, f"{u}.refine{i}.conv1", o.relu(x3))
        x3 = o.clamp(o.add(x3, _conv(net, o, f"{u}.refine{i}.conv2", o.relu(r))), MAIN_BOUND)
    d3 = _rcb(net, o, f"{u}.up_conv3", o.cat(x2, o.rearrange(_shuffle, _conv(net, o, f"{u}.up3", x3))))
    d2 = _rcb(net, o, f"{u}.up_conv2", o.cat(x1, o.rearrange(_shuffle, _conv(net, o, f"{u}.up2", d3))))
    out = _conv(net, o, "post.conv2", d2)
    return o.clamp(o.add(x, out), MAIN_BOUND)
