"""Append-only registry of bundled model names.

A name, once published, always means the same weights: bitstreams record the
name and a hash prefix of the weights, so an old file never decodes with a
different model. Add new entries at the end; never edit or reuse one, except
to keep the package small: an old snapshot's file may move out of the package
(the entry stays, with ``retrieve`` saying where its weights can still be had),
and a file may be repacked (``NAME.pt`` to ``NAME.pt.xz``, see ``packing``):
``sha256`` is the hash of the tensors, which neither changes.

A ``specialist`` entry (weights fine-tuned for one kind of image, used beside
the default with ``--also-model``) is never the default, however late it was
added.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parent / "weights"
REGISTRY_FILE = WEIGHTS_DIR / "registry.json"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    file: str
    sha256: str  # weights_hash() of the model's tensors
    description: str = ""
    retrieve: str = ""  # for weights no longer in the package: how to get them
    specialist: str = ""  # what images these weights are for, when they compete beside the default (never it)

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    @property
    def bundled(self) -> bool:
        return self.path.is_file()


def registered_models() -> list[RegisteredModel]:
    if not REGISTRY_FILE.exists():
        return []
    entries = json.loads(REGISTRY_FILE.read_text())["models"]
    return [RegisteredModel(**e) for e in entries]


def default_model_name() -> str | None:
    """The newest registered model that is not a specialist is the default."""
    models = [m for m in registered_models() if not m.specialist]
    return models[-1].name if models else None


def lookup(name: str) -> RegisteredModel | None:
    for m in registered_models():
        if m.name == name:
            return m
    return None


def lookup_hash(sha256: str) -> RegisteredModel | None:
    """The registered model with these exact weights, so a downloaded copy keeps its name."""
    for m in registered_models():
        if m.sha256 == sha256:
            return m
    return None


def float_source_name(name: str) -> str | None:
    """``NAME`` for a portable model named ``NAME-pN`` (converted from the float model ``NAME``), else None."""
    base, sep, profile = name.rpartition("-p")
    return base if sep and base and profile.isdigit() else None


def default_float_model() -> RegisteredModel | None:
    """The float model the default was converted from: training continues from it."""
    name = default_model_name()
    if name is None:
        return None
    return lookup(float_source_name(name) or name)
