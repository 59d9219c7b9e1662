"""The model registry: bundled weights match their names; retired files fail clearly and decode again."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import msinn
from msinn import registry
from msinn.checkpoint import CheckpointError
from msinn.cli import main


def test_every_bundled_file_matches_its_registered_hash():
    models = registry.registered_models()
    assert models, "the package must register at least one model"
    names = [m.name for m in models]
    assert len(names) == len(set(names)), "registry names must be unique"
    default = registry.lookup(registry.default_model_name())
    assert default is not None and default.bundled, "the default model must ship with the package"
    for m in models:
        if not m.bundled:
            assert m.retrieve, f"{m.name} is not bundled and does not say where to get it"
            continue
        assert msinn.load(m.name).model_name == m.name  # load checks the registered hash


def test_every_portable_name_ships_and_the_folder_stays_within_its_cap():
    """Files people archived with a portable default must decode offline, so those weights never leave;
    a superseded float model may (its entry keeps a ``retrieve`` line)."""
    models = registry.registered_models()
    for m in models:
        if registry.float_source_name(m.name):
            assert m.bundled, f"{m.name} is a portable model: files coded with it must decode without a download"
    source = registry.default_float_model()
    assert source is not None and source.bundled, "the default's float model ships: training continues from it"
    assert source.name != registry.default_model_name() and registry.float_source_name(source.name) is None
    files = [p for p in registry.WEIGHTS_DIR.iterdir() if p.name not in ("registry.json", "README.md")]
    assert all(p.name.endswith((".pt", ".pt.xz")) for p in files), "only model files sit beside the registry"
    assert sum(p.stat().st_size for p in files) <= 15 * 1000 * 1000


def test_a_specialist_is_never_the_default(tmp_path, monkeypatch):
    """Weights for one kind of image compete beside the default (--also-model); appended last, they must not
    become the default that every job without --model uses."""
    shipped = registry.registered_models()
    specialists = [m for m in shipped if m.specialist]
    assert specialists and all(m.bundled for m in specialists)
    assert not registry.lookup(registry.default_model_name()).specialist
    entries = json.loads(registry.REGISTRY_FILE.read_text())["models"]
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "registry.json").write_text(json.dumps({"models": entries + [
        {"name": "later-specialist", "file": "x.pt", "sha256": "0" * 64, "specialist": "text"}]}))
    monkeypatch.setattr(registry, "REGISTRY_FILE", weights / "registry.json")
    assert registry.default_model_name() == [m.name for m in shipped if not m.specialist][-1]


@pytest.fixture()
def retired_registry(tmp_path, monkeypatch, tiny_checkpoint):
    """A registry whose only entry names the tiny model's weights, which are not in the package."""
    weights = tmp_path / "weights"
    weights.mkdir()
    sha = msinn.load(tiny_checkpoint).weights_sha256
    entry = {
        "name": "tiny-retired",
        "file": "tiny-retired.pt",
        "sha256": sha,
        "description": "test entry",
        "retrieve": "copy it from the release page",
    }
    (weights / "registry.json").write_text(json.dumps({"models": [entry]}))
    monkeypatch.setattr(registry, "WEIGHTS_DIR", weights)
    monkeypatch.setattr(registry, "REGISTRY_FILE", weights / "registry.json")
    return entry


def test_retired_weights_give_a_clear_error(retired_registry):
    with pytest.raises(CheckpointError, match="tiny-retired.*no longer bundled.*release page"):
        msinn.load("tiny-retired")


def test_a_downloaded_copy_keeps_its_registered_name(retired_registry, tiny_checkpoint, tmp_path, capsys):
    assert msinn.load(tiny_checkpoint).model_name == "tiny-retired"
    img = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    Image.fromarray(img).save(tmp_path / "in.png")
    stream = tmp_path / "x.msinn"
    assert main(["encode", str(tmp_path / "in.png"), str(stream), "--qp", "2", "--model", tiny_checkpoint]) == 0
    capsys.readouterr()
    # the file names the registered model; without its weights the decoder says how to get them
    assert main(["decode", str(stream), str(tmp_path / "o.png")]) == 1
    assert "release page" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()
    assert main(["decode", str(stream), str(tmp_path / "o.png"), "--model", tiny_checkpoint]) == 0
    assert Image.open(tmp_path / "o.png").size == (56, 40)
