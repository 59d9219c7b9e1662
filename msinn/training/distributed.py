"""Data-parallel training on Ray Train (``msinn train --workers N``).

Every worker draws the same global batch of a step as single-process
training does (a function of ``(seed, step)``) and trains on its own slice
of it, so ``--batch-size`` keeps its meaning and a run can move between one
process and several: rank 0 writes the same ``last.pt`` as :class:`Trainer`
and resumes from it. Rank 0 builds (or resumes) the model, runs the
data-dependent ActNorm initialisation on the step's full batch and
broadcasts weights, optimiser state and step before DDP wraps the model,
so all replicas start identical.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..config import MSINNConfig
from ..layers import ActNorm2d
from ..raylocal import init_ray
from .loop import DATA_SEPARATOR, Trainer, TrainSettings, data_sets

log = logging.getLogger("msinn.train")

def _absolute(uri: str | None) -> str | None:
    """Workers may run in another directory: local paths are made absolute, URIs kept."""
    if uri is None or "://" in uri:
        return uri
    return os.path.abspath(uri)


def run_ray(
    settings: TrainSettings,
    config: MSINNConfig | None = None,
    init_from: str | None = None,
    *,
    workers: int,
    storage_options: dict | None = None,
    max_seconds: float | None = None,
    storage_path: str | None = None,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Train with ``workers`` Ray Train workers (one GPU each when ``settings.device`` is cuda).

    Returns the metrics reported with the last checkpoint. The model
    checkpoint is ``OUT/last.pt``; Ray's run state and a copy of the latest
    ``last.pt`` go to ``storage_path`` (default ``OUT/ray``, may be a URI).
    """
    if workers < 1 or settings.batch_size % workers:
        raise ValueError(f"--batch-size {settings.batch_size} must be a multiple of --workers {workers}")
    init_ray(ray_address)
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    use_gpu = settings.device.startswith("cuda")
    data = DATA_SEPARATOR.join(_absolute(d) or d for d in data_sets(settings.data))
    settings = replace(settings, data=data, val_data=_absolute(settings.val_data),
                       out=os.path.abspath(settings.out))
    loop_config = {
        "settings": asdict(settings),
        "config": config.to_dict() if config else None,
        "init_from": _absolute(init_from),
        "storage_options": storage_options,
        "max_seconds": max_seconds,
        "use_gpu": use_gpu,
    }
    trainer = TorchTrainer(
        _train_loop,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=use_gpu),
        run_config=RunConfig(
            name=f"msinn-train-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=storage_path or str(Path(settings.out) / "ray"),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is not None:
        log.info("Ray Train checkpoint (a copy of last.pt): %s", result.checkpoint.path)
    return dict(result.metrics or {})


# ---------------------------------------------------------------------- worker side
class RayWorkerTrainer(Trainer):
    """A :class:`Trainer` on one Ray Train worker: trains on its slice of each step's batch."""

    def __init__(self, *args: Any, rank: int, world: int, **kwargs: Any):
        self.rank, self.world = rank, world
        self.ddp: torch.nn.Module | None = None
        self.last_row: dict = {}
        super().__init__(*args, **kwargs)

    @property
    def is_chief(self) -> bool:  # type: ignore[override]
        return self.rank == 0

    @torch.no_grad()
    def init_actnorm(self) -> None:
        """ActNorm's data-dependent start on the step's full batch, as a single process does it."""
        if all(bool(m.inited) for m in self.model.modules() if isinstance(m, ActNorm2d)):
            return
        x, _, _ = self.draw_batch(self.step)
        self.model.analyze(x.to(self.s.device))

    def wrap(self) -> None:
        """DDP over the replicas (a no-op with one worker)."""
        from ray.train.torch import prepare_model

        self.ddp = prepare_model(self.model, move_to_device=False)

    def train_step(self) -> dict[str, float]:
        x, anchors, noise_seed = self.draw_batch(self.step)
        b = self.s.batch_size // self.world
        lo = self.rank * b
        shard = x[lo : lo + b].to(self.s.device)
        metrics = self.optimise(shard, anchors[lo : lo + b], (noise_seed + self.rank) % 2**62, model=self.ddp)
        return self._mean_over_workers(metrics)

    def _mean_over_workers(self, metrics: dict[str, float]) -> dict[str, float]:
        """Equal slices: the mean of the workers' loss, bpp and MSE is the global batch's."""
        if self.world == 1:
            return metrics
        import torch.distributed as dist

        keys = sorted(metrics)
        t = torch.tensor([metrics[k] for k in keys], dtype=torch.float64, device=self.s.device)
        dist.all_reduce(t)
        return {k: float(v) / self.world for k, v in zip(keys, t.tolist())}

    def _time_up(self, start: float, max_seconds: float | None) -> bool:
        """Any worker over time stops all of them at the same step."""
        if max_seconds is None or self.world == 1:
            return super()._time_up(start, max_seconds)
        import torch.distributed as dist

        flag = torch.tensor([float(super()._time_up(start, max_seconds))], device=self.s.device)
        dist.all_reduce(flag)
        return bool(flag.item() > 0)

    def save(self) -> None:
        """Rank 0 writes ``last.pt``; every worker reports it to Ray Train (a barrier), with the metrics."""
        import ray.train

        metrics = {**self.last_row, "step": self.step}
        if not self.is_chief:
            ray.train.report(metrics)
            return
        super().save()
        with tempfile.TemporaryDirectory() as d:
            shutil.copy2(self.ckpt_path, Path(d) / "last.pt")
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def _record(self, row: dict) -> None:
        if self.is_chief:
            super()._record(row)

    def _on_log(self, row: dict) -> None:
        import ray.train

        self.last_row = row
        if self.is_chief:
            super()._on_log(row)
        ray.train.report(row)  # a barrier: every worker reports at the same steps


def _broadcast(obj: Any, rank: int, world: int, device: torch.device) -> Any:
    """Rank 0's object on every worker (torch's object broadcast: no size limit)."""
    if world == 1:
        return obj
    import torch.distributed as dist

    box = [obj if rank == 0 else None]
    dist.broadcast_object_list(box, src=0, device=device if device.type == "cuda" else None)
    return box[0]


def _build_trainer(settings: TrainSettings, cfg: dict, rank: int, world: int) -> RayWorkerTrainer:
    """Rank 0 resumes or initialises; the others take its state, then all wrap in DDP."""
    opts = cfg["storage_options"]
    config = MSINNConfig.from_dict(cfg["config"]) if cfg["config"] else None
    device = torch.device(settings.device)
    trainer = None
    state = None
    if rank == 0:
        trainer = RayWorkerTrainer(settings, config, cfg["init_from"], storage_options=opts, rank=rank, world=world)
        trainer.init_actnorm()
        state = trainer.training_state() if world > 1 else None
    state = _broadcast(state, rank, world, device)
    if trainer is None:
        trainer = RayWorkerTrainer(replace(settings, val_data=None), MSINNConfig.from_dict(state["config"]),
                                   resume=False, storage_options=opts, rank=rank, world=world)
        trainer.lambdas = list(state["lambdas"])
        trainer.load_training_state(state)
    trainer.wrap()
    return trainer


def _train_loop(cfg: dict) -> None:
    """Ray Train's per-worker entry point."""
    import ray.train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    logging.getLogger("msinn").setLevel(logging.INFO)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    settings = TrainSettings(**cfg["settings"])
    if cfg["use_gpu"]:
        from ray.train.torch import get_device

        settings = replace(settings, device=str(get_device()))
    else:
        settings = replace(settings, device="cpu")
    trainer = _build_trainer(settings, cfg, rank, world)
    if rank == 0:
        log.info("Ray Train: %d workers, %d crops each per step, from step %d",
                 world, settings.batch_size // world, trainer.step)
    trainer.run(cfg["max_seconds"])
