"""Train within a wall-clock budget, then validate and export: one call per lent GPU (or CPU) session.

    # first call: start from the bundled float weights (or any checkpoint), on CUDA
    python scripts/train_budget.py --run RUN --budget-minutes 8 --device cuda \\
        --init-from msinn/weights/msinn-small-2026-12b.pt.xz --data DATA/train DATA/train-extra --data-weights 0.5 0.5
    # every later call, on any machine: resumes RUN/last.pt where it stopped
    python scripts/train_budget.py --run RUN --budget-minutes 8 --device cuda

The budget covers everything: the model and data are loaded, training runs
until the time left is what validation and export need (measured on this
call's own steps, with a margin), then a checkpoint is written
(``RUN/last.pt``, with the optimiser state: any later call, on any device,
continues from it), the model is validated on fixed crops
(``RUN/validation.json``) and its weights are exported in float16
(``RUN/export.pt``, what ``msinn convert`` and the registry take). A run
continued on the same device with the same settings ends with exactly the
weights of an uninterrupted one; across devices it continues, but the
float results differ by rounding.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RESERVE_SECONDS = 45.0  # start-up beyond the measured steps: checkpoint write, validation, export


def main(argv: list[str] | None = None) -> int:
    t0 = time.time()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder: last.pt, history.jsonl, validation.json, export.pt")
    p.add_argument("--budget-minutes", type=float, required=True, help="wall clock for this whole call")
    p.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    p.add_argument("--init-from", help="new runs: the checkpoint to start from (default: the bundled float model)")
    p.add_argument("--data", nargs="+", help="new runs: training image folders (resumed runs keep theirs)")
    p.add_argument("--data-weights", type=float, nargs="+")
    p.add_argument("--val-data", default=str(REPO.parent / "shared" / "datasets" / "kodak"))
    p.add_argument("--batch-size", type=int, help="default: 16 on CUDA, 8 on CPU (new runs)")
    p.add_argument("--patch-size", type=int, help="default: 256 on CUDA, 128 on CPU (new runs)")
    p.add_argument("--lr", type=float)
    p.add_argument("--lambdas", type=float, nargs="+", help="new runs: one per anchor (default: the checkpoint's)")
    p.add_argument("--anchor-num", type=int)
    p.add_argument("--reserve-seconds", type=float, default=RESERVE_SECONDS,
                   help="of the budget, kept for loading, the checkpoint, validation and export")
    p.add_argument("--model-flags", nargs=argparse.REMAINDER, default=[],
                   help="new runs: further msinn train flags (model shape, threads), given last")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("train_budget")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("train_budget: --device cuda but no GPU is visible here (use --device cpu)", file=sys.stderr)
        return 2
    from msinn.cli.train import main as train
    from msinn.registry import default_float_model

    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    resuming = (run / "last.pt").exists()
    cuda = args.device == "cuda"
    flags = ["--out", str(run), "--device", args.device, "--checkpoint-every", "500", "--validate-every", "1000000"]
    if not resuming:
        init = args.init_from or str(default_float_model().path)  # the default's float weights
        if not args.data:
            print("train_budget: a new run needs --data", file=sys.stderr)
            return 2
        flags += ["--init-from", init, "--data", *args.data, "--seed", "21",
                  "--batch-size", str(args.batch_size or (16 if cuda else 8)),
                  "--patch-size", str(args.patch_size or (256 if cuda else 128)),
                  "--lr", str(args.lr or 2e-4)]
        if args.data_weights:
            flags += ["--data-weights", *map(str, args.data_weights)]
        if args.anchor_num:
            flags += ["--anchor-num", str(args.anchor_num)]
        if args.lambdas:
            flags += ["--lambdas", *map(str, args.lambdas)]
        flags += args.model_flags
    else:
        for name in ("batch_size", "patch_size", "lr"):
            v = getattr(args, name)
            if v is not None:
                flags += [f"--{name.replace('_', '-')}", str(v)]
    left = args.budget_minutes * 60 - (time.time() - t0) - args.reserve_seconds
    if left <= 1:
        print(f"train_budget: a budget of {args.budget_minutes} minutes leaves no time to train", file=sys.stderr)
        return 2
    log.info("%s %s for %.0f s of training", "resuming" if resuming else "starting", run, left)
    # the trainer stops at its own time limit with a checkpoint (its clock starts once data are loaded: the
    # reserve covers loading, the checkpoint, validation and export)
    rc = train([*flags, "--max-minutes", f"{left / 60:.4f}"])
    if rc:
        return rc
    report = validate_and_export(run, args.val_data, args.device)
    report["wall_seconds"] = round(time.time() - t0, 1)
    (run / "validation.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report))
    return 0


def validate_and_export(run: Path, val_data: str, device: str) -> dict:
    """Fixed Kodak centre crops at three anchors, then the weights without optimiser state, in float16."""
    import torch

    from msinn.checkpoint import build_model, read_checkpoint
    from msinn.training.loop import center_crops, export_weights, load_images, validate, validation_anchors

    cfg, sd, meta = read_checkpoint(run / "last.pt")
    model = build_model(cfg, sd).to(device)
    crops = center_crops(load_images(val_data, 4), 256)
    anchors = validation_anchors(cfg.anchor_num)
    with torch.no_grad():
        rows = validate(model, crops, anchors, device)
    digest = export_weights(run / "last.pt", run / "export.pt", half=True)
    return {"step": int(meta.get("step", 0)), "validation": rows, "export": str(run / "export.pt"),
            "export_sha256": digest, "device": device}


if __name__ == "__main__":
    sys.exit(main())
