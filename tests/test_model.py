"""Behaviour of the codec beyond the conformance vectors."""

from __future__ import annotations

import pytest
import torch

from msinn import MSINN, MSINNConfig
from msinn.model import LEVELS


def test_float_anchor_equals_int_anchor_top_included(tiny_model):
    x = torch.rand(1, 3, 64, 64)
    top = tiny_model.anchor_num - 1
    for a in (0, 2, top):
        assert tiny_model.compress_raw(x, float(a)) == tiny_model.compress_raw(x, a)


def test_fractional_qp_lies_between_anchors(tiny_model):
    torch.manual_seed(1)
    x = torch.rand(1, 3, 128, 128)
    sizes = [len(tiny_model.compress_raw(x, q)[0]) for q in (1, 1.5, 2)]
    assert sizes[0] <= sizes[1] <= sizes[2]
    assert sizes[0] < sizes[2]


def test_qp_out_of_range_is_refused(tiny_model):
    x = torch.rand(1, 3, 64, 64)
    for bad in (-0.1, tiny_model.anchor_num - 1 + 1e-6, float("nan"), 7):
        with pytest.raises(ValueError, match="qp"):
            tiny_model.compress_raw(x, bad)


def test_round_trip_and_determinism(tiny_model):
    torch.manual_seed(2)
    x = torch.rand(1, 3, 64, 192)
    data, shape = tiny_model.compress_raw(x, 2.25)
    assert shape == (4, 12)
    assert tiny_model.compress_raw(x, 2.25) == (data, shape)
    a = tiny_model.decompress_raw(data, shape, 2.25)
    b = tiny_model.decompress_raw(data, shape, 2.25)
    assert a.shape == x.shape and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1


def test_encoder_reconstruction_equals_decoder(tiny_model):
    """The forward pass in eval mode predicts exactly what the decoder reconstructs."""
    torch.manual_seed(3)
    x = torch.rand(1, 3, 128, 64)
    data, shape = tiny_model.compress_raw(x, 1)
    with torch.no_grad():
        fwd = tiny_model(x, 1)["x_hat"].clamp(0, 1)
    dec = tiny_model.decompress_raw(data, shape, 1)
    assert torch.allclose(fwd, dec, atol=1e-5)


def test_bad_image_shapes(tiny_model):
    with pytest.raises(ValueError, match="multiples of 64"):
        tiny_model.compress_raw(torch.rand(1, 3, 60, 64), 0)
    with pytest.raises(ValueError, match="1x3xHxW"):
        tiny_model.compress_raw(torch.rand(3, 64, 64), 0)


def test_inverse_cache_follows_weight_changes():
    torch.manual_seed(4)
    m = MSINN(MSINNConfig(N=8, M=8, depths=(1, 1, 1, 1), context_channels=8, anchor_num=2, post_process=False))
    m.train()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        m(x, 0)
    m.eval()
    with torch.inference_mode():
        y = m.analyze(x)
        before = m.grow_support(LEVELS[1], y[1], y[0])
    with torch.no_grad():
        m.g_a3[0].permute.weight.mul_(2.0)
    with torch.inference_mode():
        y2 = m.analyze(x)
        after = m.grow_support(LEVELS[1], y2[1], y2[0])
    # the inverse of the changed stage must still undo the analysis exactly (up to float error)
    assert torch.allclose(before, after, atol=1e-4)


def test_training_step_changes_weights_and_gains():
    torch.manual_seed(5)
    m = MSINN(MSINNConfig(N=8, M=8, depths=(1, 1, 1, 1), context_channels=8, anchor_num=3, post_process=False))
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    x = torch.rand(2, 3, 64, 64)
    out = m(x, [0, 2])
    assert out["x_hat"].shape == x.shape
    loss = ((out["x_hat"] - x) ** 2).mean() + sum(-torch.log2(v).sum() for v in out["likelihoods"].values()) / 8192
    before = m.gain.detach().clone()
    loss.backward()
    opt.step()
    assert not torch.equal(before, m.gain.detach())
    assert m.gain.grad[1].abs().sum() == 0  # anchor 1 was not in the batch
