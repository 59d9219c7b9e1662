"""Loading published-format checkpoints and this project's own files."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import msinn
from msinn.checkpoint import CheckpointError, infer_config, read_checkpoint

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "conformance" / "vectors"


def _vector(tag: str) -> dict:
    return next(v for v in json.loads((VECTORS / "index.json").read_text())["vectors"] if v["tag"] == tag)


def _x(v) -> torch.Tensor:
    return torch.from_numpy(np.load(VECTORS / v["input"])).permute(2, 0, 1).float().div(255)[None]


@pytest.mark.parametrize("wrapper", ["state_dict", "network", "model_state_dict", None])
def test_reference_checkpoint_loads_unchanged(tmp_path, recipe_state_dicts, wrapper):
    """A file as the reference distributes it: wrapped, DataParallel 'module.' prefixes."""
    sd = {f"module.{k}": v for k, v in recipe_state_dicts[12].items()}
    obj = sd if wrapper is None else {wrapper: sd, "epoch": 749}
    path = tmp_path / "ref.pth.tar"
    torch.save(obj, path)
    model = msinn.load(path)
    assert model.config.anchor_num == 12
    assert model.config.depths == (4, 4, 4, 4) and model.config.N == 128 and model.config.M == 192
    assert model.config.post_process and model.config.lrp and model.config.act_norm
    v = _vector("a12_kodim23_128x192_qp9.25")
    data, _ = model.compress_raw(_x(v), v["qp"])
    assert data == (VECTORS / v["bitstream"]).read_bytes()


def test_reference_checkpoint_with_entropy_buffers(tmp_path, recipe_models):
    """Published checkpoints carry the entropy coder's tables: they must not break loading."""
    sd = recipe_models[8].state_dict()
    assert sd["gaussian_conditional._quantized_cdf"].numel() > 0
    torch.save({"state_dict": sd}, tmp_path / "a8.pth")
    model = msinn.load(tmp_path / "a8.pth")
    v = _vector("a8_kodim23_128x192_qp2.5")
    data, _ = model.compress_raw(_x(v), v["qp"])
    assert data == (VECTORS / v["bitstream"]).read_bytes()


def test_config_inferred_from_small_model(tmp_path):
    from msinn import MSINN, MSINNConfig

    cfg = MSINNConfig(N=16, M=24, depths=(1, 2, 1, 3), context_channels=8, anchor_num=5, post_process=False, lrp=False)
    sd = MSINN(cfg).state_dict()
    assert infer_config(sd) == cfg


def test_own_checkpoint_round_trip(tmp_path, tiny_model):
    path = tmp_path / "own.pt"
    msinn.save_checkpoint(path, tiny_model, meta={"note": "test"})
    cfg, sd, meta = read_checkpoint(path)
    assert cfg == tiny_model.config and meta == {"note": "test"}
    model = msinn.load(path)
    x = torch.rand(1, 3, 64, 128)
    assert model.compress_raw(x, 1.5) == tiny_model.compress_raw(x, 1.5)
    assert model.weights_sha256 == msinn.load(path).weights_sha256


def test_incompatible_checkpoint_names_keys_and_shapes(tmp_path, recipe_state_dicts):
    sd = dict(recipe_state_dicts[8])
    del sd["cc_transforms.0.0.bias"]
    sd["bogus.weight"] = torch.zeros(3)
    sd["cc_transforms.1.2.weight"] = torch.zeros(5, 5, 3, 3)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        msinn.load(tmp_path / "bad.pth")
    msg = str(err.value)
    assert "cc_transforms.0.0.bias" in msg and "bogus.weight" in msg and "cc_transforms.1.2.weight" in msg


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="junk.pt"):
        msinn.load(tmp_path / "junk.pt")
    torch.save({"hello": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing"):
        msinn.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        msinn.load(tmp_path / "absent.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("executed",))


def test_pickled_code_is_refused(tmp_path):
    """weights_only=True: a checkpoint carrying arbitrary objects is rejected, not executed."""
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(CheckpointError):
        msinn.load(tmp_path / "evil.pt")


def test_a_checkpoints_config_is_never_trusted_before_its_tensors(tmp_path, tiny_model):
    """{"N": 1000000} would allocate terabytes: refused by comparing with the tensors first."""
    msinn.save_checkpoint(tmp_path / "ok.pt", tiny_model)
    obj = torch.load(tmp_path / "ok.pt", weights_only=True)
    for config, why in (({**obj["config"], "N": 1_000_000}, "disagrees with the tensors"),
                        ("N=16", "lacks a config"), (None, "lacks a config"),
                        ({**obj["config"], "depths": [1, 1]}, "invalid configuration")):
        bad = dict(obj, config=config)
        if config is None:
            bad.pop("config")
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(CheckpointError, match=why):
            msinn.load(str(tmp_path / "bad.pt"))


@pytest.mark.parametrize("uri", ["ftp://127.0.0.1:9/m.pt", "foo://x/m.pt", "memory://nothing/here.pt"])
def test_unreadable_checkpoint_uris_are_checkpoint_errors(uri):
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        msinn.load(uri)
