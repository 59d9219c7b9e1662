"""Shared fixtures: paths into ../shared and models built from the conformance recipe."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
VECTORS = CONFORMANCE / "vectors"
KODAK = SHARED / "datasets" / "kodak"


def _recipe():
    spec = importlib.util.spec_from_file_location("msinn_conformance_recipe", CONFORMANCE / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def vector_index() -> dict:
    return json.loads((VECTORS / "index.json").read_text())


@pytest.fixture(scope="session")
def recipe_state_dicts(vector_index) -> dict[int, dict[str, torch.Tensor]]:
    recipe = _recipe()
    return {
        int(name.removeprefix("anchor")): recipe.recipe_state_dict(schema["state_dict"])
        for name, schema in vector_index["schemas"].items()
    }


@pytest.fixture(scope="session")
def recipe_models(recipe_state_dicts):
    """Released-configuration models with the recipe weights, as the README describes."""
    from msinn import MSINN

    models = {}
    for anchors, sd in recipe_state_dicts.items():
        m = MSINN(anchor_num=anchors)
        m.load_state_dict(sd, strict=False)
        m.update()
        m.eval()
        models[anchors] = m
    return models


@pytest.fixture(scope="session")
def tiny_model():
    """A small randomly initialised model for fast behavioural tests."""
    from msinn import MSINN, MSINNConfig
    from msinn.train import init_gains

    torch.manual_seed(0)
    m = MSINN(MSINNConfig(N=16, M=16, depths=(1, 1, 1, 1), context_channels=16, anchor_num=4, post_process=False))
    m.train()
    with torch.no_grad():
        m(torch.rand(2, 3, 64, 64), [0, 3])  # data-dependent act-norm initialisation
    init_gains(m, 1.0, 8.0)
    m.update()
    m.eval()
    return m
