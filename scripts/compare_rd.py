"""Model against model from two ``msinn eval --json`` files of the same images: the gate for a new default.

    python scripts/compare_rd.py new.json docs/rd-kodak-12b-float.json

Prints the BD-rate (PSNR) of the first file's model against the second's over
the qps both files have, and how many images it codes in fewer bits. A third
codec is no referee: BD-rate against AVIF moves with the quality range a
curve covers, so a model whose anchors reach higher qualities can look better
against AVIF while needing more bits at every quality the other reaches.
Exit status 1 when the files share fewer than two qps or no image.

``--codecs-from FILE`` also prints the first file's BD-rate against each
classical codec measured in FILE on the same images (the README's run), as
``msinn eval`` summarises it: a model run without ``--codecs`` (say, with
``--also-model``) gets the README's figures without coding the codecs again.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _curve(points: list[dict], qps: list) -> tuple[list[float], list[float]]:
    rows = [p for p in points if p["qp"] in qps]
    return [p["bpp"] for p in rows], [p["psnr"] for p in rows]


def compare_files(new: dict, old: dict) -> dict:
    """BD-rate of ``new`` against ``old`` (mean curves, then per image) over their common qps."""
    from msinn.evaluation.bdrate import bd_rate

    qps = sorted({p["qp"] for p in new["points"]} & {p["qp"] for p in old["points"]})
    if len(qps) < 2:
        raise ValueError(f"the files share {len(qps)} qp(s); a BD-rate needs at least two")
    mine = {os.path.basename(im["image"]): im for im in new["per_image"]}
    per_image = {}
    for im in old["per_image"]:
        name = os.path.basename(im["image"])
        if name in mine:
            per_image[name] = bd_rate(*_curve(im["points"], qps), *_curve(mine[name]["points"], qps))
    if not per_image:
        raise ValueError("the files share no image")
    return {
        "new": new.get("model"),
        "old": old.get("model"),
        "qps": qps,
        "bd_rate": bd_rate(*_curve(old["points"], qps), *_curve(new["points"], qps)),
        "per_image": per_image,
    }


def against_codecs(new: dict, reference: dict) -> dict:
    """``new``'s per-image points summarised with ``reference``'s classical codecs on the same images."""
    from msinn.evaluation.rd import summarize

    theirs = {os.path.basename(im["image"]): im for im in reference["per_image"]}
    missing = [os.path.basename(im["image"]) for im in new["per_image"]
               if os.path.basename(im["image"]) not in theirs]
    if missing:
        raise ValueError(f"images without codec results in the reference: {', '.join(missing[:5])}")
    per_image = [{**im, "codecs": theirs[os.path.basename(im["image"])].get("codecs") or {}}
                 for im in new["per_image"]]
    codecs = sorted(per_image[0]["codecs"])
    if not codecs:
        raise ValueError("the reference holds no classical codecs")
    return summarize(per_image, [p["qp"] for p in per_image[0]["points"]], codecs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("new", help="msinn eval --json of the candidate")
    ap.add_argument("old", help="msinn eval --json of the model it would replace, on the same images")
    ap.add_argument("--codecs-from", metavar="FILE",
                    help="also the first file's BD-rate against the classical codecs of this eval file")
    args = ap.parse_args(argv)
    try:
        docs = [json.loads(Path(p).read_text()) for p in (args.new, args.old)]
        r = compare_files(*docs)
        codecs = against_codecs(docs[0], json.loads(Path(args.codecs_from).read_text())) if args.codecs_from else None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"compare_rd: {exc}", file=sys.stderr)
        return 1
    values = [v for v in r["per_image"].values() if v is not None]
    better = sum(v < 0 for v in values)
    print(f"{r['new']} against {r['old']}, qps {r['qps']}: BD-rate {r['bd_rate']:+.2f}% "
          f"(negative: fewer bits); {better} of {len(r['per_image'])} images better, "
          f"from {min(values):+.1f}% to {max(values):+.1f}%")
    if codecs is not None:
        for c, v in codecs["bd_rate"].items():
            why = codecs["bd_rate_reasons"].get(c)
            print(f"{r['new']} against {c}: " + (f"{v:+.2f}%" if v is not None else f"- ({why})"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
