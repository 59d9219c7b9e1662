"""Images/s per encoder actor for Kodak-size images at a bpp target, on this machine's device.

    python bench/pipeline_throughput.py [DIR] [--target-bpp 0.5] [--device cpu|cuda] [--actors N] [--limit N]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=str(REPO.parent / "shared" / "datasets" / "kodak"))
    ap.add_argument("--target-bpp", type=float, default=0.5)
    ap.add_argument("--device", default="cuda" if _has_cuda() else "cpu")
    ap.add_argument("--actors", type=int, default=None)
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--model", default=None)
    ap.add_argument("--cpus-per-actor", type=float, default=1.5)
    args = ap.parse_args()
    from pipeline.cluster import init_ray
    from pipeline.runner import run_job
    from pipeline.spec import JobSpec

    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() == ".png")[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="msinn-tp-"))
    (work / "in").mkdir()
    for f in files:
        shutil.copy(f, work / "in" / f.name)
    init_ray()
    spec = JobSpec(input=str(work / "in"), output=str(work / "out"), target_kind="bpp", target_value=args.target_bpp,
                   model=args.model, device=args.device, shard_bytes=2 << 20)
    t0 = time.perf_counter()
    s = run_job(spec, actors=args.actors, cpus_per_actor=args.cpus_per_actor)
    wall = time.perf_counter() - t0
    n_actors = s.get("actors", 1)
    busy = s.get("encode_seconds_total", 0.0)
    print(f"device {args.device}, {n_actors} actor(s), {s['images_this_run']} images at {args.target_bpp} bpp")
    rate = s["images_this_run"] / wall
    print(f"end to end: {rate:.3f} images/s ({rate / n_actors:.3f} per actor)")
    if busy:
        print(f"while encoding: {s['images_this_run'] / busy:.3f} images/s per actor (excludes start-up and I/O waits)")
    print(f"mean bpp {s['mean_bpp']:.4f}, mean PSNR {s['mean_psnr']:.2f} dB")
    shutil.rmtree(work, ignore_errors=True)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


if __name__ == "__main__":
    main()
