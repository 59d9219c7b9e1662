"""A portable model's identity: the SHA-256 that files name it by."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

from ..config import MSINNConfig
from .formats import PROFILE


def portable_hash(
    config: MSINNConfig, spec: Mapping, tensors: Mapping[str, torch.Tensor], float_tensors: Mapping[str, torch.Tensor]
) -> str:
    """SHA-256 of everything that defines the model: profile, config, formats, every tensor."""
    h = hashlib.sha256()
    h.update(PROFILE.encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(spec, sort_keys=True).encode())
    for group in (tensors, float_tensors):
        for k in sorted(group):
            t = group[k].detach().cpu().contiguous()
            h.update(k.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
