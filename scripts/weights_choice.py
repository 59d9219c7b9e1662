"""What a per-image choice between several weights of the model would give, from their ``msinn eval --json`` files.

    python scripts/weights_choice.py docs/rd-graphics.json graphics-g1.json --lambdas-from g1.pt

Every file must hold the same images at the same qps. For each image and qp
the weights with the smaller ``bpp + lambda_qp * 255^2 * MSE`` are kept (MSE of
pixels in [0, 1], so the PSNR gives it; the
training loss at that anchor: weights trained with the same lambdas share what
a qp means, so the smaller loss is the better point), and the chosen points
are summarised as ``msinn eval`` summarises its own (mean bpp and PSNR per qp,
BD-rate against every classical codec of the first file, which must carry
them: the README's run). The first file's model alone is printed beside it,
so the two rows are measured on the same images and codecs.

This is an estimate for a per-image choice of weights before an encoder makes
one; each weights' points are real files, the choice between them is made here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def lambdas_of(source: str) -> list[float]:
    """The per-anchor lambdas a checkpoint was trained with (its ``meta``)."""
    from msinn.checkpoint import load_object

    _, obj = load_object(source)
    meta = obj.get("meta")
    lam = meta.get("lambdas") if isinstance(meta, dict) else None
    if not lam:
        raise ValueError(f"{source}: the checkpoint records no training lambdas; give --lambdas")
    return [float(v) for v in lam]


def loss(point: dict, lam: float) -> float:
    """The training loss of one measured point, as the encoder's choice computes it (``weights_set.rd_cost``)."""
    from msinn.weights_set import rd_cost

    return rd_cost(point["bpp"], point["psnr"], lam)


def choose(evals: list[dict], lambdas: list[float]) -> tuple[list[dict], list[int]]:
    """Per image, the first file's entry with each qp's point taken from the weights of lowest loss; and how
    many (image, qp) points each file gave."""
    by_name = []
    for n, e in enumerate(evals):
        if not e.get("per_image"):
            raise ValueError(f"file {n + 1} holds no per-image results")
        names = [os.path.basename(im["image"]) for im in e["per_image"]]
        twice = sorted({x for x in names if names.count(x) > 1})
        if twice:  # matched by file name: two folders' a.png would be one image
            raise ValueError(f"file {n + 1} names two images {twice[0]}; evaluate one folder per file")
        by_name.append(dict(zip(names, e["per_image"])))
    names = list(by_name[0])
    missing = [n for n in names if any(n not in b for b in by_name[1:])]
    if missing:
        raise ValueError(f"images missing from a later file: {', '.join(missing[:5])}")
    wins = [0] * len(evals)
    out = []
    for name in names:
        ims = [b[name] for b in by_name]
        qps = [p["qp"] for p in ims[0]["points"]]
        if any([p["qp"] for p in im["points"]] != qps for im in ims[1:]):
            raise ValueError(f"{name}: the files coded other qps")
        points = []
        for i, qp in enumerate(qps):
            lam = lambdas[int(qp)] if float(qp).is_integer() and 0 <= int(qp) < len(lambdas) else None
            if lam is None:
                raise ValueError(f"qp {qp}: no lambda (fractional or beyond the {len(lambdas)} anchors)")
            k = min(range(len(ims)), key=lambda j: loss(ims[j]["points"][i], lam))
            wins[k] += 1
            points.append(ims[k]["points"][i])
        out.append({**ims[0], "points": points})
    return out, wins


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("evals", nargs="+", help="msinn eval --json files, the first with the classical codecs")
    how = ap.add_mutually_exclusive_group(required=True)
    how.add_argument("--lambdas-from", help="checkpoint whose training lambdas define each qp's loss")
    how.add_argument("--lambdas", type=float, nargs="+", help="per-anchor lambdas")
    args = ap.parse_args(argv)
    if len(args.evals) < 2:
        ap.error("give two or more eval files")
    from msinn.evaluation.rd import summarize

    try:
        evals = [json.loads(Path(p).read_text()) for p in args.evals]
        lambdas = args.lambdas or lambdas_of(args.lambdas_from)
        chosen, wins = choose(evals, lambdas)
        codecs = sorted(evals[0]["per_image"][0].get("codecs") or {})
        if not codecs:
            raise ValueError(f"{args.evals[0]}: no classical codecs to compare with (the README's run has them)")
        qps = [p["qp"] for p in evals[0]["per_image"][0]["points"]]
        alone = summarize(evals[0]["per_image"], qps, codecs)
        both = summarize(chosen, qps, codecs)
    except KeyError as exc:
        print(f"weights_choice: an eval file lacks the field {exc} (not an msinn eval --json file?)", file=sys.stderr)
        return 1
    except (OSError, ValueError, TypeError, IndexError) as exc:
        print(f"weights_choice: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    print(f"{len(chosen)} images, qps {qps}; points taken from each file: "
          + ", ".join(f"{Path(p).name} {w}" for p, w in zip(args.evals, wins)))
    print(f"{'BD-rate against':16s} {'first alone':>12s} {'choice':>10s}")
    for c in codecs:
        a, b = alone["bd_rate"].get(c), both["bd_rate"].get(c)
        fa = f"{a:+.2f}%" if a is not None else "-"
        fb = f"{b:+.2f}%" if b is not None else "-"
        why = both["bd_rate_reasons"].get(c) or alone["bd_rate_reasons"].get(c)
        print(f"{c:16s} {fa:>12s} {fb:>10s}" + (f"  ({why})" if why else ""))
    for p, q in zip(alone["points"], both["points"]):
        print(f"qp {p['qp']:>4}: {p['bpp']:.4f} bpp {p['psnr']:.2f} dB -> {q['bpp']:.4f} bpp {q['psnr']:.2f} dB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
