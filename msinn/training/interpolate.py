"""Weight interpolation between a fine-tuned model and the model it started from.

Fine-tuning the default on photos plus graphics made graphics cheaper and
photos slightly dearer; the straight line between the two sets of weights
(Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR 2022) keeps
most of one gain without the other loss, because both ends lie in one basin.
It costs no training, so it is a lever this CPU can afford: pick the mix with
the gate in docs/training.md.
"""

from __future__ import annotations

import os

import torch

from ..checkpoint import FORMAT, FORMAT_VERSION, build_model, read_checkpoint, save_atomic, stored_weights_hash
from ..model import is_derived_key
from .loop import GAIN_KEYS


def interpolate_state(
    tuned: dict[str, torch.Tensor], base: dict[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """``alpha * tuned + (1 - alpha) * base`` tensor by tensor, in float32, stored as ``tuned`` stores it.

    The per-anchor tables may have more rows in ``tuned`` (anchors added in
    fine-tuning): the base's rows are mixed, the extra rows are the tuned
    model's. Integer tensors (flags) come from ``tuned``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    tuned = {k: v for k, v in tuned.items() if not is_derived_key(k)}
    base = {k: v for k, v in base.items() if not is_derived_key(k)}
    if tuned.keys() != base.keys():
        diff = sorted(tuned.keys() ^ base.keys())
        raise ValueError(f"the two models have different tensors: {diff[:8]}{' ...' if len(diff) > 8 else ''}")
    out = {}
    for k, t in tuned.items():
        b = base[k]
        if not t.is_floating_point():
            out[k] = t
            continue
        tf, bf = t.float(), b.float()
        if t.shape == b.shape:
            mixed = alpha * tf + (1.0 - alpha) * bf
        elif k in GAIN_KEYS and t.dim() and t.shape[1:] == b.shape[1:] and b.shape[0] < t.shape[0]:
            mixed = torch.cat((alpha * tf[: b.shape[0]] + (1.0 - alpha) * bf, tf[b.shape[0]:]))
        else:
            raise ValueError(f"{k}: shapes {tuple(t.shape)} and {tuple(b.shape)} cannot be mixed")
        out[k] = mixed.to(t.dtype)
    return out


def interpolate_checkpoints(
    tuned: str | os.PathLike, base: str | os.PathLike, alpha: float, dest: str | os.PathLike
) -> str:
    """Write the mixed model as a float checkpoint with the tuned model's configuration; returns its hash."""
    cfg_t, sd_t, meta = read_checkpoint(tuned)
    cfg_b, sd_b, _ = read_checkpoint(base)
    same = {k: v for k, v in cfg_t.to_dict().items() if k != "anchor_num"}
    if same != {k: v for k, v in cfg_b.to_dict().items() if k != "anchor_num"}:
        raise ValueError(f"{tuned} and {base} are different architectures")
    if cfg_b.anchor_num > cfg_t.anchor_num:
        raise ValueError(f"{base} has more anchors ({cfg_b.anchor_num}) than {tuned} ({cfg_t.anchor_num})")
    sd = interpolate_state(sd_t, sd_b, alpha)
    model = build_model(cfg_t, sd)
    m = dict(meta)
    m["interpolation"] = {
        "alpha": alpha,
        "tuned": os.path.basename(os.fspath(tuned)),
        "tuned_sha256": stored_weights_hash(sd_t),
        "base": os.path.basename(os.fspath(base)),
        "base_sha256": stored_weights_hash(sd_b),
    }
    obj = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg_t.to_dict(), "state_dict": sd, "meta": m}
    save_atomic(obj, dest)
    return model.weights_sha256
