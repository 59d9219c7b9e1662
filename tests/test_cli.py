"""The msinn command line: encode, decode, info, with clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from msinn.cli import main


@pytest.fixture(scope="module")
def model_path(tiny_float_checkpoint):
    return tiny_float_checkpoint


@pytest.fixture()
def png_path(tmp_path):
    y, x = np.mgrid[0:70, 0:90]
    img = np.stack((x * 2, y * 3, (x + y) % 256), axis=2).astype(np.uint8)
    p = tmp_path / "in.png"
    Image.fromarray(img).save(p)
    return p


def test_encode_decode_info(tmp_path, png_path, model_path, capsys):
    out = tmp_path / "x.msinn"
    assert main(["encode", str(png_path), str(out), "--qp", "2.5", "--model", model_path]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("bpp", "bytes", "psnr", "qp", "probes", "seconds"):
        assert key in summary
    assert summary["bytes"] == out.stat().st_size and summary["qp"] == 2.5

    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["width"] == 90 and info["height"] == 70 and info["qp"] == 2.5 and info["model_name"] == "tiny-float.pt"

    png = tmp_path / "y.png"
    assert main(["decode", str(out), str(png), "--model", model_path]) == 0
    im = Image.open(png)
    assert im.size == (90, 70) and im.mode == "RGB"
    webp = tmp_path / "y.webp"
    assert main(["decode", str(out), str(webp), "--model", model_path]) == 0
    assert Image.open(webp).format == "WEBP"


def test_bpp_target_via_cli(tmp_path, png_path, model_path, capsys):
    out = tmp_path / "x.msinn"
    rates = []
    for qp in ("1", "2"):
        assert main(["encode", str(png_path), str(out), "--qp", qp, "--model", model_path]) == 0
        rates.append(json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bpp"])
    target = round((rates[0] * rates[1]) ** 0.5, 3)
    assert main(["encode", str(png_path), str(out), "--bpp", str(target), "--model", model_path]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.98 * target <= summary["bpp"] <= target and summary["in_range"]
    assert summary["target"] == {"kind": "bpp", "value": target}


def test_errors_name_the_input(tmp_path, model_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"definitely not an image")
    assert main(["encode", str(bad), str(tmp_path / "o.msinn"), "--model", model_path]) == 1
    assert "bad.png" in capsys.readouterr().err
    assert not (tmp_path / "o.msinn").exists()
    junk = tmp_path / "junk.msinn"
    junk.write_bytes(b"\x89MSN\x01garbage")
    assert main(["decode", str(junk), str(tmp_path / "o.png"), "--model", model_path]) == 1
    assert "junk.msinn" in capsys.readouterr().err
    assert main(["info", str(junk)]) == 1
    assert main(["encode", str(bad), "x", "--qp", "99", "--model", model_path]) == 1
    assert main(["nonsense"]) == 2


def test_each_encode_value_is_refused_once_in_one_line(tmp_path, png_path, model_path, capsys):
    """The library's objects check the values (EncodeOptions, Target, the encoder's qp range); the CLI maps their
    errors: an unknown --effort is a usage error found before the model loads (2), the rest end with 1."""
    from msinn.encoding import EncodeOptions

    out = str(tmp_path / "o.msinn")
    with pytest.raises(ValueError, match="not a level"):
        EncodeOptions(effort=99)
    assert main(["encode", str(png_path), out, "--effort", "99", "--model", str(tmp_path / "absent.pt")]) == 2
    err = capsys.readouterr().err
    assert "not a level" in err and err.count("\n") == 1
    for bad, says in ((["--qp", "99"], "outside"), (["--tile-size", "100"], "multiple of 64")):
        assert main(["encode", str(png_path), out, *bad, "--model", model_path]) == 1
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1
    assert not (tmp_path / "o.msinn").exists()


def test_decode_needs_the_named_model(tmp_path, png_path, model_path, capsys):
    out = tmp_path / "x.msinn"
    assert main(["encode", str(png_path), str(out), "--qp", "1", "--model", model_path]) == 0
    capsys.readouterr()
    # without --model the decoder looks for the model named in the file, which is not registered
    assert main(["decode", str(out), str(tmp_path / "o.png")]) == 1
    assert "tiny-float.pt" in capsys.readouterr().err


def test_help():
    assert main(["--help"]) == 0
    with pytest.raises(SystemExit):
        main(["encode", "--help"])


def test_a_file_cannot_make_the_decoder_open_or_fetch_a_model(tmp_path, png_path, model_path, capsys):
    """The header's model name is only looked up in the registry: a path or URL in it is never used."""
    from msinn.container import pack, unpack

    out = tmp_path / "x.msinn"
    assert main(["encode", str(png_path), str(out), "--qp", "1", "--model", model_path]) == 0
    capsys.readouterr()
    header, payload = unpack(out.read_bytes())
    for name in (str(Path(model_path).resolve()), "http://127.0.0.1:9/model.pt", "s3://bucket/m.pt"):
        header.model_name = name
        forged = tmp_path / "forged.msinn"
        forged.write_bytes(pack(header, payload))
        assert main(["decode", str(forged), str(tmp_path / "o.png")]) == 1
        assert "not a registered model" in capsys.readouterr().err
        assert not (tmp_path / "o.png").exists()
    # the user's --model is the way to name other weights
    assert main(["decode", str(forged), str(tmp_path / "o.png"), "--model", model_path]) == 0


def test_msinn_pipeline_help_lists_every_command_and_each_has_its_own(capsys):
    from pipeline.cli import COMMANDS
    from pipeline.cli import main as pipeline_main

    assert pipeline_main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and "exit codes" in out
    for name in COMMANDS:
        with pytest.raises(SystemExit) as exc:
            pipeline_main([name, "--help"])
        assert exc.value.code == 0 and f"msinn-pipeline {name}" in capsys.readouterr().out
    assert pipeline_main(["no-such-command"]) == 2 and "invalid choice" in capsys.readouterr().err
    assert pipeline_main([]) == 2


@pytest.mark.parametrize("content, why", [(None, "cannot read"), ("x = [", "not valid TOML"),
                                          ('archive = "a"', "missing ['target']"),
                                          ('archive = "a"\n[target]\nkind = "fast"\nvalue = 1', "[target] needs")])
def test_a_bad_scheduled_spec_is_one_line_and_exit_code_2(tmp_path, capsys, content, why):
    from pipeline.cli import main as pipeline_main

    spec = tmp_path / "spec.toml"
    if content is not None:
        spec.write_text(content)
    assert pipeline_main(["scheduled", str(spec)]) == 2
    err = capsys.readouterr().err
    assert why in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_python_dash_m_runs_the_same_command():
    """``python -m msinn.cli`` is the command from a source tree without its console script."""
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-m", "msinn.cli", "eval", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "--resume" in res.stdout
    res = subprocess.run([sys.executable, "-m", "msinn.cli", "nonsense"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "nonsense" in res.stderr + res.stdout


def test_the_exact_file_competes_in_msinn_encode_and_a_lep_decodes_to_its_jpeg(tmp_path, model_path, capsys):
    """--codecs msinn,lossless above what the model reaches keeps the Lepton file; decoding it to a .jpg gives the
    original JPEG back byte for byte."""
    import json

    import numpy as np
    from helpers import image_file

    rng = np.random.default_rng(3)
    jpeg = tmp_path / "p.jpg"
    jpeg.write_bytes(image_file(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8), "JPEG", quality=92))
    assert main(["encode", str(jpeg), str(tmp_path / "p.msinn"), "--psnr", "80", "--codecs", "msinn,lossless",
                 "--model", model_path]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["codec"] == "lepton" and out["output"].endswith("p.lep") and out["psnr"] is None
    assert main(["decode", str(tmp_path / "p.lep"), str(tmp_path / "back.jpg")]) == 0
    assert (tmp_path / "back.jpg").read_bytes() == jpeg.read_bytes()


@pytest.mark.parametrize("short, long, value", [("--psnr", "--target-psnr", "35"), ("--bpp", "--target-bpp", "0.4"),
                                                ("--bytes", "--target-bytes", "5000")])
def test_both_spellings_of_a_target_mean_the_same_in_both_clis(short, long, value):
    from msinn.cli.codec import _encode_parser, _target
    from msinn.cli.options import target_of
    from pipeline.cli import reencode_parser, transcode_parser

    base = ["--input", "in", "--output", "out"]
    want = (short[2:], float(value))
    for argv in ([short, value], [long, value]):
        assert target_of(transcode_parser().parse_args(base + argv)) == want
        assert target_of(reencode_parser("r").parse_args(["arch"] + argv)) == want
        t = _target(_encode_parser().parse_args(["a.png", "a.msinn"] + argv))
        assert (t.kind, float(t.value)) == want
    with pytest.raises(SystemExit):  # two targets at once are refused, whichever spelling
        transcode_parser().parse_args(base + [short, value, "--qp", "3"])
