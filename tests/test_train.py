"""Training: exact resume, anchor extension, the ``msinn train`` CLI and Ray Train data parallelism."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from msinn.config import MSINNConfig
from msinn.raylocal import RAY_ENV_DEFAULTS
from msinn.training.loop import PAPER_LAMBDAS, CropSampler, Trainer, TrainSettings, load_images

# Before anything imports ray: servers on 127.0.0.1 only, no auth token file, no usage stats.
os.environ.update(RAY_ENV_DEFAULTS)

SHARED = Path(__file__).resolve().parents[2] / "shared"
ROOT = Path(__file__).resolve().parents[1]

TINY = MSINNConfig(N=8, M=8, depths=(1, 1, 1, 1), context_channels=8, anchor_num=3, post_process=False)
TINY_FLAGS = ["--N", "8", "--M", "8", "--depths", "1", "1", "1", "1", "--context-channels", "8",
              "--anchor-num", "3", "--no-post-process"]
STEPS = 6


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    """Four 96x96 PNG crops of the shared training images (varied content, quick to train on)."""
    d = tmp_path_factory.mktemp("images")
    sources = sorted((SHARED / "datasets" / "train").glob("*.png"))[:4]
    for i, src in enumerate(sources):
        im = np.asarray(Image.open(src).convert("RGB"))
        top, left = (im.shape[0] - 96) // (i + 2), (im.shape[1] - 96) // (4 - i)
        Image.fromarray(im[top : top + 96, left : left + 96]).save(d / f"{i}.png")
    return d


@pytest.fixture(scope="module")
def images(image_dir) -> list[np.ndarray]:
    return load_images(str(image_dir))


def _settings(out: Path, **kw) -> TrainSettings:
    base = TrainSettings(data="unused", out=str(out), steps=STEPS, batch_size=2, patch_size=64, threads=1,
                         log_every=1, checkpoint_every=100, seed=3)
    return replace(base, **kw)


def _weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differ, f"tensors differ: {differ[:5]}"


@pytest.fixture(scope="module")
def straight(tmp_path_factory, images) -> tuple[dict[str, torch.Tensor], Path]:
    """Reference: STEPS uninterrupted steps (weights, run folder)."""
    out = tmp_path_factory.mktemp("straight")
    t = Trainer(_settings(out), TINY, images=images)
    t.run()
    return _weights(t), out


def _history_steps(out: Path) -> list[int]:
    rows = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "validation" not in r]


@pytest.mark.slow
def test_stop_and_resume_is_exact(tmp_path, images, straight):
    first = Trainer(_settings(tmp_path, steps=STEPS // 2), TINY, images=images)
    first.run()
    second = Trainer(_settings(tmp_path), images=images)  # a new process would do the same
    assert second.step == STEPS // 2
    second.run()
    _assert_same(_weights(second), straight[0])
    assert _history_steps(tmp_path) == list(range(1, STEPS + 1))


class _Crash(Trainer):
    def train_step(self) -> dict[str, float]:
        if self.step == 3:
            raise RuntimeError("simulated crash")
        return super().train_step()


@pytest.mark.slow
def test_crash_between_checkpoints_resumes_from_last_checkpoint(tmp_path, images, straight):
    with pytest.raises(RuntimeError, match="simulated crash"):
        _Crash(_settings(tmp_path, checkpoint_every=2), TINY, images=images).run()
    resumed = Trainer(_settings(tmp_path, checkpoint_every=2), images=images)
    assert resumed.step == 2  # step 3 was lost with the crash
    resumed.run()
    _assert_same(_weights(resumed), straight[0])
    assert _history_steps(tmp_path) == list(range(1, STEPS + 1))  # no duplicate rows for the replayed step


@pytest.mark.slow
def test_time_limit_saves_and_resumes_exactly(tmp_path, images, straight):
    t = Trainer(_settings(tmp_path), TINY, images=images)
    t.run(max_seconds=0)
    assert t.step == 1
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 1
    resumed = Trainer(_settings(tmp_path), images=images)
    resumed.run()
    _assert_same(_weights(resumed), straight[0])


def test_more_anchors_start_as_copies_of_the_top_anchor(tmp_path, images, straight):
    old = straight[0]
    wide = replace(TINY, anchor_num=4)
    t = Trainer(_settings(tmp_path / "wide"), wide, init_from=str(straight[1] / "last.pt"), images=images)
    new = t.model.state_dict()
    for k in ("gain", "inv_gain", "scale_gain"):
        assert new[k].shape[0] == 4
        assert torch.equal(new[k][:3], old[k])
        assert torch.equal(new[k][3], old[k][2])
    assert all(torch.equal(new[k], v) for k, v in old.items() if k not in ("gain", "inv_gain", "scale_gain"))
    assert len(t.lambdas) == 4
    t.train_step()
    assert not torch.equal(t.model.gain[3], t.model.gain[2])  # the new anchor trains on its own


def test_copied_top_anchors_restart_on_the_progression_and_the_run_resumes(tmp_path, images, straight):
    """scripts/extrapolate_anchors.py (the e2 run's recipe): copies above the top continue each channel's ratio
    between the two anchors below them; the rest of the checkpoint is kept and training resumes from it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("extrapolate_anchors", ROOT / "scripts" / "extrapolate_anchors.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    old = straight[0]
    wide = replace(TINY, anchor_num=5)
    out = tmp_path / "wide"
    t = Trainer(_settings(out, steps=1), wide, init_from=str(straight[1] / "last.pt"), images=images)
    t.run()
    before = torch.load(out / "last.pt", weights_only=True)
    assert mod.main([str(out / "last.pt"), "--first", "3"]) == 0
    after = torch.load(out / "last.pt", weights_only=True)
    for k in ("gain", "inv_gain", "scale_gain"):
        v, w = before["state_dict"][k], after["state_dict"][k]
        assert torch.equal(w[:3], v[:3]) and not torch.equal(w[3:], v[3:])
        ratio = v[2] / v[1]
        torch.testing.assert_close(w[3], v[2] * ratio)
        torch.testing.assert_close(w[4], v[2] * ratio**2)
    assert not torch.equal(after["state_dict"]["gain"][4], old["gain"][2])
    assert after["step"] == before["step"] and after["optimizer"].keys() == before["optimizer"].keys()
    assert all(torch.equal(after["state_dict"][k], v) for k, v in before["state_dict"].items()
               if k not in ("gain", "inv_gain", "scale_gain"))
    resumed = Trainer(_settings(out, steps=2), images=images)
    torch.testing.assert_close(resumed.model.gain.detach(), after["state_dict"]["gain"])
    resumed.run()
    assert resumed.step == 2
    assert mod.main([str(out / "last.pt"), "--first", "1"]) == 2  # needs two anchors below to extrapolate


def test_interpolated_weights_mix_shared_anchors_and_keep_the_tuned_models_extra_ones(tmp_path, images, straight):
    """scripts/interpolate_weights.py: alpha of the tuned model plus 1 - alpha of its start, anchor rows the start
    lacks from the tuned model; the file loads as a model and records what it was mixed from."""
    import importlib.util

    import msinn
    from msinn.checkpoint import read_checkpoint

    spec = importlib.util.spec_from_file_location("interpolate_weights", ROOT / "scripts" / "interpolate_weights.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    base_file = str(straight[1] / "last.pt")
    out = tmp_path / "tuned"
    Trainer(_settings(out, steps=2, lr=1e-3), replace(TINY, anchor_num=4), init_from=base_file, images=images).run()
    tuned_file = str(out / "last.pt")
    _, tuned, _ = read_checkpoint(tuned_file)
    _, base, _ = read_checkpoint(base_file)
    assert not torch.equal(tuned["g_a0.0.actnorm.bias"], base["g_a0.0.actnorm.bias"])

    mixed_file = tmp_path / "mixed.pt"
    assert mod.main([tuned_file, base_file, "--alpha", "0.25", "--out", str(mixed_file)]) == 0
    _, mixed, meta = read_checkpoint(mixed_file)
    for k, v in tuned.items():
        if not v.is_floating_point():
            assert torch.equal(mixed[k], v)
        elif k in ("gain", "inv_gain", "scale_gain"):
            torch.testing.assert_close(mixed[k][:3], 0.25 * v[:3] + 0.75 * base[k])
            assert torch.equal(mixed[k][3], v[3])
        else:
            torch.testing.assert_close(mixed[k], 0.25 * v + 0.75 * base[k])
    info = meta["interpolation"]
    assert info["alpha"] == 0.25 and info["tuned"] == "last.pt"
    assert info["base_sha256"] == msinn.load_file(base_file).weights_sha256
    assert msinn.load_file(str(mixed_file)).config.anchor_num == 4

    assert mod.main([tuned_file, base_file, "--alpha", "1", "--out", str(mixed_file)]) == 0
    _, same, _ = read_checkpoint(mixed_file)
    assert all(torch.equal(same[k], v) for k, v in tuned.items() if k in same)
    assert mod.main([tuned_file, base_file, "--alpha", "1.5", "--out", str(tmp_path / "x.pt")]) == 2
    assert mod.main([base_file, tuned_file, "--alpha", "0.5", "--out", str(tmp_path / "x.pt")]) == 2  # base has more
    assert not (tmp_path / "x.pt").exists()


def test_lower_lambdas_become_anchors_below_with_extrapolated_gains(tmp_path, images, straight):
    old = straight[0]
    wide = replace(TINY, anchor_num=5)
    old_lambdas = list(PAPER_LAMBDAS[:3])
    settings = replace(_settings(tmp_path / "low"), lambdas=[old_lambdas[0] / 4, old_lambdas[0] / 2, *old_lambdas])
    t = Trainer(settings, wide, init_from=str(straight[1] / "last.pt"), images=images)
    new = t.model.state_dict()
    for k in ("gain", "inv_gain", "scale_gain"):
        assert torch.equal(new[k][2:], old[k])  # the trained anchors keep their place, shifted up
        ratio = old[k][0] / old[k][1]
        torch.testing.assert_close(new[k][1], old[k][0] * ratio)
        torch.testing.assert_close(new[k][0], old[k][0] * ratio**2)
    assert t.lambdas[:2] == settings.lambdas[:2]
    # gains shrink (and inverse gains grow) going down: the new anchors code at lower rates
    assert bool((t.model.gain[0] < t.model.gain[2]).all()) and bool((t.model.inv_gain[0] > t.model.inv_gain[2]).all())


def test_init_from_keeps_the_checkpoints_own_lambdas(tmp_path, images):
    """A fine-tune of a model trained on non-paper lambdas (e.g. on another machine) keeps them."""
    custom = [0.0005, 0.001, 0.002]
    src = Trainer(_settings(tmp_path / "custom", steps=1, lambdas=custom), TINY, images=images)
    src.run()
    t = Trainer(_settings(tmp_path / "tune"), None, init_from=str(tmp_path / "custom" / "last.pt"), images=images)
    assert t.lambdas == custom
    given = [0.001, 0.002, 0.004]
    t2 = Trainer(_settings(tmp_path / "tune2", lambdas=given), None,
                 init_from=str(tmp_path / "custom" / "last.pt"), images=images)
    assert t2.lambdas == given  # an explicit list still wins


@pytest.mark.slow
def test_cli_trains_resumes_and_exports(tmp_path, image_dir):
    import msinn
    from msinn.cli.train import main

    out, exported = tmp_path / "run", tmp_path / "model.pt"
    common = ["--out", str(out), "--threads", "1"]
    rc = main(["--data", str(image_dir), *common, "--steps", "3", "--batch-size", "2", "--patch-size", "64",
               "--log-every", "1", "--checkpoint-every", "2", "--val-data", str(image_dir), "--val-images", "1",
               "--val-patch", "64", "--validate-every", "3", "--seed", "5", *TINY_FLAGS])
    assert rc == 0
    rows = [json.loads(ln) for ln in (out / "history.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "validation" in r] == [3]
    # Resume: --out alone brings back the data, seed, batch and model of the run.
    assert main([*common, "--steps", "4", "--export", str(exported)]) == 0
    obj = torch.load(out / "last.pt", weights_only=True)
    assert obj["step"] == 4 and obj["meta"]["settings"]["seed"] == 5
    assert "optimizer" not in torch.load(exported, weights_only=True)
    model = msinn.load(str(exported))
    assert model.config.anchor_num == 3
    x = torch.from_numpy(np.array(Image.open(image_dir / "0.png"))[:64, :64]).permute(2, 0, 1)[None] / 255
    data, shape = model.compress_raw(x.float(), 1)
    assert model.decompress_raw(data, shape, 1).shape == x.shape


def test_cli_config_layers(tmp_path):
    from msinn.cli.train import build_config, parser

    cfg = build_config(parser().parse_args(["--out", str(tmp_path), "--preset", "small", "--anchor-num", "12"]), False)
    assert (cfg.N, cfg.M, cfg.depths, cfg.context_channels, cfg.post_process) == (48, 64, (3, 3, 3, 3), 48, False)
    assert cfg.anchor_num == 12
    assert build_config(parser().parse_args(["--out", str(tmp_path)]), False) == MSINNConfig()


def test_ray_train_two_workers(tmp_path, image_dir, local_ray):
    """On the suite's shared local cluster of 2 CPUs: one CPU per worker."""
    import msinn
    from msinn.training.distributed import run_ray

    out = tmp_path / "run"
    settings = replace(_settings(out, data=str(image_dir), steps=3, log_every=1), threads=0)
    metrics = run_ray(settings, TINY, workers=2, storage_path=str(tmp_path / "ray"))
    assert metrics["step"] == 3 and np.isfinite(metrics["loss"])
    obj = torch.load(out / "last.pt", weights_only=True)
    assert obj["step"] == 3 and obj["format"] == "msinn-checkpoint"
    assert len(list((tmp_path / "ray").rglob("last.pt"))) == 1  # Ray Train's copy of the latest checkpoint
    torch.manual_seed(settings.seed)
    fresh = msinn.MSINN(TINY).state_dict()  # the workers' starting weights (before ActNorm's start)
    convs = [k for k in fresh if k.endswith("conv.weight") or k.endswith("conv1.weight")]
    changed = [k for k in convs if not torch.equal(obj["state_dict"][k], fresh[k])]
    assert convs and len(changed) == len(convs)
    assert msinn.load(str(out / "last.pt")).config == TINY
    # A single process continues the Ray run.
    t = Trainer(replace(settings, steps=4), images=load_images(str(image_dir)))
    assert t.step == 3
    t.run()
    assert torch.load(out / "last.pt", weights_only=True)["step"] == 4


def test_data_sets_are_drawn_by_their_weights():
    """With several data sets a crop draws its set by weight first: a small set can count as much as a large one."""
    dark = [np.zeros((80, 80, 3), np.uint8)] * 9
    light = [np.full((80, 80, 3), 255, np.uint8)]
    for weights, expect in (([0.8, 0.2], 0.2), ([1.0, 0.0], 0.0), (None, 0.1)):
        sampler = CropSampler([dark, light], 64, weights)
        crops = sampler.batch(500, torch.Generator().manual_seed(1))
        share = float((crops.mean(dim=(1, 2, 3)) > 0.5).float().mean())
        assert abs(share - expect) < 0.05, (weights, share)
    with pytest.raises(ValueError, match="weights"):
        CropSampler([dark, light], 64, [1.0])


def test_training_images_that_do_not_open_are_skipped_with_a_count(tmp_path, image_dir, caplog):
    import logging
    import shutil

    for name in ("0.png", "1.png"):
        shutil.copy(image_dir / name, tmp_path / name)
    (tmp_path / "2.png").write_bytes(b"not a png")
    caplog.set_level(logging.WARNING, logger="msinn.train")
    assert len(load_images(str(tmp_path))) == 2
    assert "1 of 3 images" in caplog.text and "2.png" in caplog.text


@pytest.mark.slow
def test_a_budgeted_run_trains_validates_exports_and_is_continued(tmp_path, image_dir, tiny_float_checkpoint):
    """scripts/train_budget.py: within its budget it trains, checkpoints, validates and exports; the next call
    resumes the same run (here on the CPU; on a lent GPU with --device cuda)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_budget", ROOT / "scripts" / "train_budget.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    run = tmp_path / "run"
    base = ["--run", str(run), "--budget-minutes", "0.2", "--reserve-seconds", "6", "--device", "cpu",
            "--val-data", str(image_dir), "--batch-size", "2", "--patch-size", "64"]
    # a tiny model stands in for the bundled one (the default start): the script's work is the same
    assert mod.main([*base, "--data", str(image_dir), "--init-from", tiny_float_checkpoint, "--lr", "1e-5",
                     "--model-flags", "--threads", "1"]) == 0
    first = json.loads((run / "validation.json").read_text())
    assert first["step"] > 0 and len(first["validation"]) == 3 and (run / "export.pt").exists()
    assert mod.main(base) == 0
    second = json.loads((run / "validation.json").read_text())
    assert second["step"] > first["step"]
    assert "optimizer" not in torch.load(run / "export.pt", weights_only=True)
