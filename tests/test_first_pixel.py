"""Time to first pixel: a decode builds and imports only what decoding needs, and the shortcuts that make it so
leave every coding table exactly as CompressAI builds it (a different table would not decode older files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msinn.images import pixels_sha256

GOLDEN = Path(__file__).resolve().parent / "golden"


def test_the_tail_quantile_is_scipys_bit_for_bit_and_the_tables_are_compressais():
    import scipy.stats
    from compressai.entropy_models import GaussianConditional as Original

    from msinn.compressai_parts import TAIL_QUANTILES, GaussianConditional
    from msinn.model import default_scale_table

    ours, theirs = GaussianConditional(None), Original(None)
    assert ours.tail_mass / 2 in TAIL_QUANTILES  # the pinned one is the one in use
    for tail in {ours.tail_mass, 1e-9, 1e-6, 3e-7}:  # pinned, and the fallback to scipy for any other
        got = ours._standardized_quantile(tail / 2)
        want = float(scipy.stats.norm.ppf(tail / 2))
        assert got.hex() == want.hex(), tail
    table = default_scale_table()
    ours.update_scale_table(table, force=True)
    theirs.update_scale_table(table, force=True)
    for name in ("_quantized_cdf", "_offset", "_cdf_length"):
        assert torch.equal(getattr(ours, name), getattr(theirs, name)), name


def test_a_decode_imports_and_builds_only_what_decoding_needs(tmp_path):
    golden = json.loads((GOLDEN / "golden.json").read_text())["k03-qp4"]
    probe = (
        "import json, sys\n"
        "from msinn.portable.model import PortableMSINN\n"
        "twins = []\n"
        "build = PortableMSINN.float_twin\n"
        "PortableMSINN.float_twin = lambda self: twins.append(1) or build(self)\n"
        "from msinn.cli import main\n"
        "rc = main(['decode', sys.argv[1], sys.argv[2]])\n"
        "heavy = ['scipy.stats', 'pandas', 'matplotlib', 'torch_geometric', 'compressai.datasets', 'torchvision']\n"
        "print(json.dumps({'rc': rc, 'imported': [n for n in heavy if n in sys.modules], 'twin_built': bool(twins)}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(GOLDEN / golden["file"]), str(tmp_path / "a.png")],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "imported": [], "twin_built": False}
    assert "Warning" not in out.stderr, out.stderr  # nothing printed that a user cannot act on
    decoded = np.asarray(Image.open(tmp_path / "a.png"))
    assert list(decoded.shape) == golden["shape"] and pixels_sha256(decoded) == golden["pixels_sha256"]


def test_the_encoder_builds_the_float_twin_when_it_needs_it(model):
    from msinn.portable.model import PortableMSINN

    assert isinstance(model, PortableMSINN)  # the bundled default is portable
    fresh = PortableMSINN(model.config, model.spec, model.tensors, model.float_tensors, model.meta)
    assert fresh._float_model is None
    with pytest.raises(ValueError):
        fresh.check_qp(model.anchor_num)  # the rule needs no twin
    assert fresh._float_model is None
    with torch.inference_mode():  # first asked for inside a coding call, as the encoder does
        latents = fresh.analyze(torch.rand(1, 3, 64, 64))
    assert fresh._float_model is not None and len(latents) == 5
    assert not any(p.is_inference() for p in fresh.float_model.parameters())  # an ordinary model all the same
    fresh.estimate_bits(latents, 1.0)
    assert fresh.float_model is fresh.float_model  # built once
