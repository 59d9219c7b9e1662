"""Both coding profiles implement msinn.interface.CodecModel, and each carries its own name and weights hash."""

from __future__ import annotations

import copy
import json

import torch
from conftest import BUNDLED, REPO

import msinn
from msinn.interface import CodecModel
from msinn.model import weights_hash


def _registered(name: str) -> str:
    entries = json.loads((REPO / "msinn" / "weights" / "registry.json").read_text())["models"]
    return next(e["sha256"] for e in entries if e["name"] == name)


def test_both_profiles_are_codec_models_with_a_name_and_a_weights_hash(tiny_model, tiny_float_checkpoint, model):
    loaded = msinn.load(tiny_float_checkpoint)
    for m, profile in ((tiny_model, "float32"), (loaded, "float32"), (model, "portable-1")):
        assert isinstance(m, CodecModel) and m.profile == profile
        assert len(m.weights_sha256) == 64 and int(m.weights_sha256, 16) >= 0
    assert tiny_model.model_name is None  # built in code: no loader named it
    assert loaded.model_name == "tiny-float.pt" and model.model_name == BUNDLED
    assert tiny_model.weights_sha256 == weights_hash(tiny_model.state_dict()) == loaded.weights_sha256
    assert model.weights_sha256 == _registered(BUNDLED)
    assert tiny_model.float_model is tiny_model and model.float_model.profile == "float32"
    assert not isinstance(object(), CodecModel)


def test_a_float_models_hash_follows_its_weights(tiny_model):
    m = copy.deepcopy(tiny_model)
    start = m.weights_sha256
    assert m.weights_sha256 == start  # read twice, unchanged weights: the same value
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    m.train()
    out = m(torch.rand(1, 3, 64, 64), 1)
    (out["x_hat"].square().mean() - sum(torch.log2(v).sum() for v in out["likelihoods"].values())).backward()
    opt.step()
    m.eval()
    trained = m.weights_sha256  # a training step changed the weights: never the starting point's identity
    assert trained != start and trained == weights_hash(m.state_dict())
    m.load_state_dict(tiny_model.state_dict())
    assert m.weights_sha256 == start
    with torch.no_grad():
        m.gain.add_(1.0)  # any in-place change counts
    assert m.weights_sha256 != start


def test_a_loaders_recorded_hash_holds_until_the_weights_change(tiny_float_checkpoint):
    m = msinn.load(tiny_float_checkpoint)
    m.weights_sha256 = "recorded"  # what a loader records: the file's tensors as read
    assert m.weights_sha256 == "recorded"
    with torch.no_grad():
        m.inv_gain.mul_(1.0)  # the same values, but a write: hashed again, from the weights
    assert m.weights_sha256 == weights_hash(m.state_dict())
