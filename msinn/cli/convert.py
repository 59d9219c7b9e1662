"""``msinn convert``: a float model to the portable coding profile."""

from __future__ import annotations

import argparse
import json
import sys
import time


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="msinn convert",
        description=(
            "Convert a float MS-INN model (a registered name, this project's checkpoint, or the reference "
            "implementation's published checkpoint) to the portable profile, whose files decode to the same "
            "pixels on every machine. Keep the output file: files coded with it name its weights hash."
        ),
    )
    p.add_argument("model", help="registered float model name or checkpoint path")
    p.add_argument("output", help="portable model file to write (.pt; a name ending in .pt.xz is written xz-packed)")
    p.add_argument(
        "--calibration", required=True, help="folder of photos like the ones you will code (not your test set)"
    )
    p.add_argument("--images", type=int, default=16, help="calibration photos to use (default 16)")
    p.add_argument("--crop", type=int, default=256, help="side of each photo's centre crop (default 256)")
    return p


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    import msinn
    from msinn.checkpoint import CheckpointError, save_portable
    from msinn.portable.convert import calibration_crops, convert

    try:
        model = msinn.load(args.model)
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"msinn convert: {exc}", file=sys.stderr)
        return 2
    if model.profile != "float32":
        print(f"msinn convert: {args.model} is already a {model.profile} model", file=sys.stderr)
        return 2
    try:
        images = calibration_crops(args.calibration, args.crop, args.images)
    except (ValueError, OSError) as exc:
        print(f"msinn convert: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    meta = {"converted_from": model.model_name, "source_sha256": model.weights_sha256,
            "calibration_images": len(images), "calibration_crop": args.crop}
    lambdas = (getattr(model, "checkpoint_meta", None) or {}).get("lambdas")
    if lambdas is not None:  # what each qp trades: files of several weights are compared by it (weights_set)
        meta["lambdas"] = [float(v) for v in lambdas]
    portable = convert(model, images, meta=meta)
    save_portable(args.output, portable)
    print(json.dumps({"output": args.output, "sha256": portable.weights_sha256, "from": meta["converted_from"],
                      "seconds": round(time.perf_counter() - t0, 1)}))
    return 0
