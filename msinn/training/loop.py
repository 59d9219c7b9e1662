"""Rate-distortion training with the paper's objective.

Each sample draws a random rate anchor k; the loss is
``lambda_k * 255^2 * MSE + bpp`` (lambdas from the paper). All randomness of
step ``s`` (crops, anchors, quantisation noise) derives from ``(seed, s)``
alone, so a run stopped and resumed from its checkpoint ends with exactly
the weights of an uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..atomic import write_atomic
from ..checkpoint import FORMAT, FORMAT_VERSION, load_object, parse_float, read_checkpoint, save_atomic, save_checkpoint
from ..config import MSINNConfig
from ..image_files import list_images, read_image_rgb
from ..metrics import psnr_from_mse
from ..model import MSINN, is_derived_key, likelihood_bits

log = logging.getLogger("msinn.train")

# The paper's lambda per anchor (anchor 0 = lowest rate).
PAPER_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800, 0.320, 0.569, 1.012, 1.8)


@dataclass
class TrainSettings:
    data: str  # one folder or URI, or several joined by DATA_SEPARATOR (``--data A B``)
    out: str
    steps: int = 100_000
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 1e-4
    clip_max_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 200
    log_every: int = 50
    validate_every: int = 1000
    val_data: str | None = None
    val_images: int = 6
    val_patch: int = 256
    device: str = "cpu"
    threads: int = 0
    lambdas: list[float] = field(default_factory=list)
    init_gain_range: tuple[float, float] = (1.0, 12.0)
    # with several data sets: the share of crops drawn from each (empty: every image equally likely)
    data_weights: list[float] = field(default_factory=list)


DATA_SEPARATOR = "|"  # between data sets in ``TrainSettings.data`` (a string, so older checkpoints read alike)


def data_sets(data: str) -> list[str]:
    """The data sets of ``TrainSettings.data``."""
    return [d for d in str(data).split(DATA_SEPARATOR) if d]


def lambdas_for(anchor_num: int, lambdas: list[float] | None = None) -> list[float]:
    lam = list(lambdas) if lambdas else list(PAPER_LAMBDAS[:anchor_num])
    if len(lam) != anchor_num:
        raise ValueError(f"{anchor_num} anchors need {anchor_num} lambdas, got {len(lam)}")
    return lam


def rd_loss(out: dict, x: torch.Tensor, lambdas: torch.Tensor) -> dict[str, torch.Tensor]:
    """Paper objective: per-sample lambda-weighted MSE (x 255^2) plus batch bpp."""
    n, _, h, w = x.shape
    bpp = likelihood_bits(out["likelihoods"]) / (n * h * w)
    mse = ((out["x_hat"] - x) ** 2).mean(dim=(1, 2, 3))
    return {"loss": 255**2 * (lambdas * mse).mean() + bpp, "bpp": bpp, "mse": mse.mean()}


@torch.no_grad()
def init_gains(model: MSINN, lo: float, hi: float) -> None:
    """Spread the anchors' gains geometrically so training starts with distinct rates."""
    a = model.anchor_num
    g = torch.exp(torch.linspace(math.log(lo), math.log(hi), a)).view(a, 1, 1, 1)
    model.gain.copy_(g.expand_as(model.gain))
    model.inv_gain.copy_((1 / g).expand_as(model.inv_gain))
    model.scale_gain.copy_(g.expand_as(model.scale_gain))


GAIN_KEYS = ("gain", "inv_gain", "scale_gain")  # the per-anchor tensors


def extend_anchors(sd: dict[str, torch.Tensor], anchor_num: int, below: int = 0) -> dict[str, torch.Tensor]:
    """Fine-tuning to more anchors, in ascending-lambda order.

    New rows above the top anchor start as copies of it (the paper's way of
    going from 8 to 12 anchors). ``below`` new rows under the lowest anchor
    continue the gains' geometric progression downwards, so a lower rate
    starts close to where it will settle instead of as a copy.
    """
    out = dict(sd)
    for k in GAIN_KEYS:
        v = sd[k]
        above = anchor_num - v.shape[0] - below
        if above < 0 or below < 0:
            raise ValueError(f"checkpoint has {v.shape[0]} anchors; cannot make {anchor_num} with {below} below")
        step = v[0:1] / v[1:2] if v.shape[0] > 1 else torch.ones_like(v[0:1])
        lower = [v[0:1] * step**i for i in range(below, 0, -1)]
        extra = v[-1:].expand(above, *v.shape[1:])
        out[k] = torch.cat((*lower, v, extra), dim=0).contiguous()
    return out


def extrapolate_top_anchors(sd: dict[str, torch.Tensor], first: int) -> dict[str, torch.Tensor]:
    """Restart anchors ``first`` and above on the trained anchors' geometric progression.

    Rows copied from the top anchor barely move in training (the 2026-12 CPU
    run: three copies stayed within 0.8% of the top's gains after 4300 steps),
    so they code at nearly the top rate. Each channel's gain, inverse gain and
    scale gain instead continue the ratio between the two anchors below
    ``first``, which is nearly constant across the trained range.
    """
    out = dict(sd)
    for k in GAIN_KEYS:
        v = sd[k]
        if not 2 <= first < v.shape[0]:
            raise ValueError(f"anchors {first}.. cannot be extrapolated in a model of {v.shape[0]} anchors")
        top, step = v[first - 1], v[first - 1] / v[first - 2]
        rows = [top * step**i for i in range(1, v.shape[0] - first + 1)]
        out[k] = torch.cat((v[:first], torch.stack(rows)), dim=0).contiguous()
    return out


class CropSampler:
    """Random crops from images held in memory, reproducible per step.

    With several image sets and ``weights``, a crop first draws its set by
    weight, then an image of it: a small set of graphics can then count for
    as much as a large set of photos. One set draws exactly as before sets
    existed, so runs started then resume to the same weights.
    """

    def __init__(self, images: list[np.ndarray] | list[list[np.ndarray]], patch: int,
                 weights: list[float] | None = None):
        groups = images if images and isinstance(images[0], list) else [images]
        self.groups = [[im for im in g if im.shape[0] >= patch and im.shape[1] >= patch] for g in groups]
        if not any(self.groups):
            raise ValueError(f"no training image is at least {patch}x{patch}")
        if weights:
            if len(weights) != len(self.groups) or any(w < 0 for w in weights) or not sum(weights) > 0:
                raise ValueError(f"{len(self.groups)} data sets need as many non-negative weights, got {weights}")
            w = [wi if g else 0.0 for wi, g in zip(weights, self.groups)]
            self.cumulative = torch.tensor(w, dtype=torch.float64).cumsum(0) / sum(w)
        else:
            self.cumulative = None
        self.images = [im for g in self.groups for im in g]
        self.patch = patch

    def _image(self, gen: torch.Generator) -> np.ndarray:
        if self.cumulative is None or len(self.groups) == 1:
            return self.images[int(torch.randint(len(self.images), (1,), generator=gen))]
        u = float(torch.rand(1, generator=gen, dtype=torch.float64))
        g = self.groups[min(int(torch.searchsorted(self.cumulative, u, right=True)), len(self.groups) - 1)]
        return g[int(torch.randint(len(g), (1,), generator=gen))]

    def batch(self, n: int, gen: torch.Generator) -> torch.Tensor:
        crops = []
        p = self.patch
        for _ in range(n):
            im = self._image(gen)
            top = int(torch.randint(im.shape[0] - p + 1, (1,), generator=gen))
            left = int(torch.randint(im.shape[1] - p + 1, (1,), generator=gen))
            crop = im[top : top + p, left : left + p]
            if int(torch.randint(2, (1,), generator=gen)):
                crop = crop[:, ::-1]
            crops.append(torch.from_numpy(np.ascontiguousarray(crop)))
        return torch.stack(crops).permute(0, 3, 1, 2).float().div(255)


def load_images(uri: str, limit: int | None = None, storage_options: dict | None = None) -> list[np.ndarray]:
    """All images under a folder or fsspec URI as RGB arrays: crops are drawn from memory.

    A file that does not open is skipped and counted in one warning: one bad
    file must not stop an hours-long run at its start (or at a resume).
    """
    paths = list_images(uri, storage_options)
    if limit:
        paths = paths[:limit]
    out, bad = [], []
    for p in paths:
        try:
            out.append(read_image_rgb(p, storage_options))
        except Exception as exc:  # noqa: BLE001 -- any decoder failure: skip the file, say which
            bad.append(f"{p} ({type(exc).__name__}: {exc})")
    if bad:
        log.warning("%d of %d images under %s skipped (unreadable): %s", len(bad), len(paths), uri,
                    "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else ""))
    if not out:
        raise ValueError(f"{uri}: none of its {len(paths)} images could be read")
    return out


def center_crops(images: list[np.ndarray], size: int) -> list[torch.Tensor]:
    """Square centre crops (sides a multiple of 64, as coding needs): a fixed validation set."""
    out = []
    for im in images:
        h, w = im.shape[:2]
        s = min(size, h, w) // 64 * 64
        t, left = (h - s) // 2, (w - s) // 2
        crop = np.ascontiguousarray(im[t : t + s, left : left + s])
        out.append(torch.from_numpy(crop).permute(2, 0, 1).float().div(255))
    return out


@torch.no_grad()
def validate(model: MSINN, crops: list[torch.Tensor], anchors: list[int], device: str) -> list[dict]:
    """Rate estimate and PSNR per anchor on fixed crops (eval mode, real rounding)."""
    was = model.training
    model.eval()
    rows = []
    for a in anchors:
        bits = pixels = 0.0
        psnrs = []
        for c in crops:
            x = c[None].to(device)
            out = model(x, a)
            bits += float(likelihood_bits(out["likelihoods"]))
            pixels += x.shape[2] * x.shape[3]
            mse = float(((out["x_hat"].clamp(0, 1) - x) ** 2).mean())
            psnrs.append(psnr_from_mse(max(mse, 1e-12)))
        rows.append({"qp": a, "bpp": bits / pixels, "psnr": float(np.mean(psnrs))})
    model.train(was)
    return rows


def _step_generator(seed: int, step: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + step) % (2**63))
    return g


def validation_anchors(anchor_num: int) -> list[int]:
    """The lowest, middle and top anchors: what every validation reports, so runs compare line by line."""
    return sorted({0, anchor_num // 2, anchor_num - 1})


class Trainer:
    """Owns model, optimiser and data; ``run()`` trains to ``settings.steps`` with checkpoints.

    ``out/last.pt`` is resumed when it exists (unless ``resume=False``), else
    ``init_from`` seeds the weights (more anchors than it has: see
    :func:`extend_anchors`), else the model starts fresh. Subclasses (the Ray
    Train worker) override the hooks ``train_step``, ``save``, ``_record``,
    ``_on_log``, ``_validate`` and ``_time_up``.
    """

    is_chief = True  # the process that logs, validates and writes files

    def __init__(
        self,
        settings: TrainSettings,
        config: MSINNConfig | None = None,
        init_from: str | None = None,
        images: list[np.ndarray] | None = None,
        *,
        resume: bool = True,
        storage_options: dict | None = None,
    ):
        self.s = settings
        if settings.threads:
            torch.set_num_threads(settings.threads)
        if str(settings.device).startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # crops have one fixed size: let cuDNN pick its fastest kernels
        self.ckpt_path = Path(settings.out) / "last.pt"
        self.history_path = Path(settings.out) / "history.jsonl"
        self.step = 0
        self.skipped_steps = 0
        resume = resume and self.ckpt_path.exists()
        saved_meta: dict = {}
        cfg0: MSINNConfig | None = None
        meta0: dict = {}
        if resume:
            name, saved = load_object(self.ckpt_path)  # read once: the config here, the training state below
            config, _, saved_meta = parse_float(name, saved)
        elif init_from:
            cfg0, sd0, meta0 = read_checkpoint(init_from)
            config = config or cfg0
        config = config or MSINNConfig()
        self.config = config
        # Lambdas: given, else the resumed run's, else those of an --init-from model with as many anchors.
        init_lambdas = meta0.get("lambdas") if cfg0 is not None and cfg0.anchor_num == config.anchor_num else None
        self.lambdas = lambdas_for(config.anchor_num, settings.lambdas or saved_meta.get("lambdas") or init_lambdas)
        if cfg0 is not None and config.anchor_num != cfg0.anchor_num:
            # New lambdas under the checkpoint's lowest become anchors below it, the rest go above.
            old_low = min(lambdas_for(cfg0.anchor_num, meta0.get("lambdas")))
            below = sum(lam < old_low for lam in self.lambdas)
            sd0 = extend_anchors(sd0, config.anchor_num, below)
        torch.manual_seed(settings.seed)
        self.model = MSINN(config).to(settings.device)
        self.model.train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=settings.lr)
        if resume:
            self.load_training_state(saved)
            _warn_settings_drift(saved_meta.get("settings", {}), asdict(settings))
            self._trim_history()
            log.info("resumed from %s at step %d", self.ckpt_path, self.step)
        elif init_from:
            self.model.load_state_dict(sd0, strict=True)
            log.info("initialised from %s (%d anchors, lambdas %s)", init_from, config.anchor_num, self.lambdas)
        else:
            init_gains(self.model, *settings.init_gain_range)
        if images is None:
            groups = [load_images(d, storage_options=storage_options) for d in data_sets(settings.data)]
            images = groups if len(groups) > 1 else groups[0]
        self.images = images
        self.sampler = CropSampler(self.images, settings.patch_size, settings.data_weights or None)
        self.val_crops: list[torch.Tensor] = []
        if settings.val_data:
            val = load_images(settings.val_data, settings.val_images, storage_options)
            self.val_crops = center_crops(val, settings.val_patch)

    # ------------------------------------------------------------------ state
    def load_training_state(self, obj: dict) -> None:
        """Weights, optimiser and step from a checkpoint dict (``last.pt`` layout)."""
        self.model.load_state_dict(obj["state_dict"], strict=True)
        self.opt.load_state_dict(obj["optimizer"])
        for group in self.opt.param_groups:  # an explicit new learning rate wins over the saved one
            if group["lr"] != self.s.lr:
                log.info("learning rate %g (checkpoint had %g)", self.s.lr, group["lr"])
                group["lr"] = self.s.lr
        self.step = int(obj["step"])

    def training_state(self) -> dict:
        """What :meth:`load_training_state` needs, on the CPU (for broadcast to other workers)."""
        sd = {k: v.detach().cpu() for k, v in self.model.state_dict().items() if not is_derived_key(k)}
        return {"config": self.config.to_dict(), "state_dict": sd, "optimizer": self.opt.state_dict(),
                "step": self.step, "lambdas": self.lambdas}

    def _trim_history(self) -> None:
        """Drop history rows logged after the checkpoint: those steps are trained again."""
        if not self.history_path.exists():
            return
        lines = self.history_path.read_text().splitlines()
        kept = [ln for ln in lines if _history_step(ln) is not None and _history_step(ln) <= self.step]
        if len(kept) != len(lines):
            write_atomic(self.history_path, "".join(ln + "\n" for ln in kept))

    # ------------------------------------------------------------------ one step
    def draw_batch(self, step: int) -> tuple[torch.Tensor, list[int], int]:
        """Crops (on the CPU), anchor per crop and noise seed of a step: a function of (seed, step) only."""
        s = self.s
        gen = _step_generator(s.seed, step)
        x = self.sampler.batch(s.batch_size, gen)
        anchors = torch.randint(self.config.anchor_num, (s.batch_size,), generator=gen).tolist()
        noise_seed = int(torch.randint(2**62, (1,), generator=gen))
        return x, anchors, noise_seed

    def optimise(
        self, x: torch.Tensor, anchors: list[int], noise_seed: int, model: nn.Module | None = None
    ) -> dict[str, float]:
        """One optimiser step on a batch; ``model`` may wrap ``self.model`` (DDP)."""
        s = self.s
        lam = torch.tensor([self.lambdas[a] for a in anchors], device=x.device)
        torch.manual_seed(noise_seed)  # quantisation noise
        self.opt.zero_grad(set_to_none=True)
        out = (model or self.model)(x, anchors)
        losses = rd_loss(out, x, lam)
        losses["loss"].backward()
        # The norm is taken after DDP's all-reduce, so every worker takes the same decision.
        max_norm = s.clip_max_norm if s.clip_max_norm > 0 else float("inf")
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), max_norm)
        if torch.isfinite(grad_norm):
            self.opt.step()
        else:  # one bad batch must not poison the weights and every later checkpoint
            self.skipped_steps += 1
            log.warning("step %d: non-finite gradient norm, update skipped (%d so far)", self.step, self.skipped_steps)
        self.step += 1
        return {k: float(v.detach()) for k, v in losses.items()}

    def train_step(self) -> dict[str, float]:
        """One step of the run's deterministic schedule (the numerics exact resume relies on)."""
        x, anchors, noise_seed = self.draw_batch(self.step)
        return self.optimise(x.to(self.s.device), anchors, noise_seed)

    # ------------------------------------------------------------------ hooks
    def save(self) -> None:
        sd_meta = {"lambdas": self.lambdas, "settings": _jsonable(asdict(self.s)), "step": self.step}
        extra = {"optimizer": self.opt.state_dict(), "step": self.step}
        save_checkpoint(self.ckpt_path, self.model, meta=sd_meta, extra=extra)

    def _record(self, row: dict) -> None:
        self.history_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.history_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def _on_log(self, row: dict) -> None:
        log.info(
            "step %d loss %.4f bpp %.4f psnr %.2f %.1f img/s",
            row["step"], row["loss"], row["bpp"], row["psnr"], row["images_per_s"],
        )
        self._record(row)

    def _validate(self) -> None:
        rows = validate(self.model, self.val_crops, validation_anchors(self.config.anchor_num), self.s.device)
        log.info("validation step %d: %s", self.step,
                 " | ".join(f"qp{r['qp']} {r['bpp']:.3f} bpp {r['psnr']:.2f} dB" for r in rows))
        self._record({"step": self.step, "validation": rows})

    def _time_up(self, start: float, max_seconds: float | None) -> bool:
        return max_seconds is not None and time.time() - start > max_seconds

    # ------------------------------------------------------------------ loop
    def _summary(self, window: list[dict], seconds: float) -> dict:
        return {
            "step": self.step,
            "loss": float(np.mean([w["loss"] for w in window])),
            "bpp": float(np.mean([w["bpp"] for w in window])),
            "psnr": float(np.mean([psnr_from_mse(max(w["mse"], 1e-12)) for w in window])),
            "images_per_s": len(window) * self.s.batch_size / max(seconds, 1e-9),
        }

    def run(self, max_seconds: float | None = None) -> None:
        """Train to ``settings.steps``; past ``max_seconds`` save a checkpoint and return early."""
        s = self.s
        start = time.time()
        window: list[dict] = []
        t_window = time.time()
        bar = None
        if self.is_chief and sys.stderr.isatty():
            from tqdm import tqdm

            bar = tqdm(total=s.steps, initial=self.step, desc="train", unit="step")
        while self.step < s.steps:
            window.append(self.train_step())
            if bar:
                bar.update(1)
            if self.step % s.log_every == 0 or self.step == s.steps:
                self._on_log(self._summary(window, time.time() - t_window))
                window, t_window = [], time.time()
            if self.val_crops and (self.step % s.validate_every == 0 or self.step == s.steps):
                self._validate()
            if self.step % s.checkpoint_every == 0 or self.step == s.steps:
                self.save()
            if self._time_up(start, max_seconds):
                self.save()
                if self.is_chief:
                    log.info("time limit reached at step %d; checkpoint saved", self.step)
                break
        if bar:
            bar.close()


def _history_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a torn last line from a crash


# Settings whose change breaks the "resumed run equals uninterrupted run" property.
_NUMERIC_SETTINGS = ("seed", "batch_size", "patch_size", "lr", "clip_max_norm", "lambdas", "data", "data_weights")


def _warn_settings_drift(saved: dict, current: dict) -> None:
    """Say which settings differ from the checkpoint's: resuming is then not exact."""
    now = _jsonable(current)
    diff = {k: (saved[k], now[k]) for k in _NUMERIC_SETTINGS if k in saved and saved[k] != now.get(k)}
    if diff:
        log.warning("resuming with settings that differ from the checkpoint's (saved, now): %s", diff)


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def export_weights(
    ckpt: str | os.PathLike, dest: str | os.PathLike, half: bool = False, meta: dict | None = None
) -> str:
    """Strip optimiser state from a training checkpoint; returns the weights hash."""
    from ..checkpoint import build_model

    cfg, sd, old_meta = read_checkpoint(ckpt)
    sd = {k: v for k, v in sd.items() if not is_derived_key(k)}
    if half:
        sd = {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}
    model = build_model(cfg, sd)
    m = dict(old_meta)
    m.update(meta or {})
    obj = {"format": FORMAT, "version": FORMAT_VERSION, "config": cfg.to_dict(), "state_dict": sd, "meta": m}
    save_atomic(obj, dest)
    return model.weights_sha256  # build_model reads float16 as float32, as loading the file will
