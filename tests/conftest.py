"""Shared fixtures: paths into ../shared and models built from the conformance recipe."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import faults
import pytest
import torch
from pipeline_helpers import free_port

from msinn.raylocal import RAY_ENV_DEFAULTS as RAY_ENV

faults.register()  # flaky:// in the test process; local_ray registers it in Ray's workers

# Tests that start Ray clusters, train, or submit jobs are `slow`: `pytest -m "not slow"` is the quick loop.
# Every test that uses a Ray-cluster fixture is marked here; others are marked where they are written.
SLOW_FIXTURES = {"local_ray"}


def _uses_ray(item) -> bool:
    return item.get_closest_marker("own_ray_cluster") is not None or bool(
        SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))


def _xdist_group(item, name: str) -> None:
    """Put a test in a pytest-xdist group (``--dist loadgroup``), as an ``xdist_group`` mark would.

    xdist 3.8 appends the group to ``item._nodeid``, which pytest 9 no longer reads, so its marks group
    nothing: the group is appended to the node's id here, where pytest keeps it. Older pytest reads the mark.
    """
    try:
        from _pytest.nodeid import NodeId
    except ImportError:  # pytest < 9: xdist's own mark works
        item.add_marker(pytest.mark.xdist_group(name))
        return
    if not item.nodeid.endswith(f"@{name}"):
        item._id = NodeId.parse(f"{item.nodeid}@{name}")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
        # Under `-n 2 --dist loadgroup` (scripts/test.sh) the tests on the shared cluster run in one worker, one
        # after the other; the tests that start clusters of their own run in the other, one after the other, then
        # that worker takes the codec's tests. The two groups take about 7 and 3 minutes on a quiet 2-core machine,
        # the codec's tests 3: most of a Ray test's time is waiting on processes, so the cores are not oversubscribed.
        if getattr(config.option, "loadgroup", False) and _uses_ray(item):
            _xdist_group(item, "ray-own" if item.get_closest_marker("own_ray_cluster") else "ray")
    # One Ray cluster serves every test that uses `local_ray` (started once, see below). A test that starts a
    # cluster of its own must disconnect this process from it, which ends it: those tests run last of the Ray
    # tests. The Ray tests, the longest group, come first, so a worker starts on them at once.
    items.sort(key=lambda item: (not _uses_ray(item), item.get_closest_marker("own_ray_cluster") is not None))


def pytest_configure(config):
    # pytest-xdist's workers share the machine's cores: one torch thread each, or their OpenMP threads
    # oversubscribe the cores and every convolution waits on the slowest thread.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CONFORMANCE = SHARED / "conformance"
VECTORS = CONFORMANCE / "vectors"
KODAK = SHARED / "datasets" / "kodak"


def _recipe():
    spec = importlib.util.spec_from_file_location("msinn_conformance_recipe", CONFORMANCE / "recipe.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="session")
def vector_index() -> dict:
    return json.loads((VECTORS / "index.json").read_text())


@pytest.fixture(scope="session")
def recipe_state_dicts(vector_index) -> dict[int, dict[str, torch.Tensor]]:
    recipe = _recipe()
    return {
        int(name.removeprefix("anchor")): recipe.recipe_state_dict(schema["state_dict"])
        for name, schema in vector_index["schemas"].items()
    }


@pytest.fixture(scope="session")
def recipe_models(recipe_state_dicts):
    """Released-configuration models with the recipe weights, as the README describes."""
    from msinn import MSINN

    models = {}
    for anchors, sd in recipe_state_dicts.items():
        m = MSINN(anchor_num=anchors)
        m.load_state_dict(sd, strict=False)
        m.update()
        m.eval()
        models[anchors] = m
    return models


@pytest.fixture(scope="session")
def tiny_model():
    """A small randomly initialised model for fast behavioural tests."""
    from msinn import MSINN, MSINNConfig
    from msinn.training.loop import init_gains

    torch.manual_seed(0)
    m = MSINN(MSINNConfig(N=16, M=16, depths=(1, 1, 1, 1), context_channels=16, anchor_num=4, post_process=False))
    m.train()
    with torch.no_grad():
        m(torch.rand(2, 3, 64, 64), [0, 3])  # data-dependent act-norm initialisation
    init_gains(m, 1.0, 8.0)
    m.update()
    m.eval()
    return m


# ---------------------------------------------------------------- pipeline fixtures


@pytest.fixture(scope="session")
def s3_server():
    """A real S3 endpoint: moto's server on 127.0.0.1, with AWS settings pointing at it."""
    import os
    import shutil
    import subprocess
    import time
    import urllib.request

    port = free_port()
    exe = shutil.which("moto_server") or str(Path(__file__).resolve().parents[1] / ".venv" / "bin" / "moto_server")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(port)], **quiet)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except Exception:
            time.sleep(0.1)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_ENDPOINT_URL": endpoint,
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(10)


@pytest.fixture()
def s3_bucket(s3_server, request):
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(key="testing", secret="testing", client_kwargs={"endpoint_url": s3_server})
    name = f"test-{uuid.uuid4().hex[:12]}"
    fs.mkdir(name)
    return fs, name


def save_portable_copy(model, path: Path) -> str:
    """Convert a float test model to the portable profile (calibrated on two crops) and save it."""
    import numpy as np

    from msinn.checkpoint import save_portable
    from msinn.portable.convert import convert

    rng = np.random.default_rng(0)
    crops = [torch.from_numpy(rng.random((1, 3, 64, 128), dtype=np.float32)) for _ in range(2)]
    save_portable(path, convert(model, crops))
    return str(path)


BUNDLED = "msinn-small-2026-11d-p1"  # the default portable model whose golden files the suite decodes


@pytest.fixture(scope="module")
def model():
    """The bundled default model, loaded once per module (tests may change its state; other modules get a fresh one)."""
    import msinn

    return msinn.load(BUNDLED)


@pytest.fixture(scope="session")
def tiny_float_checkpoint(tmp_path_factory, tiny_model) -> str:
    """The tiny float model as a checkpoint file (float32 profile: decodes only under its own numerics)."""
    import msinn

    p = tmp_path_factory.mktemp("model") / "tiny-float.pt"
    msinn.save_checkpoint(p, tiny_model)
    return str(p)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_model) -> str:
    """The tiny model in the portable profile, as a file Ray workers load by path.

    Portable: archives written in one process decode in any other, whatever its threads.
    """
    return save_portable_copy(tiny_model, tmp_path_factory.mktemp("model") / "tiny-test.pt")


_SHARED_RAY: dict[str, str] = {}  # the shared cluster's GCS address while this process is connected to it


def shared_ray_address() -> str | None:
    """The shared cluster's address, if this process is connected to it (another driver may join it)."""
    import ray

    if ray.is_initialized() and ray.get_runtime_context().gcs_address == _SHARED_RAY.get("address"):
        return _SHARED_RAY["address"]
    return None


@pytest.fixture(scope="session")
def _ray_session(s3_server):
    """Owns the shared cluster: shut down at the end of the session (before the S3 endpoint stops)."""
    yield _SHARED_RAY
    import ray

    if shared_ray_address():
        ray.shutdown()


@pytest.fixture(scope="module")
def local_ray(_ray_session):
    """A local Ray cluster of 2 CPUs, shared by every module that uses it (one start per session).

    Started after the S3 endpoint, so its workers find their own credentials in
    their environment, as a cluster's nodes do (the driver never copies keys).
    Tests on it leave nothing behind that the next one sees: each job's actors
    end with the job, outputs are under each test's own tmp_path. Tests that
    need a cluster of another shape start their own (marked ``own_ray_cluster``,
    run last); if one ran before, the next module starts the shared cluster again.
    """
    import os

    os.environ.update(RAY_ENV)
    import ray

    if shared_ray_address() is None:
        if ray.is_initialized():
            ray.shutdown()
        # the flaky:// test file system lives here, not in the shipped package: workers register it at start
        tests = str(Path(__file__).resolve().parent)
        path = os.pathsep.join(p for p in (tests, os.environ.get("PYTHONPATH", "")) if p)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": path}, "worker_process_setup_hook": "faults.register"})
        _ray_session["address"] = ray.get_runtime_context().gcs_address
    return ray
