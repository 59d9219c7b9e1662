"""Would a post-filter pay? Train a small rate-conditioned filter on the frozen codec's own reconstructions, then
measure it on Kodak with real coding: BD-rate against the codec alone, and the decode time it adds.

    python bench/postfilter.py [--model NAME] [--channels 16] [--layers 3] [--steps 3000] [--crops 96]
        [--qps 0,2,4,6,8,10] [--limit 24] [--json out.json]

Training data: centre-and-random crops of ``shared/datasets/train`` and
``train-extra`` (never Kodak), each coded by the model at every anchor with
real rounding (the codec's float path, which the portable decoder matches to
within its conversion cost), decoded once; only the filter trains. The filter:
``layers`` 3x3 convolutions with ReLU, ``channels`` wide, adding a residual
scaled by a learned gain per anchor (interpolated between anchors, as the
model's own gains are), so it knows the rate. Evaluation: every Kodak image
encoded at each qp by ``encode_image`` (the portable model's real files), the
decoded pixels filtered, PSNR before and after at the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "datasets"


class PostFilter(nn.Module):
    """x + gain(qp) * f(x): a few 3x3 convolutions, the residual's scale learned per anchor."""

    def __init__(self, anchors: int, channels: int = 16, layers: int = 3, unshuffle: int = 1):
        super().__init__()
        self.unshuffle = unshuffle  # >1: the convolutions run at 1/unshuffle resolution on unshuffle^2 x 3 channels
        io_ch = 3 * unshuffle * unshuffle
        chans = [io_ch] + [channels] * (layers - 1) + [io_ch]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(chans, chans[1:]))
        self.gain = nn.Parameter(torch.full((anchors,), 0.1))
        nn.init.zeros_(self.convs[-1].weight)
        nn.init.zeros_(self.convs[-1].bias)

    def gain_at(self, qp: torch.Tensor) -> torch.Tensor:
        lo = qp.floor().clamp(0, len(self.gain) - 1).long()
        hi = (lo + 1).clamp(max=len(self.gain) - 1)
        t = (qp - lo.float()).clamp(0, 1)
        return self.gain[lo] * (1 - t) + self.gain[hi] * t

    def forward(self, x: torch.Tensor, qp: torch.Tensor) -> torch.Tensor:
        r = self.unshuffle
        h, w = x.shape[-2:]
        pad = ((-h) % r, (-w) % r)
        y = nn.functional.pad(x, (0, pad[1], 0, pad[0]), mode="replicate") if any(pad) else x
        y = nn.functional.pixel_unshuffle(y, r) if r > 1 else y
        for i, conv in enumerate(self.convs):
            y = conv(y)
            if i < len(self.convs) - 1:
                y = torch.relu(y)
        y = nn.functional.pixel_shuffle(y, r)[..., :h, :w] if r > 1 else y
        return x + self.gain_at(qp).view(-1, 1, 1, 1) * y

    def macs_per_pixel(self) -> float:
        return sum(c.in_channels * c.out_channels * 9 for c in self.convs) / self.unshuffle**2


def training_pairs(model, crops: list[np.ndarray], anchors: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(reconstructions, originals, qps): every crop coded at every anchor with real rounding."""
    xs, ys, qs = [], [], []
    float_model = model.float_model
    float_model.eval()
    with torch.no_grad():
        for crop in crops:
            x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
            for a in range(anchors):
                out = float_model(x, a)
                xs.append((out["x_hat"].clamp(0, 1) * 255).round() / 255)
                ys.append(x)
                qs.append(a)
    return torch.cat(xs), torch.cat(ys), torch.tensor(qs, dtype=torch.float32)


def random_crops(paths: list[Path], n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    from msinn.image_files import read_image_rgb

    rng = np.random.default_rng(seed)
    images = [read_image_rgb(str(p)) for p in paths]
    images = [im for im in images if im.shape[0] >= size and im.shape[1] >= size]
    out = []
    for i in range(n):
        im = images[i % len(images)]
        top = int(rng.integers(0, im.shape[0] - size + 1))
        left = int(rng.integers(0, im.shape[1] - size + 1))
        out.append(np.ascontiguousarray(im[top : top + size, left : left + size]))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * math.log10(255**2 / max(mse, 1e-12))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--channels", type=int, default=16)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--unshuffle", type=int, default=1, help="run the filter at 1/N resolution (wider context)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--crops", type=int, default=96)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--qps", default="0,2,4,6,8,10")
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--json")
    args = p.parse_args()
    torch.manual_seed(0)
    import msinn
    from msinn.decoding import decode_image
    from msinn.encoding import encode_image
    from msinn.evaluation.bdrate import bd_rate
    from msinn.images import open_image
    from msinn.ratecontrol import Target

    model = msinn.load(args.model)
    anchors = model.anchor_num
    paths = sorted((SHARED / "train").glob("*.png")) + sorted((SHARED / "train-extra").glob("*.*g"))
    t0 = time.perf_counter()
    xs, ys, qs = training_pairs(model, random_crops(paths, args.crops, args.crop_size), anchors)
    print(f"training pairs: {len(xs)} ({args.crops} crops x {anchors} anchors) in {time.perf_counter() - t0:.0f} s")
    net = PostFilter(anchors, args.channels, args.layers, args.unshuffle)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.steps)
    gen = torch.Generator().manual_seed(1)
    t0 = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(xs), (args.batch,), generator=gen)
        loss = ((net(xs[idx], qs[idx]) - ys[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 500 == 0 or step == args.steps - 1:
            with torch.no_grad():
                base = float(((xs[idx] - ys[idx]) ** 2).mean())
            print(f"step {step}: mse {float(loss.detach()):.3e} (unfiltered {base:.3e})", flush=True)
    print(f"filter trained in {time.perf_counter() - t0:.0f} s; {net.macs_per_pixel()} MACs per pixel; "
          f"gains per anchor {[round(float(g), 3) for g in net.gain]}")
    net.eval()
    qps = [float(q) for q in args.qps.split(",")]
    kodak = sorted((SHARED / "kodak").glob("*.png"))[: args.limit]
    bpp: dict[float, list[float]] = {q: [] for q in qps}
    before: dict[float, list[float]] = {q: [] for q in qps}
    after: dict[float, list[float]] = {q: [] for q in qps}
    t_dec = t_filter = 0.0
    for path in kodak:
        img = open_image(path.read_bytes(), path.name)
        for q in qps:
            res = encode_image(model, img, Target("qp", int(q) if q.is_integer() else q))
            t = time.perf_counter()
            dec = decode_image(res.data, model, path.name)
            t_dec += time.perf_counter() - t
            rec = dec.pixels
            t = time.perf_counter()
            with torch.no_grad():
                x = torch.from_numpy(rec).permute(2, 0, 1)[None].float() / 255
                y = net(x, torch.tensor([q]))
                filtered = (y.clamp(0, 1) * 255).round().byte()[0].permute(1, 2, 0).numpy()
            t_filter += time.perf_counter() - t
            bpp[q].append(len(res.data) * 8 / (img.width * img.height))
            before[q].append(psnr(rec, img.rgb))
            after[q].append(psnr(filtered, img.rgb))
        print(f"{path.name}: " + " ".join(f"q{q:g} {before[q][-1]:.2f}->{after[q][-1]:.2f}" for q in qps))
    rates = [float(np.mean(bpp[q])) for q in qps]
    p0 = [float(np.mean(before[q])) for q in qps]
    p1 = [float(np.mean(after[q])) for q in qps]
    gain = bd_rate(rates, p0, rates, p1)
    out = {"model": model.model_name or args.model, "channels": args.channels,
           "layers": args.layers, "unshuffle": args.unshuffle, "macs_per_pixel": net.macs_per_pixel(),
           "images": len(kodak), "qps": qps,
           "bpp": rates, "psnr_codec": p0, "psnr_filtered": p1, "bd_rate_vs_codec": gain,
           "decode_seconds": t_dec, "filter_seconds_float": t_filter,
           "decode_time_ratio_float": (t_dec + t_filter) / t_dec}
    print(json.dumps(out, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
