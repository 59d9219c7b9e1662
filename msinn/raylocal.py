"""Joining Ray, or starting a local one that works on a laptop: one definition for training and the pipeline."""

from __future__ import annotations

import os

RAY_ENV_DEFAULTS = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep local clusters on 127.0.0.1
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    # Ray kills idle workers beyond one per CPU after 1 s. A task per chunk of rows (restore,
    # verify) then starts a fresh worker process each time (seconds of CPU on a
    # small machine); kept for a minute, one worker process serves the whole job.
    "RAY_idle_worker_killing_time_threshold_ms": "60000",
}


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join ``address`` (or RAY_ADDRESS, as under ``ray job submit``), else start a local Ray; no-op when connected."""
    for k, v in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(k, v)
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
