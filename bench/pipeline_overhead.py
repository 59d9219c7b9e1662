"""Pipeline overhead: images/s with one encoder actor versus the codec in a plain loop, one run.

    python bench/pipeline_overhead.py [DIR] [--target-bpp 1.0] [--limit 12] [--model NAME_OR_PATH] [--repeats 2]

Both sides encode the same images to the same target with the same number of
threads. The loop reads files, encodes and keeps the bytes; the pipeline
additionally plans, reads inside the actor, writes tar and manifest shards and a
summary. Reported: both rates, and the pipeline's share of the loop's, with
and without the one-off start (Ray, actor start and model load).
"""

from __future__ import annotations

import argparse
import math
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
    ap.add_argument("--target-bpp", type=float, default=1.0)
    ap.add_argument("--limit", type=int, default=12)
    ap.add_argument("--model", default=None)
    ap.add_argument("--cpus-per-actor", type=float, default=1.5)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each; the best counts")
    args = ap.parse_args()
    threads = max(1, math.ceil(args.cpus_per_actor))

    import torch

    import msinn
    from msinn.codec import encode_image
    from msinn.images import open_image
    from msinn.ratecontrol import Target

    files = sorted(p for p in Path(args.dir).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="msinn-bench-"))
    (work / "in").mkdir()
    for f in files:
        shutil.copy(f, work / "in" / f.name)

    # Ray is started first, outside the timing, as a cluster would be. The loop and the
    # pipeline alternate and each keeps its best run: a shared machine drifts by 10-20%
    # over minutes, which would otherwise land on whichever side ran later.
    from pipeline.cluster import init_ray
    from pipeline.runner import run_job
    from pipeline.spec import JobSpec

    init_ray(num_cpus=2)
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = msinn.load(args.model)
    t_load = time.perf_counter() - t0
    inputs = [(f.name, f.read_bytes()) for f in sorted((work / "in").iterdir())]
    loops, pipes = [], []
    for rep in range(args.repeats):
        t0 = time.perf_counter()
        for name, data in inputs:
            encode_image(model, open_image(data, name), Target("bpp", args.target_bpp))
        loops.append(t_load + time.perf_counter() - t0)
        spec = JobSpec(input=str(work / "in"), output=str(work / f"out{rep}"), target_kind="bpp",
                       target_value=args.target_bpp, model=args.model, shard_bytes=1 << 20)
        t0 = time.perf_counter()
        summary = run_job(spec, actors=1, cpus_per_actor=args.cpus_per_actor)
        pipes.append((time.perf_counter() - t0, summary))
    loop_s = min(loops)
    pipe_s, summary = min(pipes, key=lambda p: p[0])
    loop_rate = len(files) / loop_s
    pipe_rate = summary["images_this_run"] / pipe_s
    startup = summary.get("actor_start_seconds", 0.0)
    steady = summary["images_this_run"] / max(pipe_s - startup, 1e-9)
    loop_steady = len(files) / max(loop_s - t_load, 1e-9)
    print(f"{len(files)} images, target {args.target_bpp} bpp, {threads} threads per encoder, "
          f"model {model.model_name}, best of {args.repeats} alternating runs")
    print(f"{'':22s}{'images/s':>10s}{'seconds':>10s}   all runs (s)")
    print(f"{'plain loop':22s}{loop_rate:10.3f}{loop_s:10.1f}   {', '.join(f'{t:.1f}' for t in loops)}")
    print(f"{'pipeline, 1 actor':22s}{pipe_rate:10.3f}{pipe_s:10.1f}   {', '.join(f'{t:.1f}' for t, _ in pipes)}")
    print(f"pipeline / loop: {pipe_rate / loop_rate:.1%} end to end; {steady / loop_steady:.1%} after start-up "
          f"(actor start {startup:.1f}s, model load in loop {t_load:.1f}s)")
    busy = summary.get("encode_seconds_total", 0.0)
    print(f"pipeline time: {pipe_s:.1f}s = actor start {startup:.1f}s + shard work {busy:.1f}s "
          f"+ plan, reads, summary and scheduling {pipe_s - startup - busy:.1f}s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
