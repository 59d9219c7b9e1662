"""Pipeline throughput: images/s per encoder actor against the codec in a plain loop, in one run.

    python bench/pipeline_throughput.py [DIR] [--target-bpp 0.5] [--limit 8] [--pairs 3]
        [--device cpu|cuda] [--actors 1] [--cpus-per-actor 1.5] [--model NAME_OR_PATH]

Both sides encode the same Kodak-size images to the same bpp target on the
same device with the same threads. The loop reads files, encodes and keeps
the bytes; the pipeline also plans, reads inside its actors (read-ahead
thread), writes tar and manifest shards and reads the summary back.

The two alternate, ``--pairs`` times: a shared machine drifts by 10-40% over
minutes, so each pipeline run is compared with the loop run just before it,
and the median of those ratios is reported, with and without the one-off
start (Ray is up before timing; actor start and model load are paid once per
job). Because even adjacent runs drift, the actors' own split of their time
is printed too: the share spent decoding and coding images, against reading,
committing and waiting for the driver, both timed in the same seconds. On a
GPU, the GPU's utilisation is sampled during the pipeline runs.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class GpuSampler:
    """Mean GPU utilisation (nvidia-smi, twice a second) while running; None where there is no NVIDIA GPU."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(0.5):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=5).stdout.split()
                self.samples += [float(x) for x in out]
            except (OSError, ValueError, subprocess.SubprocessError):
                return

    def __enter__(self) -> GpuSampler:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", nargs="?", default=str(REPO.parent / "shared" / "datasets" / "kodak"))
    ap.add_argument("--target-bpp", type=float, default=0.5)
    ap.add_argument("--limit", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=3, help="alternating loop and pipeline runs")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when visible)")
    ap.add_argument("--actors", type=int, default=1)
    ap.add_argument("--cpus-per-actor", type=float, default=1.5)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    import torch

    import msinn
    from msinn.encoding import encode_image
    from msinn.images import open_image
    from msinn.ratecontrol import Target
    from msinn.raylocal import init_ray
    from pipeline.runner import run_job
    from pipeline.spec import JobSpec

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = max(1, math.ceil(args.cpus_per_actor))
    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="msinn-bench-"))
    (work / "in").mkdir()
    for f in files:
        shutil.copy(f, work / "in" / f.name)
    init_ray()  # started before any timing, as a cluster would be
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = msinn.load(args.model, device=device)
    t_load = time.perf_counter() - t0
    inputs = [(f.name, f.read_bytes()) for f in sorted((work / "in").iterdir())]
    target = Target("bpp", args.target_bpp)
    pairs = []
    gpu_samples: list[float] = []
    for rep in range(args.pairs):
        t0 = time.perf_counter()
        for name, data in inputs:
            encode_image(model, open_image(data, name), target)
        if device == "cuda":
            torch.cuda.synchronize()
        loop_s = time.perf_counter() - t0
        spec = JobSpec(input=str(work / "in"), output=str(work / f"out{rep}"), target_kind="bpp",
                       target_value=args.target_bpp, model=args.model, device=device, shard_bytes=1 << 20)
        t0 = time.perf_counter()
        with GpuSampler() if device == "cuda" else contextlib.nullcontext() as sampler:
            summary = run_job(spec, actors=args.actors, cpus_per_actor=args.cpus_per_actor)
        pipe_s = time.perf_counter() - t0
        gpu_samples += sampler.samples if sampler is not None else []
        pairs.append((loop_s, pipe_s, summary))
    n = len(inputs)
    rows = []
    for loop_s, pipe_s, s in pairs:
        start = s.get("actor_start_seconds", 0.0)
        loop_rate = n / loop_s  # model already loaded: the loop's steady rate
        steady = s["images_this_run"] / max(pipe_s - start, 1e-9) / args.actors
        end_to_end = s["images_this_run"] / pipe_s / args.actors
        in_codec = s.get("codec_seconds_total", 0.0) / max((pipe_s - start) * args.actors, 1e-9)
        rows.append((loop_s, pipe_s, start, loop_rate, steady, end_to_end, steady / loop_rate,
                     end_to_end / (n / (loop_s + t_load)), in_codec))
    print(f"{n} images, target {args.target_bpp} bpp, device {device} ({pairs[0][2]['model']}), {threads} threads, "
          f"{args.actors} actor(s), {args.pairs} alternating pairs")
    print(f"{'pair':>4s} {'loop s':>8s} {'pipe s':>8s} {'start s':>8s} {'loop img/s':>11s} "
          f"{'actor img/s':>12s} {'ratio':>7s} {'end to end':>11s} {'in codec':>9s}")
    for i, r in enumerate(rows):
        print(f"{i:4d} {r[0]:8.1f} {r[1]:8.1f} {r[2]:8.1f} {r[3]:11.3f} {r[4]:12.3f} {r[6]:7.1%} {r[7]:11.1%} "
              f"{r[8]:9.1%}")
    print(f"per actor / plain loop, median of pairs: {statistics.median(r[6] for r in rows):.1%} after start-up, "
          f"{statistics.median(r[7] for r in rows):.1%} end to end (start paid once per job; model load in the "
          f"loop {t_load:.1f}s)")
    print(f"share of the actors' time after start-up spent decoding and coding images (the rest is reading, "
          f"committing and scheduling), median: {statistics.median(r[8] for r in rows):.1%}; unlike the ratio, "
          f"both sides of this share are timed together, so machine drift cancels")
    if device == "cuda":
        util = statistics.fmean(gpu_samples) if gpu_samples else None
        print(f"GPU utilisation during the pipeline runs: {'n/a' if util is None else f'{util:.0f}%'}; "
              f"per GPU: {statistics.median(r[4] for r in rows):.2f} images/s at {args.target_bpp} bpp")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
