"""``msinn train``: rate-distortion training, resumable, on one process or on Ray Train.

Settings come from three layers, later ones winning: the defaults of
:class:`~msinn.training.loop.TrainSettings`, the settings stored in ``OUT/last.pt``
when the run is resumed, and the flags given. So ``msinn train --out DIR``
alone continues a run exactly as it was started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from ..config import MSINNConfig
    from ..training.loop import TrainSettings

log = logging.getLogger("msinn.train")

# A resumed run takes every other setting from its checkpoint unless a flag overrides it
# (device and threads included: CPU thread count changes the float results).
_NOT_INHERITED = ("out",)
_MODEL_FLAGS = ("N", "M", "depths", "context_channels", "anchor_num", "flow_permutation", "flow_coupling")
PRESETS = {
    "released": {},
    "small": {"N": 48, "M": 64, "depths": (3, 3, 3, 3), "context_channels": 48, "anchor_num": 9,
              "post_process": False},
}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="msinn train", description="Train an MS-INN model (resumes OUT/last.pt).")
    g = p.add_argument_group("data and output")
    g.add_argument("--data", nargs="+", help="folder(s) or fsspec URI(s) of training images (taken from the checkpoint "
                   "on resume)")
    g.add_argument("--data-weights", type=float, nargs="+",
                   help="with several --data sets: the share of crops drawn from each (default: every image equally)")
    g.add_argument("--storage-options", type=json.loads, help="JSON fsspec storage options for --data/--val-data")
    g.add_argument("--out", required=True, help="run folder: last.pt and history.jsonl; resumed when last.pt exists")
    g.add_argument("--init-from", help="start from this checkpoint (more anchors: new ones copy the top anchor)")
    g.add_argument("--export", help="after training, write the weights without optimiser state here")
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=int, help="train until this global step")
    g.add_argument("--batch-size", type=int, help="crops per step (over all workers)")
    g.add_argument("--patch-size", type=int, help="crop side in pixels (multiple of 64)")
    g.add_argument("--lr", type=float)
    g.add_argument("--clip-max-norm", type=float, help="gradient norm clip, 0 disables")
    g.add_argument("--seed", type=int)
    g.add_argument("--lambdas", type=float, nargs="+", help="lambda per anchor (default: the paper's)")
    g.add_argument("--max-minutes", type=float, help="stop with a checkpoint after this many minutes")
    g = p.add_argument_group("logging and validation")
    g.add_argument("--checkpoint-every", type=int)
    g.add_argument("--log-every", type=int)
    g.add_argument("--validate-every", type=int)
    g.add_argument("--val-data", help="folder of validation images (e.g. Kodak); centre crops per anchor")
    g.add_argument("--val-images", type=int)
    g.add_argument("--val-patch", type=int)
    g = p.add_argument_group("machine")
    g.add_argument("--device", choices=("cpu", "cuda"))
    g.add_argument("--threads", type=int, help="torch CPU threads (0: torch's default)")
    g.add_argument("--workers", type=int, default=1, help="data-parallel Ray Train workers (one GPU each on cuda)")
    g.add_argument("--ray", action="store_true", help="use Ray Train even with one worker")
    g.add_argument("--ray-address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)")
    g.add_argument("--ray-storage", help="where Ray Train keeps its run state (default OUT/ray)")
    g = p.add_argument_group("model (new runs only; a resumed run keeps its checkpoint's model)")
    g.add_argument("--preset", choices=sorted(PRESETS), help="released: the paper's model; small: the CPU model")
    g.add_argument("--N", type=int, dest="N")
    g.add_argument("--M", type=int, dest="M")
    g.add_argument("--depths", type=int, nargs=4)
    g.add_argument("--context-channels", type=int)
    g.add_argument("--anchor-num", type=int)
    g.add_argument("--no-post-process", dest="post_process", action="store_false", default=None)
    g.add_argument("--no-lrp", dest="lrp", action="store_false", default=None)
    g.add_argument("--flow-permutation", choices=("invconv", "shuffle", "reverse", "cross"))
    g.add_argument("--flow-coupling", choices=("affine", "additive"))
    return p


def _saved_settings(out: str) -> dict | None:
    """The settings stored in OUT/last.pt, or None for a new run."""
    ckpt = Path(out) / "last.pt"
    if not ckpt.exists():
        return None
    from ..checkpoint import read_checkpoint

    return dict(read_checkpoint(ckpt)[2].get("settings", {}))


def _absolute(uri: str | None) -> str | None:
    return uri if uri is None or "://" in uri else os.path.abspath(uri)


def build_settings(args: argparse.Namespace, saved: dict | None) -> TrainSettings:
    """Defaults < checkpoint's settings < flags: a bare ``--out`` resumes the run as it was started."""
    from ..training.loop import TrainSettings

    fields = {f.name for f in dataclasses.fields(TrainSettings)}
    values = {k: v for k, v in (saved or {}).items() if k in fields and k not in _NOT_INHERITED}
    if "init_gain_range" in values:
        values["init_gain_range"] = tuple(values["init_gain_range"])
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    values.update(given)
    values["out"] = args.out
    if not values.get("data"):
        raise ValueError("--data is required for a new run")
    from ..training.loop import DATA_SEPARATOR, data_sets

    if isinstance(values["data"], list):
        values["data"] = DATA_SEPARATOR.join(values["data"])
    values["data"] = DATA_SEPARATOR.join(_absolute(d) for d in data_sets(values["data"]))
    values["val_data"] = _absolute(values.get("val_data"))
    return TrainSettings(**values)


def build_config(args: argparse.Namespace, resuming: bool) -> MSINNConfig | None:
    """Preset (or the --init-from model, or the released defaults) with the model flags on top."""
    from ..config import MSINNConfig

    flags = {k: getattr(args, k) for k in (*_MODEL_FLAGS, "post_process", "lrp") if getattr(args, k) is not None}
    if resuming:
        if flags or args.preset:
            log.warning("resuming: model flags are ignored, the checkpoint's model is kept")
        return None
    if args.preset:
        base = MSINNConfig(**PRESETS[args.preset])
    elif args.init_from:
        from ..checkpoint import read_checkpoint

        base = read_checkpoint(args.init_from)[0]
    else:
        base = MSINNConfig()
    return dataclasses.replace(base, **flags)


def _train(args: argparse.Namespace, settings: TrainSettings, config: MSINNConfig | None) -> None:
    max_seconds = args.max_minutes * 60 if args.max_minutes is not None else None
    if args.workers > 1 or args.ray:
        from ..training.distributed import run_ray

        run_ray(settings, config, args.init_from, workers=args.workers, storage_options=args.storage_options,
                max_seconds=max_seconds, storage_path=args.ray_storage, ray_address=args.ray_address)
        return
    from ..training.loop import Trainer

    trainer = Trainer(settings, config, args.init_from, storage_options=args.storage_options)
    log.info("model %s, %d parameters, from step %d to %d", trainer.config,
             sum(p.numel() for p in trainer.model.parameters()), trainer.step, settings.steps)
    trainer.run(max_seconds)


def _export(out: str, dest: str) -> None:
    from ..training.loop import export_weights

    digest = export_weights(Path(out) / "last.pt", dest)
    log.info("exported weights to %s (sha256 %s)", dest, digest)


def main(argv: list[str]) -> int:
    """``msinn train ARGS``; returns the exit status."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stdout)
    logging.getLogger("msinn").setLevel(logging.INFO)
    try:
        saved = _saved_settings(args.out)
        settings = build_settings(args, saved)
        config = build_config(args, saved is not None)
        _train(args, settings, config)
        if args.export:
            _export(args.out, args.export)
    except (ValueError, FileNotFoundError) as exc:  # CheckpointError is a ValueError
        print(f"msinn train: error: {exc}", file=sys.stderr)
        return 1
    return 0
