"""An elastic pool of encoder actors on Ray Core, fed one unit at a time.

Why Ray Core and not Ray Data: a unit must be read, encoded and committed
(tar, then manifest shard) by one worker, so the exactly-once commit needs no
coordination, and the plan, resume and per-image error rows stay as they are.
Ray Data would add a read stage that competes with the actors for CPUs (the
pipeline deadlocked that way on 2 CPUs: actors held every CPU, reads never
ran) and an output stage we do not want. Here the actor reads its own unit,
so no resource shape can starve a reader, and only unit descriptors and small
results travel through the object store.

Elasticity comes from Ray itself: up to ``max_actors`` actors are created at
once; those that do not fit stay pending, and their resource demand is what
makes the autoscaler add nodes (``min_actors`` bundles are also requested
through ``ray.autoscaler.sdk.request_resources``, so a fresh cluster with no
workers scales up at once). An actor that appears later, on a node that
joined later, takes the next unit. A dead actor (spot loss, OOM, a removed
node) costs only the unit it held: the unit goes back to the queue, and a new
actor is created in its place, with no cap that ends the job. Idle actors are
released as soon as the queue is empty.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .spec import JobError, WorkUnit

log = logging.getLogger("pipeline")

WAIT_LOG_SECONDS = 10.0
UNSCHEDULABLE_WARNING_SECONDS = 60.0


@dataclass
class PoolSettings:
    """How many actors, of what shape, and how often one unit may be tried."""

    min_actors: int = 1
    max_actors: int = 1
    shape: dict[str, Any] = field(default_factory=lambda: {"num_cpus": 1.0})  # Ray actor options
    attempts: int = 3  # tries per unit when the unit itself raises (a dead actor does not count)
    start_failures: int = 3  # actors in a row that fail in their constructor: the job cannot run

    def bundle(self) -> dict[str, float]:
        """The shape as an autoscaler resource bundle."""
        b = {"CPU": float(self.shape.get("num_cpus", 0) or 0), "GPU": float(self.shape.get("num_gpus", 0) or 0)}
        b.update({k: float(v) for k, v in (self.shape.get("resources") or {}).items()})
        return {k: v for k, v in b.items() if v > 0}


@dataclass
class PoolResult:
    failed: list[str] = field(default_factory=list)  # unit ids that failed every attempt
    actors_started: int = 0
    actors_lost: int = 0
    first_actor_seconds: float | None = None


def _request(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler for capacity up front (a no-op on clusters without one)."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception as exc:  # not every cluster has an autoscaler
        log.debug("request_resources: %s", exc)


class UnitQueue:
    """Units still to hand out: returned units first, then the rest pulled lazily from the plan.

    The plan is read as the pool asks for units, so the driver never holds a
    big job's units at once; its length is known from the plan's count.
    """

    def __init__(self, units: Iterable[WorkUnit], total: int):
        self.fresh: Iterator[WorkUnit] = iter(units)
        self.untaken = total
        self.again: deque[WorkUnit] = deque()

    def __len__(self) -> int:
        return len(self.again) + self.untaken

    def take(self) -> WorkUnit:
        if self.again:
            return self.again.popleft()
        self.untaken -= 1
        try:
            return next(self.fresh)
        except StopIteration:
            self.untaken = 0
            raise RuntimeError("the plan held fewer units than it was counted to hold") from None

    def put_front(self, unit: WorkUnit) -> None:
        self.again.appendleft(unit)

    def put_back(self, unit: WorkUnit) -> None:
        self.again.append(unit)


def run_pool(
    units: Iterable[WorkUnit],
    total: int,
    make_actor: Callable[[int], Any],
    call: Callable[[Any, WorkUnit], Any],
    settings: PoolSettings,
    on_result: Callable[[WorkUnit, dict], None] = lambda u, r: None,
    on_tick: Callable[[], None] = lambda: None,
) -> PoolResult:
    """Run ``call(actor, unit)`` for each of the ``total`` units on an elastic set of actors.

    Never raises for a unit's failure; units are pulled from ``units`` only
    when an actor is free to take one.
    """
    import ray
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    out = PoolResult()
    queue = UnitQueue(units, total)
    tries: Counter[str] = Counter()
    starting: dict[Any, tuple[int, Any]] = {}  # ready() ref -> (actor number, handle)
    busy: dict[Any, tuple[int, Any, WorkUnit]] = {}  # process ref -> (actor number, handle, unit)
    idle: list[tuple[int, Any]] = []
    counter = 0
    start_failures = 0
    t0 = time.time()
    last_wait_log = t0
    warned = False
    if settings.min_actors > 0:
        _request([settings.bundle()] * settings.min_actors)

    def start_one() -> None:
        nonlocal counter
        handle = make_actor(counter)
        starting[handle.ready.remote()] = (counter, handle)
        counter += 1
        out.actors_started += 1

    def wanted() -> int:
        return min(settings.max_actors, len(queue) + len(busy))

    for _ in range(wanted()):
        start_one()
    while queue or busy:
        while idle and queue:
            n, handle = idle.pop()
            unit = queue.take()
            busy[call(handle, unit)] = (n, handle, unit)
        if not queue:  # release what is idle or still pending: the autoscaler may take its node back
            for _, handle in idle + list(starting.values()):
                ray.kill(handle)
            idle.clear()
            starting.clear()
        refs = list(busy) + list(starting)
        if not refs:  # every actor was lost while units remain
            start_one()
            continue
        done, _ = ray.wait(refs, num_returns=1, timeout=WAIT_LOG_SECONDS)
        on_tick()
        if not done:
            now = time.time()
            if not busy and not idle and now - last_wait_log >= WAIT_LOG_SECONDS:
                last_wait_log = now
                have = {k: v for k, v in ray.cluster_resources().items() if not k.startswith(("node:", "memory",
                                                                                               "object_store"))}
                log.info("waiting for encoder actors: %d pending, none placed yet after %.0f s; each needs %s; "
                         "the cluster has %s (an autoscaler adds nodes for pending actors)",
                         len(starting), now - t0, settings.bundle(), have or "no resources")
                if now - t0 >= UNSCHEDULABLE_WARNING_SECONDS and not warned:
                    warned = True
                    log.warning("no encoder actor could be placed in %.0f s: no node offers %s now. The job waits "
                                "for the autoscaler; if no node type of the cluster has these resources, stop it and "
                                "change --device, --cpus-per-actor or --actor-resources", now - t0, settings.bundle())
            continue
        ref = done[0]
        if ref in starting:
            n, handle = starting.pop(ref)
            try:
                ray.get(ref, timeout=0)
            except (RayActorError, RayTaskError, GetTimeoutError) as exc:
                start_failures += 1
                out.actors_lost += 1
                message = str(exc).strip().splitlines()[-1][:300]
                log.warning("encoder actor %d did not start: %s", n, message)
                if start_failures >= settings.start_failures:
                    raise JobError(f"{start_failures} encoder actors in a row failed to start: {message}") from None
                if len(starting) + len(busy) + len(idle) < wanted():
                    start_one()
                continue
            start_failures = 0
            if out.first_actor_seconds is None:
                out.first_actor_seconds = time.time() - t0
            idle.append((n, handle))
            continue
        n, handle, unit = busy.pop(ref)
        try:
            res = ray.get(ref)
        except RayActorError as exc:  # the actor or its node is gone: only this unit is redone
            out.actors_lost += 1
            log.warning("encoder actor %d lost while on unit %s (%s); the unit goes back to the queue",
                        n, unit.unit_id, str(exc).strip().splitlines()[0][:200])
            queue.put_front(unit)
            if len(starting) + len(busy) + len(idle) < wanted():
                start_one()
            continue
        except RayTaskError as exc:  # the unit raised: try it again, a few times
            tries[unit.unit_id] += 1
            message = str(exc).strip().splitlines()[-1][:300]
            if tries[unit.unit_id] < settings.attempts:
                log.warning("unit %s failed (%s); try %d of %d", unit.unit_id, message, tries[unit.unit_id] + 1,
                            settings.attempts)
                queue.put_back(unit)
            else:
                log.error("unit %s failed %d times: %s", unit.unit_id, settings.attempts, message)
                out.failed.append(unit.unit_id)
            idle.append((n, handle))
            continue
        on_result(unit, res)
        idle.append((n, handle))
    for _, handle in idle:
        ray.kill(handle)
    for _, handle in starting.values():
        ray.kill(handle)
    if settings.min_actors > 0:
        _request([])  # give the capacity back
    return out
