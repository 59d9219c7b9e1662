"""Placement on a simulated multi-node cluster, and the real `ray job submit` path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest
import yaml
from pipeline_helpers import free_port, png_bytes, verify_archive

from pipeline.cluster import RAY_ENV_DEFAULTS as RAY_ENV
from pipeline.runner import run_job
from pipeline.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]


def _inputs(root: Path, n: int) -> set[str]:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"im{i}.png").write_bytes(png_bytes(100 + i))
    return {f"im{i}" for i in range(n)}


@pytest.mark.slow
def test_actors_are_placed_only_on_gpu_like_nodes(tmp_path, tiny_checkpoint):
    os.environ.update(RAY_ENV)
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        gpu_nodes = [cluster.add_node(num_cpus=1, resources={"gpu_like": 1}) for _ in range(2)]
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        keys = _inputs(tmp_path / "in", 6)
        spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp",
                       target_value=1.0, model=tiny_checkpoint, shard_bytes=9_000)
        summary = run_job(spec, actor_resources={"gpu_like": 1}, cpus_per_actor=0.5, read_cpus=0.25)
        gpu_ids = {n.node_id for n in gpu_nodes}
        assert set(summary["shards_by_node"]) <= gpu_ids
        assert sum(summary["shards_by_node"].values()) == summary["shards"] > 1
        verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
def test_ray_job_submit_end_to_end(tmp_path, tiny_checkpoint):
    import ray

    if ray.is_initialized():
        ray.shutdown()
    bin_dir = Path(sys.executable).parent
    ray_exe = shutil.which("ray", path=str(bin_dir)) or "ray"
    env = {**os.environ, **RAY_ENV, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    port, dash = free_port(), free_port()
    start = [ray_exe, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
             "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=2", "--include-dashboard=true",
             "--disable-usage-stats"]
    subprocess.run(start, env=env, check=True, capture_output=True, timeout=180)
    try:
        keys = _inputs(tmp_path / "in", 4)
        submit = [ray_exe, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
                  "--runtime-env-json", json.dumps({"excludes": [".venv", "out", ".git", "*.pt"]}), "--",
                  "python", "jobs/transcode.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                  "--qp", "2", "--model", tiny_checkpoint, "--actors", "1"]
        res = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "succeeded" in (res.stdout + res.stderr).lower()
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["ok"] == 4 and summary["errors"] == 0
        verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)
    finally:
        subprocess.run([ray_exe, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_cluster_launcher_config_is_valid():
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    assert cfg["head_node_type"] in cfg["available_node_types"]
    worker = cfg["available_node_types"]["gpu_worker"]
    assert worker["max_workers"] >= 1 and worker["min_workers"] == 0
    assert any("pip install" in c and "-e ." in c for c in cfg["setup_commands"])
    assert cfg["available_node_types"]["head"]["resources"] == {"CPU": 0}


@pytest.mark.parametrize("argv", [["--help"]])
def test_transcode_entrypoint_help(argv):
    res = subprocess.run([sys.executable, str(REPO / "jobs" / "transcode.py"), *argv], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "--target-bpp" in res.stdout
