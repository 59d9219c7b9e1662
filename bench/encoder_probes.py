"""Two cheap encoder-side ideas, measured before anyone builds them (docs/refinement.md, "What was tried").

* ``deadzone``: round each symbol towards zero unless it lies ``delta`` past the half (a classical
  dead-zone quantiser, no iterations), against plain rounding, at qps 1-11 on each image cropped
  to multiples of 64 (no padding in the figures): rate (bits of the discretised Gaussian, what
  the coder writes to within its tables) and PSNR of the decoded 8-bit image, BD-rate against
  delta 0 side by side.
* ``padding``: the share of an image's estimated bits (-log2 of the training path's likelihoods)
  spent on latent positions that lie wholly in the replicated padding up to a multiple of 64
  (cropped away on decode), for images whose sides are not multiples of 64.

    python bench/encoder_probes.py deadzone ../shared/datasets/kodak --stride 4
    python bench/encoder_probes.py padding ../shared/datasets/graphics
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

if TYPE_CHECKING:  # pragma: no cover
    from msinn.model import MSINN

QPS = (1, 3, 5, 7, 9, 11)
DELTAS = (0.0, 0.05, 0.1, 0.15, 0.2)


def _images(folder: str, stride: int) -> list[Path]:
    paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() == ".png")
    return paths[::stride]


def deadzone(model: MSINN, paths: list[Path]) -> None:
    import torch

    from msinn.evaluation.bdrate import bd_rate
    from msinn.image_files import read_image_rgb
    from msinn.metrics import psnr_uint8
    from msinn.tensors import to_padded_tensor, to_uint8

    def rounding(delta: float):
        return lambda v: torch.sign(v) * torch.floor(v.abs() + 0.5 - delta)

    sums = {d: {q: [0.0, 0.0] for q in QPS} for d in DELTAS}
    for path in paths:
        rgb = read_image_rgb(str(path))
        h, w = rgb.shape[0] // 64 * 64, rgb.shape[1] // 64 * 64  # whole multiples: no padding in the figures
        crop = rgb[:h, :w]
        x = to_padded_tensor(crop)
        with torch.no_grad():
            latents = model.analyze(x)
            for q in QPS:
                for d in DELTAS:
                    bits, x_hat = model.soft_forward(latents, q, rounding(d))
                    sums[d][q][0] += bits.item() / (h * w)
                    sums[d][q][1] += psnr_uint8(crop, to_uint8(x_hat))
        print(f"  {path.name}", flush=True)
    n = len(paths)
    base = [sums[0.0][q][0] / n for q in QPS], [sums[0.0][q][1] / n for q in QPS]
    print(f"delta  {'  '.join(f'qp {q}: bpp / dB' for q in QPS)}  BD-rate vs delta 0")
    for d in DELTAS:
        r, p = [sums[d][q][0] / n for q in QPS], [sums[d][q][1] / n for q in QPS]
        cells = "  ".join(f"{a:.4f} / {b:.2f}" for a, b in zip(r, p))
        print(f"{d:<5}  {cells}  {bd_rate(*base, r, p):+.2f}%")


def padding(model: MSINN, paths: list[Path], qp: int) -> None:
    import torch

    from msinn.image_files import read_image_rgb
    from msinn.tensors import to_padded_tensor

    total = padded = 0.0
    for path in paths:
        rgb = read_image_rgb(str(path))
        h, w = rgb.shape[:2]
        if h % 64 == 0 and w % 64 == 0:
            continue
        x = to_padded_tensor(rgb)
        H, W = x.shape[-2:]
        with torch.no_grad():
            out = model.forward_latents(model.analyze(x), qp)
        bits = pad_bits = 0.0
        for lik in out["likelihoods"].values():
            b = -torch.log2(lik)
            step = H // b.shape[-2]
            rows, cols = torch.arange(b.shape[-2]) * step >= h, torch.arange(b.shape[-1]) * step >= w
            outside = rows[:, None] | cols[None, :]
            bits += b.sum().item()
            pad_bits += b[..., outside].sum().item()
        total, padded = total + bits, padded + pad_bits
        print(f"  {path.name:45s} padded area {H * W / (h * w) - 1:6.1%}  bits in padding {pad_bits / bits:6.2%}")
    if total:
        print(f"all padded images at qp {qp}: {padded / total:.2%} of the bits lie in the padding")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("probe", choices=["deadzone", "padding"])
    ap.add_argument("folder")
    ap.add_argument("--model", default=str(REPO / "msinn" / "weights" / "msinn-small-2026-12b.pt.xz"),
                    help="a float model (the probes differentiate nothing, but use the float coding path)")
    ap.add_argument("--stride", type=int, default=1, help="every n-th image")
    ap.add_argument("--qp", type=int, default=6, help="padding: the rate parameter")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import torch

    from msinn.checkpoint import load_file

    torch.set_num_threads(args.threads)
    model = load_file(args.model)
    model.eval()
    paths = _images(args.folder, args.stride)
    if args.probe == "deadzone":
        deadzone(model, paths)
    else:
        padding(model, paths, args.qp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
