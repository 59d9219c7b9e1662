"""The exactness proof refuses every hostile model file, and accepts only changes it proves harmless.

The proof runs the decoder's own code on bounds (msinn/portable/proof.py), so
each layer is checked against the clamp its real producer applies. The
tamper loop changes every declared bound and format of the bundled model one
at a time and proves the result directly (one loaded model, one rebuilt
layer per case); a sample of tampered files goes through the loader too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import msinn
from msinn.checkpoint import CheckpointError, load_portable
from msinn.portable import kernels
from msinn.portable.decoder import IntegerDecoder
from msinn.portable.exact import BoundError, build_layer
from msinn.portable.proof import MAIN_SOURCE, check_tables, prove

FIELDS = ("in_bound", "out_bound", "frac_in", "frac_out")


@pytest.fixture(scope="module")
def state(model) -> dict:
    return model.state()


@pytest.fixture(scope="module")
def wiring(model):
    return prove(model.decoder)


def _file(state: dict, layer: str | None = None, **entry) -> dict:
    """A model file's contents with one layer's spec entry changed (tensors shared, spec copied)."""
    obj = dict(state)
    obj["tensors"] = dict(state["tensors"])
    obj["spec"] = json.loads(json.dumps(state["spec"]))
    if layer is not None:
        obj["spec"]["layers"][layer].update(entry)
    return obj


def _tampered(value: int, field: str) -> int:
    """The change tried for each field: input bounds shrink (the reported hole), the rest grow."""
    return 15 if field == "in_bound" else value * 4 + 3 if field == "out_bound" else value + 1


@pytest.mark.parametrize("layer", ["g0.0.scale", "g1.0.scale", "lrp1.conv1", "sc3.conv2"])
def test_a_shrunk_input_bound_is_refused_at_load(state, layer):
    """The review's files: the coupling scales were accepted before, their input being clamped
    only to the shift's bound (65535), and a partial sum could reach 3.45e9."""
    with pytest.raises(CheckpointError, match=f"exactness proof.*{layer}.*beyond the layer's input bound"):
        load_portable("tampered", _file(state, layer, in_bound=15, split=0))


def test_the_proof_checks_each_layer_against_its_real_producer(wiring, model):
    """Every layer is reached by the decoder's code, and the coupling scale is fed by the clamped sum."""
    assert set(wiring) == set(model.layers)
    scale = wiring["g0.0.scale"]
    assert scale.source != MAIN_SOURCE and scale.bound == model.layers["g0.0.shift"].in_bound
    assert wiring["sc3.conv0"].source == MAIN_SOURCE and wiring["sc3.conv1"].source == "sc3.act0"


def test_every_declared_bound_and_format_changed_alone_is_refused_or_proved(model, wiring):
    """940 changes (4 per layer): each is refused, or the proof accepts it, which it may only do
    where the layer's real input still fits: a shrunk input bound passes only for inputs the
    decoder clamps to the layer's own bound (rescaled from the main path)."""
    base = model.decoder
    refused, accepted = [], []
    for name, entry in model.spec["layers"].items():
        for field in FIELDS:
            changed = {**entry, field: _tampered(entry[field], field)}
            spec = {**model.spec, "layers": {**model.spec["layers"], name: changed}}
            try:
                layer = build_layer(name, changed, model.tensors)
                prove(IntegerDecoder(model.config, spec, model.tensors, {**base.layers, name: layer}))
            except (BoundError, ValueError) as exc:
                refused.append((name, field, str(exc)))
                continue
            accepted.append((name, field))
            # harmless only where the decoder clamps the input to this very bound: rescaled from the
            # main path, or the coupling's sum, which is clamped to the shift's input bound
            if field == "in_bound":
                assert wiring[name].source == MAIN_SOURCE or name.endswith(".shift"), f"{name}: shrunk bound accepted"
            if field == "frac_in":
                assert wiring[name].source == MAIN_SOURCE, f"{name}: format changed under its producer, accepted"
    assert all((n, "in_bound") in {(r[0], r[1]) for r in refused} for n in wiring if n.endswith(".scale") and "g" in n)
    assert len(refused) + len(accepted) == 4 * len(model.layers) and len(refused) > len(model.layers)


@pytest.fixture(scope="module")
def stream(model):
    """A 64x64 noise image coded at qp 4 by the bundled model, and its pixels."""
    img = torch.from_numpy(np.random.default_rng(7).random((1, 3, 64, 64), np.float32))
    with torch.inference_mode():
        enc = model.encode_latents(model.analyze(img), 4)
        return enc, model.to_uint8(model.decode_latents(enc.data, enc.latent_shape, 4))


@pytest.mark.parametrize("name, field, value", [("g0.0.shift", "in_bound", 15), ("sc2.conv0", "in_bound", 1023),
                                                ("cc3.conv0", "frac_in", 1), ("g1.1.shift", "frac_out", 1)])
def test_a_change_the_proof_accepts_decodes_identically_on_both_kernel_paths(model, stream, name, field, value):
    """Accepted changes make another model, still exact: the fast kernels and the float64 path agree."""
    enc, base = stream
    entry = model.spec["layers"][name]
    changed = {**entry, field: value if field == "in_bound" else entry[field] + value}
    spec = {**model.spec, "layers": {**model.spec["layers"], name: changed}}
    decoder = IntegerDecoder(model.config, spec, model.tensors, {**model.layers, name: build_layer(name, changed,
                                                                                                    model.tensors)})
    prove(decoder)
    with torch.inference_mode():
        fast = decoder.to_uint8(decoder.decode_latents(enc.data, enc.latent_shape, 4))
        with kernels.reference_path():
            slow = decoder.to_uint8(decoder.decode_latents(enc.data, enc.latent_shape, 4))
    assert np.array_equal(fast, slow)
    assert not np.array_equal(fast, base)  # another model: the change does show in the pixels


def test_float_weight_tensors_are_refused(state):
    for key in ("g0.0.conv1.w", "ep2.mean.b", "g3.0.mix.w", "canon.gelu"):
        obj = _file(state)
        obj["tensors"][key] = obj["tensors"][key].double()  # the same values, as floats
        with pytest.raises(CheckpointError, match="integer tensor expected"):
            load_portable("float weights", obj)


def test_weights_that_overflow_int64_sums_are_refused(state):
    obj = _file(state)
    w = obj["tensors"]["sc1.conv2.w"].to(torch.int64).clone()
    w.view(-1)[:2] = torch.tensor([1 << 62, 1 << 62])  # their L1 norm wraps around in int64
    obj["tensors"]["sc1.conv2.w"] = w
    with pytest.raises(CheckpointError, match="values beyond"):
        load_portable("overflow", obj)


@pytest.mark.parametrize("table", ["cdf", "cdf_length", "cdf_offset", "scale_table", "exp2", "log_inv_gain",
                                   "log_scale_gain", "initial_scale_codes", "canon.tanh", "canon.sigmoid"])
def test_missing_tables_are_refused(state, table):
    obj = _file(state)
    del obj["tensors"][table]
    with pytest.raises(CheckpointError, match=f"table {table} is missing|KeyError: '{table}'"):
        load_portable("no table", obj)


def test_a_scale_table_out_of_order_is_refused(state):
    """Bisection over an unsorted table is implementation-defined: devices could disagree."""
    tensors = dict(state["tensors"])
    t = tensors["scale_table"].clone()
    t[[3, 4]] = t[[4, 3]]
    tensors["scale_table"] = t
    with pytest.raises(BoundError, match="increasing"):
        check_tables(msinn.MSINNConfig.from_dict(state["config"]), tensors)


def test_gains_beyond_the_symbol_product_bound_are_refused(state):
    obj = _file(state)
    obj["tensors"]["log_inv_gain"] = obj["tensors"]["log_inv_gain"] + (30 << 16)  # gains times 2**30
    with pytest.raises(CheckpointError, match="exactness proof.*inverse gain"):
        load_portable("gains", obj)
