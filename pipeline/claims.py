"""One job per output: a driver claims an output before it plans, so a second driver with another job is refused.

Two drivers started together on an empty output with different targets
would both list the input, both freeze a plan (the later ``plan.json``
wins) and both exit 0, with only one job's rows left. Object stores offer
no portable exclusive create, so each driver writes a claim of its own
(``_plan/claims/<run_id>.json``: its job and when it was written), then reads
every claim: a live claim for a different job refuses this driver, in one
line. If both write before either reads, both are refused: never a silent
overwrite. A claim stays live for ``STALE_SECONDS`` after its last refresh
(the driver refreshes it while it lists), so a driver that died blocks the
output for minutes, not forever (a claim whose time is not a finite number,
or lies further in the future than clocks drift, is ignored with a warning:
one planted with ``Infinity`` or next year's date would otherwise block the
output for ever); once the plan is frozen, the plan's own job check takes
over and the claim is removed. Drivers of the same job may share
an output (a rerun after a killed driver must not wait).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from . import storage
from .spec import JobError

log = logging.getLogger("pipeline")
T = TypeVar("T")

CLAIMS = "claims"
STALE_SECONDS = 900.0
REFRESH_SECONDS = 60.0
CLOCK_SKEW_SECONDS = 300.0  # a claim dated further ahead than drivers' clocks differ was not written by a driver


def _differences(mine: dict, theirs: dict) -> dict:
    keys = (set(mine) | set(theirs)) - {"run_id"}
    return {k: (theirs.get(k), mine.get(k)) for k in sorted(keys) if mine.get(k) != theirs.get(k)}


class Claim:
    """This driver's claim on an output's plan folder, refreshed while it plans, removed once the plan is frozen."""

    def __init__(self, plan_folder: str, run_id: str, job: dict, options: dict | None):
        self.folder = storage.join(plan_folder, CLAIMS)
        self.uri = storage.join(self.folder, f"{run_id}.json")
        self.job, self.options = job, options
        self.written = 0.0

    def write(self) -> None:
        self.written = time.time()
        body = json.dumps({"job": self.job, "at": self.written}, sort_keys=True).encode()
        storage.write_bytes(self.uri, body, self.options)

    def refresh_if_due(self) -> None:
        if time.time() - self.written >= REFRESH_SECONDS:
            self.write()

    def release(self) -> None:
        try:
            storage.delete(self.uri, self.options)
        except FileNotFoundError:
            pass

    def rivals(self) -> Iterator[tuple[str, dict]]:
        """Other live claims for a different job: (claim URI, differences as {field: (theirs, mine)})."""
        for uri in storage.list_files(self.folder, self.options):
            if uri == self.uri or not uri.endswith(".json"):
                continue
            try:
                other = json.loads(storage.read_bytes(uri, self.options))
                age = claim_age(other["at"])
                diff = _differences(self.job, dict(other["job"]))
            except FileNotFoundError:  # released meanwhile
                continue
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s: unreadable claim ignored (%s)", uri, exc)
                continue
            if age < STALE_SECONDS and diff:
                yield uri, diff


def claim_age(at: object, now: float | None = None) -> float:
    """Seconds since a claim was written; a ValueError for a time that is not one (not a finite number, or
    further in the future than clocks drift): such a claim is ignored, never live for ever."""
    now = time.time() if now is None else now
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        raise ValueError(f"its time {at!r} is not a finite number of seconds")
    if at - now > CLOCK_SKEW_SECONDS:
        raise ValueError(f"it is dated {at - now:.0f} s in the future")
    return max(0.0, now - at)


def claim_output(plan_folder: str, output: str, run_id: str, job: dict, options: dict | None) -> Claim:
    """Write this driver's claim, or raise JobError (one line) if another driver claims the output for another job."""
    claim = Claim(plan_folder, run_id, job, options)
    claim.write()
    for uri, diff in claim.rivals():
        claim.release()
        raise JobError(f"{output} is being planned by another driver for a different job (its claim {uri}; "
                       f"theirs vs mine: {diff}); wait for it to finish or use another output")
    return claim


def refreshing(items: Iterable[T], claim: Claim) -> Iterator[T]:
    """The same items, refreshing the claim as they stream (a listing can take longer than a claim lives)."""
    for item in items:
        claim.refresh_if_due()
        yield item
