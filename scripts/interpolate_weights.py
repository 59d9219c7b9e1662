"""Mix a fine-tuned model with the model it started from: one cheap lever on the photo/graphics trade.

    python scripts/interpolate_weights.py TUNED.pt BASE.pt --alpha 0.5 --out mixed.pt

``alpha`` is the tuned model's share (1: the tuned model, 0: the base, for
the anchors both have). Anchors only the tuned model has keep its weights.
The output is a float checkpoint: gate it like any candidate
(docs/training.md, "Publishing a new default").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("tuned", help="float checkpoint of the fine-tuned model (exported or a run's last.pt)")
    ap.add_argument("base", help="float checkpoint it was fine-tuned from")
    ap.add_argument("--alpha", type=float, required=True, help="the tuned model's share, 0..1")
    ap.add_argument("--out", required=True, help="where to write the mixed float checkpoint")
    args = ap.parse_args(argv)
    from msinn.checkpoint import CheckpointError
    from msinn.training.interpolate import interpolate_checkpoints

    try:
        digest = interpolate_checkpoints(args.tuned, args.base, args.alpha, args.out)
    except (CheckpointError, ValueError, OSError) as exc:
        print(f"interpolate_weights: {exc}", file=sys.stderr)
        return 2
    print(f"interpolate_weights: wrote {args.out} (alpha {args.alpha}, weights {digest[:16]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
