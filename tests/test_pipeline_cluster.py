"""Placement on a simulated multi-node cluster, and the real `ray job submit` path."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fsspec
import pytest
import yaml
from pipeline_helpers import free_port, png_bytes, verify_archive

from msinn.raylocal import RAY_ENV_DEFAULTS as RAY_ENV
from pipeline.runner import run_job
from pipeline.spec import JobSpec

REPO = Path(__file__).resolve().parents[1]


def _inputs(root: Path, n: int) -> set[str]:
    root.mkdir(parents=True)
    for i in range(n):
        (root / f"im{i}.png").write_bytes(png_bytes(100 + i))
    return {f"im{i}" for i in range(n)}


@contextlib.contextmanager
def _simulated_cluster(*nodes: dict):
    """A multi-node Ray cluster in this machine's processes (``ray.cluster_utils.Cluster``): a 1-CPU head
    and the given worker nodes; yields (cluster, worker nodes) with this process connected to it."""
    import ray
    from ray.cluster_utils import Cluster

    os.environ.update(RAY_ENV)
    if ray.is_initialized():
        ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        added = [cluster.add_node(**n) for n in nodes]
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        yield cluster, added
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.own_ray_cluster
def test_actors_are_placed_only_on_gpu_like_nodes(tmp_path, tiny_checkpoint):
    with _simulated_cluster(*[{"num_cpus": 1, "resources": {"gpu_like": 1}}] * 2) as (_, gpu_nodes):
        keys = _inputs(tmp_path / "in", 6)
        spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp",
                       target_value=1.0, model=tiny_checkpoint, shard_bytes=9_000)
        summary = run_job(spec, actor_resources={"gpu_like": 1}, cpus_per_actor=0.5)
        gpu_ids = {n.node_id for n in gpu_nodes}
        assert set(summary["shards_by_node"]) <= gpu_ids
        assert sum(summary["shards_by_node"].values()) == summary["shards"] > 1
        verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)


@pytest.mark.slow
@pytest.mark.own_ray_cluster
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
             "--disable-usage-stats", "--block",
             # the job agent's HTTP port is 52365 for every cluster unless set: the shared cluster in the other
             # xdist worker holds it, and this head's agent would answer no job ("No available agent")
             f"--dashboard-agent-listen-port={free_port()}"]
    # in its own process group, ended with its processes (never `ray stop`: that ends every cluster on the machine)
    head = subprocess.Popen(start, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        keys = _inputs(tmp_path / "in", 4)
        submit = [ray_exe, "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
                  "--runtime-env-json", json.dumps({"excludes": [".venv", "out", ".git", "*.pt"]}), "--",
                  "python", "jobs/transcode.py", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"),
                  "--qp", "2", "--model", tiny_checkpoint, "--actors", "1"]
        for _ in range(60):  # until the head's dashboard answers (`ray start --block` does not wait for it)
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{dash}/api/version", timeout=2)
                break
            except OSError:
                assert head.poll() is None, "ray start failed"
                time.sleep(1)
        deadline = time.monotonic() + 180  # a fresh head's job agent can lag its dashboard by a minute on a busy
        while True:  # machine; until then Ray answers "No available agent to submit job, please try again later"
            res = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
            if "No available agent to submit job" not in res.stdout + res.stderr or time.monotonic() > deadline:
                break
            time.sleep(5)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        assert "succeeded" in (res.stdout + res.stderr).lower()
        summary = json.loads((tmp_path / "out" / "summary.json").read_text())
        assert summary["ok"] == 4 and summary["errors"] == 0
        verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)
    finally:
        _stop_processes_naming(port, head)


def test_cluster_launcher_config_is_valid():
    """Checked with the launcher's own schema, as `ray up` does, plus what the schema cannot know."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types and types["head"]["resources"] == {"CPU": 0}
    worker = types["gpu_worker"]
    assert worker["max_workers"] >= 1 and worker["min_workers"] == 0
    assert all(t["node_config"]["IamInstanceProfile"]["Name"] for t in types.values())
    # Python 3.11 everywhere, and the image's Ray is the one the lock file pins
    lock = (REPO / "requirements-lock.txt").read_text()
    ray_pin = next(line.split("==")[1] for line in lock.splitlines() if line.startswith("ray["))
    for image in (raw["docker"]["image"], raw["docker"]["head_image"]):
        assert image.startswith(f"rayproject/ray:{ray_pin}-py311-"), image
    assert any("pip install" in c and "-e ." in c for c in raw["setup_commands"])
    assert "secret" not in (REPO / "cluster.yaml").read_text().lower().replace("nothing secret", "")


@pytest.mark.parametrize("argv", [["--help"]])
def test_transcode_entrypoint_help(argv):
    res = subprocess.run([sys.executable, str(REPO / "jobs" / "transcode.py"), *argv], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0 and "--target-bpp" in res.stdout


def _fake_autoscaling_config(port: int, max_workers: int) -> dict:
    """Ray's fake multi-node provider: worker nodes are local processes the autoscaler starts on demand."""
    return {
        "cluster_name": "fake-autoscaling",
        "max_workers": max_workers,
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": 1,
        "provider": {"type": "fake_multinode", "use_node_id_as_ip": True, "disable_node_updaters": True,
                     "disable_launch_config_check": True, "gcs_address": f"127.0.0.1:{port}"},
        "auth": {"ssh_user": "ubuntu"},
        "docker": {},
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
            "encoder_node": {"resources": {"CPU": 1, "encoder": 1}, "node_config": {}, "min_workers": 0,
                             "max_workers": max_workers},
        },
        "head_node_type": "ray.head.default",
        "file_mounts": {}, "cluster_synced_files": [], "file_mounts_sync_continuously": False,
        "rsync_exclude": [], "rsync_filter": [], "initialization_commands": [], "setup_commands": [],
        "head_setup_commands": [], "worker_setup_commands": [], "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _stop_processes_naming(port: int, head) -> None:
    """End the fake cluster: its head's process group and every process started for it (never `ray stop`)."""
    import signal

    import psutil

    try:
        os.killpg(head.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(f"127.0.0.1:{port}" in c or c == f"--gcs_server_port={port}" for c in p.info["cmdline"] or []):
                p.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    try:
        head.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(head.pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.own_ray_cluster
def test_a_job_on_an_empty_autoscaling_cluster_waits_for_nodes_and_finishes(tmp_path, tiny_checkpoint, caplog):
    """No worker node at submission: the actors' demand makes the autoscaler add nodes, and every key lands once."""
    import logging

    import ray

    if ray.is_initialized():
        ray.shutdown()
    port = free_port()
    cfg = tmp_path / "autoscaling.yaml"
    cfg.write_text(yaml.safe_dump(_fake_autoscaling_config(port, max_workers=2)))
    bin_dir = Path(sys.executable).parent
    ray_exe = shutil.which("ray", path=str(bin_dir)) or "ray"
    env = {**os.environ, **RAY_ENV, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1",
           "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen([ray_exe, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                             "--num-cpus=0", f"--autoscaling-config={cfg}", "--disable-usage-stats", "--block"],
                            env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                ray.init(address=f"127.0.0.1:{port}", log_to_driver=False)
                break
            except Exception:
                time.sleep(1)
        assert ray.cluster_resources().get("encoder", 0) == 0  # nothing to run on yet
        keys = _inputs(tmp_path / "in", 6)
        spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp",
                       target_value=1.0, model=tiny_checkpoint, shard_bytes=9_000)
        caplog.set_level(logging.INFO, logger="pipeline")
        summary = run_job(spec, actor_resources={"encoder": 1}, cpus_per_actor=1, max_actors=2)
        assert summary["shards_failed"] == [] and summary["ok"] == 6
        assert summary["shards_committed"] == summary["shards"] > 1
        head_id = ray.get_runtime_context().get_node_id()
        assert head_id not in summary["shards_by_node"]  # every shard ran on a node the autoscaler added
        assert "encoder actors: 1 to 2" in caplog.text
        verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)
    finally:
        ray.shutdown()
        _stop_processes_naming(port, head)


@pytest.mark.slow
@pytest.mark.own_ray_cluster
def test_a_node_lost_mid_run_costs_only_its_shards(tmp_path, tiny_checkpoint):
    """A worker node removed while its actor encodes: that unit is redone elsewhere; every key exactly once."""
    import threading

    with _simulated_cluster(*[{"num_cpus": 1, "resources": {"encoder": 1}}] * 2) as (cluster, nodes):
        (tmp_path / "in").mkdir()
        for i in range(12):
            (tmp_path / "in" / f"im{i}.png").write_bytes(png_bytes(300 + i, 256, 192))
        keys = {f"im{i}" for i in range(12)}
        spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="bpp",
                       target_value=1.0, model=tiny_checkpoint, shard_bytes=100)  # one image per shard
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(
            run_job(spec, actor_resources={"encoder": 1}, cpus_per_actor=0.5, max_actors=2)), daemon=True)
        t.start()
        man = tmp_path / "out" / "manifest"
        from ray.util.state import list_actors, list_tasks

        # lose the node of an actor that is running units (the state API says so) while units are still queued,
        # not waiting for the second actor: its start can lag until the first has done every unit, and an actor
        # the pool already released at the end of the queue would test nothing
        deadline = time.time() + 180
        victim = None
        while victim is None and time.time() < deadline and t.is_alive():
            alive = {a.node_id for a in list_actors(filters=[("state", "=", "ALIVE")])
                     if (a.name or "").startswith("msinn-encoder-")}
            running = {x.node_id for x in list_tasks(filters=[("state", "=", "RUNNING")])
                       if (x.name or "").endswith("unit_steps")}
            victim = next((n for n in nodes if n.node_id in alive & running), None)
            time.sleep(0.05)
        done_before = len(list(man.iterdir())) if man.exists() else 0
        assert victim is not None and t.is_alive() and done_before <= 10, (
            f"no busy encoder actor to lose mid-run ({done_before} of 12 shards already committed)")
        cluster.remove_node(victim, allow_graceful=False)
        t.join(400)
        assert not t.is_alive()
        assert result["shards_failed"] == [] and result["actors_lost"] >= 1, (result["actors_lost"], done_before)
        assert result["shards_committed"] == result["shards"] == 12 and result["ok"] == 12
        rows = verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)
        assert sorted(rows) == sorted(keys)  # each key once


@pytest.mark.slow
@pytest.mark.own_ray_cluster
def test_a_job_without_capacity_says_what_it_waits_for_then_runs_when_a_node_joins(
    tmp_path, tiny_checkpoint, caplog, monkeypatch
):
    import logging
    import threading

    from pipeline import pool

    monkeypatch.setattr(pool, "WAIT_LOG_SECONDS", 1.0)
    monkeypatch.setattr(pool, "UNSCHEDULABLE_WARNING_SECONDS", 3.0)
    with _simulated_cluster() as (cluster, _):
        keys = _inputs(tmp_path / "in", 3)
        spec = JobSpec(input=str(tmp_path / "in"), output=str(tmp_path / "out"), target_kind="qp",
                       target_value=1.0, model=tiny_checkpoint)
        caplog.set_level(logging.INFO, logger="pipeline")
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(
            run_job(spec, actor_resources={"encoder": 1}, cpus_per_actor=0.5, max_actors=1)), daemon=True)
        t.start()
        deadline = time.time() + 60
        while time.time() < deadline and "no node offers" not in caplog.text:
            time.sleep(0.2)
        assert "waiting for encoder actors" in caplog.text and "'encoder': 1.0" in caplog.text
        assert "no node offers" in caplog.text and t.is_alive()  # it says why, and keeps waiting
        cluster.add_node(num_cpus=1, resources={"encoder": 1})
        t.join(300)
        assert not t.is_alive() and result["ok"] == 3 and result["shards_failed"] == []
        verify_archive(fsspec.filesystem("file"), str(tmp_path / "out"), keys, tiny_checkpoint)


def _scripts_named(command: str) -> list[str]:
    return [w for w in command.replace('"', " ").split() if w.startswith("jobs/") and w.endswith(".py")]


def test_kubernetes_files_name_entrypoints_that_exist_and_a_spec_that_loads(tmp_path):
    """KubeRay RayCluster, RayJob and the scheduled CronJob: parsed, cross-checked, their scripts and spec real."""
    from pipeline.cli import transcode_parser
    from pipeline.scheduled import load_spec

    docs = {}
    for path in sorted((REPO / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    cluster = docs[("RayCluster", "msinn")]
    lock = (REPO / "requirements-lock.txt").read_text()
    ray_pin = next(line.split("==")[1] for line in lock.splitlines() if line.startswith("ray["))
    assert cluster["spec"]["rayVersion"] == ray_pin and cluster["spec"]["enableInTreeAutoscaling"] is True
    gpu = cluster["spec"]["workerGroupSpecs"][0]
    assert gpu["minReplicas"] == 0 and gpu["maxReplicas"] >= 1
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    images = {c["image"] for spec in [cluster["spec"]["headGroupSpec"], gpu]
              for c in spec["template"]["spec"]["containers"]}
    # the RayJob: its script exists and its arguments parse
    job = docs[("RayJob", "msinn-transcode")]
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == "msinn"
    words = job["spec"]["entrypoint"].split()
    assert words[:2] == ["python", "jobs/transcode.py"] and (REPO / words[1]).exists()
    assert transcode_parser().parse_args(words[2:]).device == "cuda"
    # the CronJob: its script exists, the head service is the cluster's, the ConfigMap's spec loads
    cron = docs[("CronJob", "msinn-nightly")]
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    command = " ".join(container["command"])
    assert _scripts_named(command) == ["jobs/scheduled.py"] and (REPO / "jobs" / "scheduled.py").exists()
    assert "http://msinn-head-svc:8265" in command and container["image"] in images
    spec = tmp_path / "nightly.toml"
    spec.write_text(docs[("ConfigMap", "msinn-nightly")]["data"]["nightly.toml"])
    assert load_spec(spec)["target"] == {"kind": "bpp", "value": 0.5}
    # the image those files run is this repository on Ray's image at the pinned version
    dockerfile = (REPO / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{ray_pin}-py311-gpu" in dockerfile and "pip install --no-cache-dir -r" in dockerfile
