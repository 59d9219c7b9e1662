"""A portable model's identity: the SHA-256 that files name it by."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping

import torch

from ..config import MSINNConfig
from ..hashing import hash_tensors
from .formats import PROFILE


def portable_hash(
    config: MSINNConfig, spec: Mapping, tensors: Mapping[str, torch.Tensor], float_tensors: Mapping[str, torch.Tensor]
) -> str:
    """SHA-256 of everything that defines the model: profile, config, formats, every tensor."""
    h = hashlib.sha256()
    h.update(PROFILE.encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(spec, sort_keys=True).encode())
    hash_tensors(h, tensors)
    hash_tensors(h, float_tensors)
    return h.hexdigest()
