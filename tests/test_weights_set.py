"""Several weights competing per image (--also-model): what a qp trades, the choice, and every file reading back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from pipeline_helpers import png_bytes, unit_summary

from msinn.weights_set import lambda_at, rd_cost, shared_lambdas, trained_lambdas

LAMBDAS = [0.002, 0.008, 0.03, 0.1]  # the tiny models' four anchors


def _saved(model, path, lambdas):
    """The model as a float checkpoint recording its training lambdas (float: no conversion, so the tests stay
    quick; the lambdas are read the same way from a portable file's metadata)."""
    from msinn.checkpoint import save_checkpoint

    save_checkpoint(path, model, meta={"lambdas": lambdas} if lambdas is not None else {})
    return str(path)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_model):
    """Two different tiny weights trained (as their files say) with the same lambdas."""
    import copy

    other = copy.deepcopy(tiny_model)
    with torch.no_grad():  # finer quantisation at every qp: more bytes and a higher PSNR than tiny-a's
        other.gain.mul_(1.3)
        other.inv_gain.div_(1.3)
    other.update()
    d = tmp_path_factory.mktemp("pair")
    return _saved(tiny_model, d / "tiny-a.pt", LAMBDAS), _saved(other, d / "tiny-b.pt", LAMBDAS)


def test_lambda_of_a_qp_is_its_anchors_own_or_their_log_linear_mean():
    assert lambda_at(LAMBDAS, 0) == 0.002 and lambda_at(LAMBDAS, 3) == 0.1 and lambda_at(LAMBDAS, 2.0) == 0.03
    assert lambda_at(LAMBDAS, 0.5) == pytest.approx(math.sqrt(0.002 * 0.008))
    assert lambda_at(LAMBDAS, 2.25) == pytest.approx(0.03 ** 0.75 * 0.1 ** 0.25)
    with pytest.raises(ValueError, match="outside"):
        lambda_at(LAMBDAS, 3.5)
    # the loss the weights were trained for: bpp + lambda * MSE on 0..255 (PSNR 40 dB: MSE 6.5025)
    assert rd_cost(1000 * 8 / 8000, 40.0, 0.01) == pytest.approx(1.0 + 0.01 * 6.5025)
    assert rd_cost(1000 * 8 / 8000, math.inf, 0.01) == 1.0


def test_lambdas_come_from_the_file_or_the_bundled_float_model_it_was_converted_from(pair, tiny_float_checkpoint):
    import msinn

    a, b = (msinn.load(p) for p in pair)
    assert trained_lambdas(a) == tuple(LAMBDAS) and shared_lambdas([a, b]) == tuple(LAMBDAS)
    unknown = msinn.load(tiny_float_checkpoint)
    assert trained_lambdas(unknown) is None  # nothing records them
    with pytest.raises(ValueError, match="tiny-float.pt record no lambdas"):
        shared_lambdas([a, unknown])  # never assumed to be the others'

    # a portable file converted before portable files carried them: the bundled float model it was made from
    from types import SimpleNamespace

    from msinn.checkpoint import load_object
    from msinn.registry import lookup

    names = ("msinn-small-2026-12b-p1", "msinn-small-2026-12b")
    meta = {name: load_object(lookup(name).path)[1]["meta"] for name in names}
    assert "lambdas" not in meta["msinn-small-2026-12b-p1"] and len(meta["msinn-small-2026-12b"]["lambdas"]) == 14
    default = SimpleNamespace(model_name="msinn-small-2026-12b-p1", anchor_num=14,
                              checkpoint_meta=meta["msinn-small-2026-12b-p1"])
    assert trained_lambdas(default) == tuple(meta["msinn-small-2026-12b"]["lambdas"])
    renamed = SimpleNamespace(model_name="renamed.pt", anchor_num=14, checkpoint_meta=meta["msinn-small-2026-12b-p1"])
    assert trained_lambdas(renamed) is None  # only a registered name leads to its float source
    with pytest.raises(ValueError, match="different numbers of anchors"):
        shared_lambdas([a, default])


def test_weights_with_other_lambdas_are_refused_at_a_qp(tmp_path, tiny_model):
    import msinn

    a = msinn.load(_saved(tiny_model, tmp_path / "x.pt", LAMBDAS))
    b = msinn.load(_saved(tiny_model, tmp_path / "y.pt", [v * 2 for v in LAMBDAS]))
    with pytest.raises(ValueError, match="different lambdas"):
        shared_lambdas([a, b])
    with pytest.raises(ValueError, match="positive and increasing"):
        trained_lambdas(msinn.load(_saved(tiny_model, tmp_path / "z.pt", [0.1, 0.03, 0.008, 0.002])))


def test_the_choice_between_weights_follows_the_training_loss_at_a_qp_and_the_target_otherwise(pair):
    """Each weights codes the image; at a qp the lower bpp + lambda x MSE is kept (the choice flips where the two
    files' losses cross); at a floor the smallest file reaching it, within a cap the best PSNR."""
    import msinn
    from msinn.choice import ChoiceOptions, choose, encode_best
    from msinn.encoding import encode_image
    from msinn.images import open_image
    from msinn.ratecontrol import Target

    a, b = (msinn.load(p) for p in pair)
    opts = ChoiceOptions(("msinn",))
    flips = 0
    for seed in range(2):
        img = open_image(png_bytes(seed, 64, 64), f"img{seed}")
        px = img.width * img.height
        for qp in (1, 2):
            ra, rb = (encode_image(m, img, Target("qp", qp)) for m in (a, b))
            lam = lambda_at(LAMBDAS, qp)
            got = encode_best(a, img, Target("qp", qp), opts, also=[b])
            want = min((ra, rb), key=lambda r: rd_cost(r.bytes * 8 / px, r.psnr, lam))
            assert got.winner.data == want.data and got.winner.model == want.header.model_name
            assert [c.model for c in got.candidates] == ["tiny-a.pt", "tiny-b.pt"]
            assert got.floor == want.psnr
            if (ra.bytes - rb.bytes) * (ra.psnr - rb.psnr) > 0:  # neither dominates: a lambda where they cross
                cross = (ra.bytes - rb.bytes) * 8 / px / (255**2 * (10 ** (-rb.psnr / 10) - 10 ** (-ra.psnr / 10)))
                cheap = min((ra, rb), key=lambda r: r.bytes)
                dear = max((ra, rb), key=lambda r: r.bytes)
                assert choose(img, Target("qp", qp), opts, [ra, rb], qp_lambda=cross / 4).winner.data == cheap.data
                assert choose(img, Target("qp", qp), opts, [ra, rb], qp_lambda=cross * 4).winner.data == dear.data
                flips += 1
        if seed == 0:  # a floor: the smallest file reaching it
            floor = (ra.psnr + rb.psnr) / 2
            got = encode_best(a, img, Target("psnr", floor), opts, also=[b])
            assert len(got.candidates) == 2
            ok = [c for c in got.candidates if c.psnr >= floor]
            assert ok and got.winner.bytes == min(c.bytes for c in ok)
        else:  # a cap: the best PSNR within it
            cap = (ra.bytes + rb.bytes) * 4 / px
            capped = encode_best(a, img, Target("bpp", cap), opts, also=[b])
            assert len(capped.candidates) == 2
            fits = [c for c in capped.candidates if c.bytes * 8 / px <= cap]
            assert fits and capped.winner.psnr == max(c.psnr for c in fits)
    assert flips, "the two weights never traded rate for quality: the lambda rule went untested"
    with pytest.raises(ValueError, match="lambda of that qp"):
        choose(img, Target("qp", 1), opts, [ra, rb])


def test_encode_names_the_kept_weights_and_the_file_decodes_with_them(pair, tmp_path, capsys):
    from msinn.cli import main

    src = tmp_path / "in.png"
    src.write_bytes(png_bytes(3, 96, 64))
    out = tmp_path / "out.msinn"
    # tiny-a wins at qp 2 on these images whichever is --model: so here the --also-model weights are kept
    assert main(["encode", str(src), str(out), "--qp", "2", "--model", pair[1], "--also-model", pair[0]]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "tiny-a.pt"
    assert [c["model"] for c in summary["candidates"]] == ["tiny-b.pt", "tiny-a.pt"]
    assert main(["decode", str(out), str(tmp_path / "back.png"), "--model", pair[0]]) == 0
    assert main(["decode", str(out), str(tmp_path / "back.png"), "--model", pair[1]]) == 1  # named: tiny-a
    assert main(["encode", str(src), str(out), "--codecs", "avif", "--psnr", "30", "--also-model", pair[1]]) == 2
    assert "needs msinn" in capsys.readouterr().err


def test_eval_reports_the_kept_file_of_each_qp(pair, tmp_path):
    import msinn
    from msinn.evaluation.rd import evaluate

    for i in range(2):
        (tmp_path / f"i{i}.png").write_bytes(png_bytes(10 + i, 96, 64))
    uris = sorted(str(p) for p in tmp_path.glob("*.png"))
    a, b = (msinn.load(p) for p in pair)
    both = evaluate(b, uris, [1, 2], also=[a], progress=lambda m: None)  # --model tiny-b, --also-model tiny-a
    alone = [evaluate(m, uris, [1, 2], progress=lambda m: None) for m in (a, b)]
    assert {p["model"] for im in both["per_image"] for p in im["points"]} == {"tiny-a.pt"}  # the other's points
    for im, ia, ib in zip(both["per_image"], alone[0]["per_image"], alone[1]["per_image"]):
        px = im["width"] * im["height"]
        for p, pa, pb in zip(im["points"], ia["points"], ib["points"]):
            lam = lambda_at(LAMBDAS, p["qp"])
            want, name = min(((pa, "tiny-a.pt"), (pb, "tiny-b.pt")),
                             key=lambda t: rd_cost(t[0]["bytes"] * 8 / px, t[0]["psnr"], lam))
            assert (p["bytes"], p["psnr"], p["model"]) == (want["bytes"], want["psnr"], name)


def test_pipeline_rows_name_the_weights_of_their_file_and_verify(pair, tmp_path):
    """The actor codes with both weights; each row records the kept file's weights, which decode it exactly."""
    import msinn
    from msinn.container import image_digest
    from msinn.decoding import decode_image
    from pipeline.encoder import UnitEncoder
    from pipeline.sources import InputRecord
    from pipeline.spec import JobSpec, WorkUnit

    enc = UnitEncoder(pair[1], also_models=pair[:1])  # tiny-a, the --also-model, wins these images
    records = [InputRecord(f"k{i}", f"mem://k{i}.png", png_bytes(20 + i, 96, 64)) for i in range(4)]
    spec = JobSpec(input="mem://", output=str(tmp_path / "out"), target_kind="qp", target_value=2.0,
                   model=pair[1], also_models=pair[:1])
    assert spec.coding_dict()["also_models"] == [pair[0]]  # frozen with the plan
    unit = WorkUnit("00000", "files", tuple(r.source_uri for r in records), 0, "mem://")
    assert unit_summary(enc.steps(unit, records, spec))["errors"] == 0
    rows = pq.read_table(tmp_path / "out" / "manifest" / "part-00000.parquet").to_pylist()
    models = {p.rsplit("/", 1)[-1]: msinn.load(p) for p in pair}
    import tarfile

    with tarfile.open(tmp_path / "out" / "bitstreams" / "part-00000.tar") as tar:
        for row in rows:
            data = tar.extractfile(f"{row['key']}.msinn").read()
            assert row["model"] == "tiny-a.pt" and row["model_hash"] == models["tiny-a.pt"].weights_sha256[:16]
            back = decode_image(data, models[row["model"]])
            assert image_digest(back.pixels) == row["pixel_hash"]
    with pytest.raises(ValueError, match="needs msinn"):
        JobSpec(input="i", output="o", target_kind="psnr", target_value=30, codecs=("avif",), also_models=("x",))


def test_a_transcode_on_ray_with_the_bundled_specialist_records_and_decodes_each_rows_weights(tmp_path, local_ray,
                                                                                             caplog):
    """The shipped pair end to end: the driver checks both weights, the plan freezes them, the actors code every
    image with both, and each row decodes with the registered weights it names."""
    from PIL import Image

    import msinn
    from msinn.container import image_digest
    from msinn.decoding import decode_image
    from pipeline.plan import read_plan
    from pipeline.runner import run_job
    from pipeline.spec import JobError, JobSpec

    default, specialist = "msinn-small-2026-12b-p1", "msinn-small-graphics-2026-12-p1"
    src = tmp_path / "in"
    src.mkdir()
    shared = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    Image.open(shared / "graphics" / "screen-02-gimp-script-fu-console.png").convert("RGB").crop(
        (0, 0, 128, 128)).save(src / "screen.png")
    Image.open(Path(__file__).resolve().parents[1] / "samples" / "kodim03.png").crop((200, 100, 328, 228)).save(
        src / "photo.png")
    out = tmp_path / "out"
    spec = JobSpec(input=str(src), output=str(out), target_kind="qp", target_value=6.0, model=default,
                   also_models=(specialist,))
    summary = run_job(spec, actors=1)
    assert summary["ok"] == 2 and summary["errors"] == 0
    assert read_plan(str(out), None).job["also_models"] == [specialist]
    rows = pq.read_table(out / "manifest").to_pylist()
    # the screenshot's file is the specialist's (fewer bytes and a higher PSNR at qp 6), the photo's the default's
    assert {r["key"]: r["model"] for r in rows} == {"screen": specialist, "photo": default}
    assert sorted(summary["models"]) == sorted([default, specialist])
    for r in rows:
        with open(r["tar_uri"].split("://", 1)[-1], "rb") as f:
            f.seek(r["offset"])
            data = f.read(r["length"])
        back = decode_image(data, msinn.load(r["model"]))
        assert image_digest(back.pixels) == r["pixel_hash"]
    import logging
    from dataclasses import replace

    with caplog.at_level(logging.WARNING, logger="pipeline"):  # a rerun without it: said, as for --model
        assert run_job(replace(spec, also_models=()), actors=1)["ok"] == 2
    assert any("--also-model changed" in r.getMessage() for r in caplog.records)
    from pipeline.reencode import run_reencode

    again = run_reencode(str(out), "key = 'screen'", "psnr", 32.0, model=default, source_mode="bitstream",
                         also_models=[specialist], actors=1)
    assert again["selected"] == 1 and again["errors_this_run"] == 0
    (plan,) = (out / "_reencode").glob("*/plan.json")
    assert json.loads(plan.read_text())["job"]["also_models"] == [specialist]  # a resume codes as it began
    new = [r for r in pq.read_table(out / "manifest").to_pylist() if r["run_id"] == again["run_id"]]
    assert len(new) == 1 and new[0]["model"] == specialist and new[0]["psnr"] >= 32.0
    with pytest.raises(JobError, match="cannot use --also-model"):
        run_job(JobSpec(input=str(src), output=str(tmp_path / "o2"), target_kind="qp", target_value=6.0,
                        also_models=(str(tmp_path / "missing.pt"),)), actors=1)


def test_other_weights_that_fail_leave_the_image_to_the_rest_and_say_why(pair, tmp_path, monkeypatch):
    """An --also-model weights that cannot code an image is left out, as a classical codec would be; the file is
    --model's and the row's note names the failure. --model failing still fails the image."""
    import msinn
    from msinn.choice import ChoiceOptions, encode_best
    from msinn.images import open_image
    from msinn.ratecontrol import Target
    from pipeline.encoder import UnitEncoder
    from pipeline.sources import InputRecord
    from pipeline.spec import JobSpec, WorkUnit

    def broken(x):
        raise RuntimeError("out of device memory")

    a, b = (msinn.load(p) for p in pair)
    b.analyze = broken  # this weights' analysis fails on every image
    img = open_image(png_bytes(5, 64, 64), "img")
    got = encode_best(a, img, Target("psnr", 25.0), ChoiceOptions(("msinn",)), also=[b])
    assert [c.model for c in got.candidates] == ["tiny-a.pt"]
    assert got.summary(64 * 64)["failed"] == {"msinn tiny-b.pt": "RuntimeError: out of device memory"}
    with pytest.raises(RuntimeError):
        encode_best(b, img, Target("psnr", 25.0), ChoiceOptions(("msinn",)), also=[a])
    enc = UnitEncoder(pair[0], also_models=pair[1:])
    enc.also[0].analyze = broken
    spec = JobSpec(input="mem://", output=str(tmp_path / "o"), target_kind="psnr", target_value=25.0,
                   model=pair[0], also_models=pair[1:])
    row, data = enc.finish_record(*enc.prepare_record(InputRecord("k", "mem://k.png", png_bytes(5, 64, 64)), spec,
                                                      WorkUnit("0", "files", (), 0, "mem://")), spec)
    assert row.status == "ok" and row.model == "tiny-a.pt" and data
    assert row.note == "msinn tiny-b.pt could not code it: RuntimeError: out of device memory"
    # the other half: the weights' network half succeeds, its entropy coding fails
    from msinn.encoding import PendingEncode

    enc = UnitEncoder(pair[0], also_models=pair[1:])
    finish = PendingEncode.finish

    def failing(self):
        if self.model is enc.also[0]:
            raise MemoryError("no memory for the coder")
        return finish(self)

    monkeypatch.setattr(PendingEncode, "finish", failing)
    row, data = enc.finish_record(*enc.prepare_record(InputRecord("k", "mem://k.png", png_bytes(5, 64, 64)), spec,
                                                      WorkUnit("0", "files", (), 0, "mem://")), spec)
    assert row.status == "ok" and row.model == "tiny-a.pt" and data
    assert row.note == "msinn tiny-b.pt could not code it: MemoryError: no memory for the coder"
    with pytest.raises(ValueError, match="a --lossless job does not run"):
        JobSpec(input="i", output="o", target_kind="lossless", target_value=0, also_models=("x",))
