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

KODAK = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "kodak"


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


def test_a_decode_imports_and_builds_only_what_decoding_needs(tmp_path, model):
    from msinn.codec import encode_image
    from msinn.ratecontrol import Target

    img = np.asarray(Image.open(KODAK / "kodim05.png").convert("RGB"))[:96, :128]
    Image.fromarray(img).save(tmp_path / "in.png")
    (tmp_path / "a.msinn").write_bytes(encode_image(model, str(tmp_path / "in.png"), Target("bpp", 1.0)).data)
    probe = (
        "import json, sys\n"
        "from msinn.cli import main\n"
        "rc = main(['decode', sys.argv[1], sys.argv[2]])\n"
        "import msinn\n"
        "m = msinn.load()\n"
        "heavy = ['scipy.stats', 'pandas', 'matplotlib', 'torch_geometric', 'compressai.datasets', 'torchvision']\n"
        "print(json.dumps({'rc': rc, 'imported': [n for n in heavy if n in sys.modules],\n"
        "                  'twin_built': m._float_model is not None}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "a.msinn"), str(tmp_path / "a.png")],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report == {"rc": 0, "imported": [], "twin_built": False}
    assert "Warning" not in out.stderr, out.stderr  # nothing printed that a user cannot act on
    decoded = np.asarray(Image.open(tmp_path / "a.png"))
    assert decoded.shape == img.shape


def test_the_encoder_builds_the_float_twin_when_it_needs_it(model):
    from msinn.portable.model import PortableMSINN

    if not isinstance(model, PortableMSINN):
        pytest.skip("the bundled default is not a portable model")
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
