"""A real out-of-memory kill by Ray's memory monitor, end to end: one image of three exhausts its actor.

    python scripts/oom_drill.py [--margin-gb 1.5] [--grow-gb 2]

Starts its own local Ray (2 CPUs) with ``RAY_memory_usage_threshold`` set just
above what this machine uses now (``--margin-gb`` over it), then transcodes
three small images through the test-only ``flaky://`` file system, whose
``grow_on`` fault makes reading ``grow.png`` allocate memory (up to
``--grow-gb``) until the memory monitor kills the actor. Prints the run's
summary and rows: the two other images archived, ``grow`` with the error row
``killed its encoder twice: out of memory``, three actors lost.

Not a test: the threshold is relative to the whole machine's memory, so
other processes' growth during the drill can kill its workers too (only its
own: Ray kills only its workers). Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--margin-gb", type=float, default=1.5, help="memory over today's use before Ray kills")
    p.add_argument("--grow-gb", type=float, default=2.0, help="what reading the bad image allocates, at most")
    args = p.parse_args()
    import psutil

    vm = psutil.virtual_memory()
    threshold = min(0.95, (vm.total - vm.available + args.margin_gb * 2**30) / vm.total)
    os.environ.update({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
                       "RAY_USAGE_STATS_ENABLED": "0", "RAY_memory_usage_threshold": f"{threshold:.4f}",
                       "RAY_memory_monitor_refresh_ms": "100"})
    sys.path.insert(0, str(REPO / "tests"))
    import faults
    from pipeline_helpers import png_bytes

    faults.register()
    import ray

    from pipeline.runner import run_job
    from pipeline.spec import JobSpec

    print(f"memory: {vm.total / 2**30:.1f} GiB, in use {(vm.total - vm.available) / 2**30:.1f} GiB; Ray kills "
          f"above {threshold:.3f} ({threshold * vm.total / 2**30:.1f} GiB)", flush=True)
    with tempfile.TemporaryDirectory(prefix="oom-drill-") as root:
        (Path(root) / "in").mkdir()
        for name in ("a", "grow", "b"):
            (Path(root) / "in" / f"{name}.png").write_bytes(png_bytes(len(name)))
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO / "tests")},
                              "worker_process_setup_hook": "faults.register"})
        try:
            t0 = time.time()
            opts = {"fail_every": 0, "grow_on": "grow.png", "grow_limit": int(args.grow_gb * 2**30)}
            s = run_job(JobSpec(input=f"flaky://{root}/in", output=f"{root}/out", target_kind="qp", target_value=3.0,
                                input_options=opts), actors=1)
            print(f"wall {time.time() - t0:.1f} s")
            print(json.dumps({k: s.get(k) for k in ("ok", "errors", "errors_by_cause", "actors_lost",
                                                    "shards_failed", "images_refused_unread")}))
            import pyarrow.parquet as pq

            for part in sorted((Path(root) / "out" / "manifest").glob("*.parquet")):
                for r in pq.read_table(part).to_pylist():
                    print(r["key"], r["status"], r["error"] or "")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
