"""Joining or starting Ray (``msinn.raylocal``, shared with training), and naming runs."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from msinn.raylocal import RAY_ENV_DEFAULTS, init_ray

__all__ = ["RAY_ENV_DEFAULTS", "init_ray", "new_run_id"]


def new_run_id() -> str:
    """Sortable by time, unique across drivers: ``20261125T163344Z-1a2b3c4d``."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]
