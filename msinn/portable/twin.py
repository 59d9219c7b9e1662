"""The float twin of a portable model: a float :class:`MSINN` whose weights are the integer weights dequantised.

The encoder's analysis transform and its rate estimates run on it (their
output is quantised and sent, so they need not be exact), and so can anything
that needs gradients through the portable model, such as encoder-side latent
refinement: :func:`float_twin` builds one, ``PortableMSINN.float_model`` holds
the model's own.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from ..config import LATENT_CHANNELS, MSINNConfig
from ..model import MSINN
from .exact import Layer
from .postnet import BLOCKS, REFINE

# integer post-net layer -> float module
_POST_MODULES = {
    "post.conv1": "post_net.conv1",
    "post.conv2": "post_net.conv2",
    "post.unet.up3": "post_net.unet.up3.0",
    "post.unet.up2": "post_net.unet.up2.0",
    **{f"post.unet.{b}.{c}": f"post_net.unet.{b}.{m}" for b in BLOCKS
       for c, m in (("c0", "conv.0"), ("c2", "conv.2"), ("up", "up_dim"))},
    **{f"post.unet.refine{i}.{c}": f"post_net.unet.context_refine.{i}.{c}" for i in range(REFINE)
       for c in ("conv1", "conv2")},
}


def dequantized_state_dict(
    config: MSINNConfig, spec: Mapping, layers: Mapping[str, Layer], float_tensors: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The float state dict a portable model stands for (integer weights scaled back, kept float tensors)."""
    sd: dict[str, torch.Tensor] = dict(float_tensors)

    def put(prefix: str, *names: str) -> None:
        ws, bs = zip(*(layers[n].dequantized() for n in names))
        sd[f"{prefix}.weight"] = torch.cat(ws).float()
        sd[f"{prefix}.bias"] = torch.cat(bs).float()

    for i in range(len(LATENT_CHANNELS)):
        put(f"entropy_parameters.{i}.0", f"ep{i}.conv0")
        put(f"entropy_parameters.{i}.2", f"ep{i}.conv1")
        put(f"entropy_parameters.{i}.4", f"ep{i}.scale", f"ep{i}.mean")
        for prefix, module in ((f"cc{i}", f"cc_transforms.{i - 1}"), (f"sc{i}", f"sc_transforms.{i}"),
                               (f"lrp{i}", f"lrp_transforms.{i}")):
            for j in range(spec["chains"].get(prefix, 0)):
                put(f"{module}.{2 * j}", f"{prefix}.conv{j}")
    for s in range(4):
        for u in range(config.depths[s]):
            n, m = f"g{s}.{u}", f"g_a{s}.{u}.block"
            put(f"{m}.0.conv1", f"{n}.conv1")
            put(f"{m}.0.conv2", f"{n}.conv2")
            if f"{n}.skip" in layers:
                put(f"{m}.0.skip", f"{n}.skip")
            if config.flow_coupling == "affine":
                put(f"{m}.1.conv", f"{n}.scale", f"{n}.shift")
            else:
                put(f"{m}.1.conv", f"{n}.shift")
    if config.post_process:
        for name, prefix in _POST_MODULES.items():
            put(prefix, name)
        for b in BLOCKS:
            for j in (0, 2):
                w, _ = layers[f"post.unet.{b}.se.fc{j}"].dequantized()
                sd[f"post_net.unet.{b}.conv.3.fc.{j}.weight"] = w.float()
    return sd


def float_twin(
    config: MSINNConfig,
    spec: Mapping,
    layers: Mapping[str, Layer],
    float_tensors: Mapping[str, torch.Tensor],
    scale_table: torch.Tensor,
) -> MSINN:
    """A float MS-INN in eval mode whose weights are the portable model's, dequantised."""
    model = MSINN(config)
    model.load_state_dict(dequantized_state_dict(config, spec, layers, float_tensors), strict=True)
    if config.post_process:
        model.post_net.scale = 1.0  # the integer post-net's last convolution carries the 0.3
    model.update(scale_table.double().float())
    model.eval()
    return model
