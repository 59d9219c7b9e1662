"""MS-INN learned variable-rate image codec."""

from __future__ import annotations

import os

import torch

from .checkpoint import CheckpointError, load_file, save_checkpoint
from .config import MSINNConfig
from .determinism import make_deterministic
from .model import MSINN
from .registry import default_model_name, lookup
from .version import __version__

__all__ = ["MSINN", "MSINNConfig", "CheckpointError", "load", "save_checkpoint", "make_deterministic", "__version__"]


def load(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> MSINN:
    """A ready model (tables built, eval mode) from a registry name or a checkpoint path.

    Reads this project's checkpoints and the reference implementation's
    published checkpoints unchanged. With no argument, the bundled default.
    """
    if name_or_path is None:
        name_or_path = default_model_name()
        if name_or_path is None:
            raise CheckpointError("no bundled weights are registered in this installation")
    entry = lookup(str(name_or_path))
    if entry is not None:
        model = load_file(entry.path, device)
        if model.weights_sha256 != entry.sha256:
            raise CheckpointError(f"bundled weights {entry.name} do not match their registered hash")
        model.model_name = entry.name
        return model
    if not os.path.exists(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: neither a registered model name nor an existing file")
    model = load_file(name_or_path, device)
    model.model_name = os.path.basename(str(name_or_path))
    return model
