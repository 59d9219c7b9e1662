"""Rate control cost and accuracy over a folder of images (Kodak by default), in one run.

    python bench/rate_control.py [--model NAME_OR_PATH] [--bpp 0.25,0.5,1] [--psnr 30,33,36] [--limit N]

For every image: a fixed-qp encode (the cost unit), then each bpp and PSNR
target. Prints mean real encodes ("probes"), crop estimates, cost relative to
the fixed-qp encode, and how many in-range targets landed in their window
([0.98, 1.0] x target for bpp, [target, target + 0.1 dB] for PSNR).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import msinn  # noqa: E402
from msinn.encoding import encode_image  # noqa: E402
from msinn.images import open_image  # noqa: E402
from msinn.ratecontrol import Target  # noqa: E402


def _floats(s: str) -> list[float]:
    return [float(v) for v in s.split(",") if v]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=str(REPO.parent / "shared" / "datasets" / "kodak"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--bpp", default="0.25,0.5,1.0")
    ap.add_argument("--psnr", default="30,33,36")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = msinn.load(args.model)
    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if args.limit:
        files = files[: args.limit]
    targets = [Target("bpp", v) for v in _floats(args.bpp)] + [Target("psnr", v) for v in _floats(args.psnr)]
    fixed_qp = (model.anchor_num - 1) / 2
    rows: dict[tuple[str, float], list[dict]] = {(t.kind, t.value): [] for t in targets}
    for f in files:
        img = open_image(f.read_bytes(), f.name)
        t0 = time.perf_counter()
        encode_image(model, img, Target("qp", fixed_qp))
        unit = time.perf_counter() - t0
        for t in targets:
            t0 = time.perf_counter()
            r = encode_image(model, img, t)
            cost = (time.perf_counter() - t0) / unit
            if t.kind == "bpp":
                ok = 0.98 * t.value <= r.bpp <= t.value
            else:
                ok = t.value <= r.psnr <= t.value + 0.1
            rows[(t.kind, t.value)].append(
                {"probes": r.probes, "est": r.estimates, "cost": cost, "in_range": r.in_range, "ok": ok}
            )
        print(f"{f.name}: fixed-qp encode {unit:.2f}s", file=sys.stderr)
    name = getattr(model, "model_name", "?")
    print(f"model {name}, {len(files)} images, cost unit: fixed-qp encode at qp {fixed_qp}")
    print(f"{'target':>12s} {'in range':>9s} {'in window':>10s} {'probes':>7s} {'estimates':>10s} {'cost':>6s}")
    for (kind, value), rs in rows.items():
        inr = [r for r in rs if r["in_range"]]
        hit = sum(r["ok"] for r in inr)

        def mean(k: str, rs: list[dict] = rs) -> float:
            return statistics.mean(r[k] for r in rs)

        print(
            f"{kind + ' ' + format(value, 'g'):>12s} {len(inr):>4d}/{len(rs):<4d} {hit:>5d}/{len(inr):<4d}"
            f" {mean('probes'):7.2f} {mean('est'):10.2f} {mean('cost'):5.2f}x"
        )
    for kind in ("bpp", "psnr"):
        rs = [r for (k, _), v in rows.items() if k == kind for r in v]
        if rs:
            inr = [r for r in rs if r["in_range"]]
            print(
                f"all {kind} targets: mean cost {statistics.mean(r['cost'] for r in rs):.2f}x, "
                f"mean probes {statistics.mean(r['probes'] for r in rs):.2f}, "
                f"in window {sum(r['ok'] for r in inr)}/{len(inr)} of in-range targets"
            )


if __name__ == "__main__":
    main()
