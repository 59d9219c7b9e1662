"""MS-INN learned variable-rate image codec.

Heavy modules (torch, CompressAI) load on first use of a name that needs
them, so light users (``msinn.images``, ``msinn.container``, ``msinn info``)
start fast.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from .version import __version__

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .checkpoint import CheckpointError
    from .config import MSINNConfig
    from .interface import CodecModel
    from .model import MSINN

__all__ = ["MSINN", "MSINNConfig", "CheckpointError", "load", "save_checkpoint", "make_deterministic", "__version__"]

_LAZY = {
    "MSINN": ".model",
    "MSINNConfig": ".config",
    "CheckpointError": ".checkpoint",
    "save_checkpoint": ".checkpoint",
    "load_file": ".checkpoint",
    "make_deterministic": ".determinism",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'msinn' has no attribute {name!r}")


def load(name_or_path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> CodecModel:
    """A ready model (tables built, eval mode) from a registry name or a checkpoint path.

    Reads this project's checkpoints and the reference implementation's
    published checkpoints unchanged. With no argument, the bundled default.
    """
    from .checkpoint import CheckpointError, load_file
    from .registry import default_model_name, lookup

    if name_or_path is None:
        name_or_path = default_model_name()
        if name_or_path is None:
            raise CheckpointError("no bundled weights are registered in this installation")
    entry = lookup(str(name_or_path))
    if entry is not None:
        if not entry.bundled:
            raise CheckpointError(
                f"model {entry.name} is registered but its weights are no longer bundled with this "
                f"installation; {entry.retrieve or 'get its checkpoint file'}, then pass --model PATH "
                f"(the weights are checked against the registered hash)"
            )
        model = load_file(entry.path, device)
        if model.weights_sha256 != entry.sha256:
            raise CheckpointError(f"bundled weights {entry.name} do not match their registered hash")
        model.model_name = entry.name
        return model
    if "://" in str(name_or_path):  # a checkpoint in object storage
        import fsspec

        try:
            with fsspec.open(str(name_or_path), "rb") as f:
                data = f.read()
        except Exception as exc:  # unknown protocol, no credentials, network: all say so the same way
            raise CheckpointError(f"{name_or_path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from exc
        model = load_file(data, device)
        return _named(model, str(name_or_path).rstrip("/").rsplit("/", 1)[-1])
    if not os.path.exists(name_or_path):
        raise FileNotFoundError(f"{name_or_path}: neither a registered model name nor an existing file")
    return _named(load_file(name_or_path, device), os.path.basename(str(name_or_path)))


def _named(model: CodecModel, file_name: str) -> CodecModel:
    """Name a model loaded from a file: its registered name when the weights are registered ones."""
    from .registry import lookup_hash

    known = lookup_hash(model.weights_sha256)
    model.model_name = known.name if known is not None else file_name
    return model
