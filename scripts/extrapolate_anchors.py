"""Restart a run's upper anchors on the gains' geometric progression, in place.

    python scripts/extrapolate_anchors.py RUN/last.pt --first 11

The step between the two phases of the e2 run (docs/training.md, 2026-12):
anchors added above the top start as copies and barely move, so their gain,
inverse gain and scale gain are set, per channel, by continuing the ratio
between the two anchors below ``--first``. Everything else in the checkpoint
(other weights, optimiser state, step, settings) is
kept, so ``msinn train --out RUN`` resumes from it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", help="a training run's last.pt (or an exported checkpoint)")
    ap.add_argument("--first", type=int, required=True, help="index of the lowest anchor to restart")
    args = ap.parse_args(argv)
    from msinn.checkpoint import load_object, save_atomic
    from msinn.training.loop import extrapolate_top_anchors

    try:
        obj = dict(load_object(args.checkpoint)[1])  # a run's last.pt or an exported file, packed or not
        obj["state_dict"] = extrapolate_top_anchors(obj["state_dict"], args.first)
    except (KeyError, ValueError) as exc:  # CheckpointError is a ValueError
        print(f"extrapolate_anchors: {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    save_atomic(obj, args.checkpoint)
    print(f"extrapolate_anchors: {args.checkpoint}: anchors {args.first}.. restarted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
