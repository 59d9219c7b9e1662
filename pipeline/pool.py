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
joined later, takes the next unit. Idle actors are released as soon as the
queue is empty.

An actor can die in many ways: Ray's memory monitor kills it (out of memory),
its node is lost, it crashes or exits, or the pool stops it because one image
has been read or encoded for longer than the time limit. Each costs only the
unit it held: the unit goes back to the queue and a new actor takes the dead
one's place. Actors report each step of a unit (the record they start to
read or encode) as a Ray streaming generator, so what a dead actor was doing
is known in the driver, which outlives it. A unit that lost an actor is
handed out carefully (no read-ahead, and each report delivered before the
step starts), so a further loss names the image responsible; an image named
``losses_per_image`` times
is refused unread on the next try, with an error row that says what
happened ("killed its encoder twice: out of memory"), and the unit's other
images are archived. Losses that name no image fail the unit after
``losses_per_unit``: a job always ends.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .spec import Attempt, JobError, WorkUnit

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
    image_seconds: float | None = None  # one record's read or encode, at most; None: no limit
    losses_per_image: int = 2  # actors an image may cost before it is refused unread
    losses_per_unit: int = 6  # losses that name no image before the unit fails

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
    images_refused: int = 0  # images refused unread because they cost their actors


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


OOM_WORDS = ("running low on memory", "memory pressure", "RAY_memory_usage_threshold")
NODE_WORDS = ("node has died", "node died", "NodeDiedError", "raylet died", "was removed")


def loss_cause(exc: BaseException) -> str:
    """What killed an actor, in a few words, from the error Ray raised for its call."""
    from ray import exceptions as rx

    text = str(exc)
    # Ray's memory monitor says so in these words; every crash's text also mentions "the OOM killer" as a
    # possible cause, so that phrase proves nothing
    if isinstance(exc, rx.OutOfMemoryError) or any(w in text for w in OOM_WORDS):
        return "out of memory"
    if isinstance(exc, rx.NodeDiedError | rx.LocalRayletDiedError) or any(w in text for w in NODE_WORDS):
        return "its node was lost"
    return "its worker process died"


@dataclass
class _Busy:
    """An actor at work on a unit: which actor, which unit, how it was handed out, and its last reported step."""

    n: int
    handle: Any
    unit: WorkUnit
    attempt: Attempt
    stage: str = "starting"
    index: int | None = None
    since: float = field(default_factory=time.time)  # when the current step began (the driver's clock)


class Pool:
    """Runs ``call(actor, unit, attempt)`` for every unit on an elastic set of actors; one method per event.

    A call returns an ObjectRef of the unit's summary, or a streaming
    generator of steps (``("read", i)``, ``("encode", i)``, ``("commit",
    None)``) that ends with ``("done", summary)``. Never raises for a unit's
    failure; units are pulled from ``units`` only when an actor is free.
    """

    def __init__(self, units: Iterable[WorkUnit], total: int, make_actor: Callable[[int], Any],
                 call: Callable[[Any, WorkUnit, Attempt], Any], settings: PoolSettings,
                 on_result: Callable[[WorkUnit, dict], None] = lambda u, r: None,
                 on_tick: Callable[[], None] = lambda: None):
        self.queue = UnitQueue(units, total)
        self.make_actor, self.call, self.settings = make_actor, call, settings
        self.on_result, self.on_tick = on_result, on_tick
        self.out = PoolResult()
        self.starting: dict[Any, tuple[int, Any]] = {}  # ready() ref -> (actor number, handle)
        self.busy: dict[Any, _Busy] = {}  # the call's ref or generator -> the actor's work
        self.idle: list[tuple[int, Any]] = []
        self.counter = self.start_failures = 0
        self.tries: Counter[str] = Counter()  # a unit's own failures
        self.careful: set[str] = set()  # units that lost an actor
        self.loose_losses: Counter[str] = Counter()  # losses that named no image
        self.blamed: dict[tuple[str, int], list[str]] = defaultdict(list)  # (unit, record) -> causes
        self.skips: dict[str, dict[int, str]] = defaultdict(dict)  # unit -> record -> its error row
        self.stopped: dict[str, str] = {}  # unit -> why the pool stopped its actor
        self.t0 = self.last_wait_log = self.last_check = time.time()
        self.warned = False
        limit = settings.image_seconds
        self.tick = min(WAIT_LOG_SECONDS, max(0.5, limit / 4)) if limit else WAIT_LOG_SECONDS

    def run(self) -> PoolResult:
        import ray

        if self.settings.min_actors > 0:
            _request([self.settings.bundle()] * self.settings.min_actors)
        try:
            for _ in range(self.wanted()):
                self.start_one()
            while self.queue or self.busy:
                self.hand_out()
                refs = list(self.busy) + list(self.starting)
                if not refs:  # every actor was lost while units remain
                    self.start_one()
                    continue
                done, _ = ray.wait(refs, num_returns=1, timeout=self.tick)
                self.on_tick()
                if time.time() - self.last_check >= self.tick:  # busy actors' steps must not hide a stalled one
                    self.last_check = time.time()
                    self.check_time()
                if not done:
                    self.waited()
                elif done[0] in self.starting:
                    self.actor_started(done[0])
                else:
                    self.stepped(done[0])
        finally:
            self.shut_down()
        return self.out

    # ---------------------------------------------------------------- plumbing

    def wanted(self) -> int:
        return min(self.settings.max_actors, len(self.queue) + len(self.busy))

    def start_one(self) -> None:
        handle = self.make_actor(self.counter)
        self.starting[handle.ready.remote()] = (self.counter, handle)
        self.counter += 1
        self.out.actors_started += 1

    def replace_lost(self) -> None:
        if len(self.starting) + len(self.busy) + len(self.idle) < self.wanted():
            self.start_one()

    def hand_out(self) -> None:
        import ray

        while self.idle and self.queue:
            n, handle = self.idle.pop()
            unit = self.queue.take()
            uid = unit.unit_id
            attempt = Attempt(skip=tuple(sorted(self.skips[uid].items())), careful=uid in self.careful)
            self.busy[self.call(handle, unit, attempt)] = _Busy(n, handle, unit, attempt)
        if not self.queue:  # release what is idle or still pending: the autoscaler may take its node back
            for _, handle in self.idle + list(self.starting.values()):
                ray.kill(handle)
            self.idle.clear()
            self.starting.clear()

    def stepped(self, ref: Any) -> None:
        """A busy actor reported a step, finished, failed, or died."""
        import ray
        from ray.exceptions import RayError, RayTaskError

        work = self.busy.pop(ref)
        try:
            if isinstance(ref, ray.ObjectRef):
                step: tuple = ("done", ray.get(ref))
            else:
                step = tuple(ray.get(next(ref)))
        except StopIteration:  # a stream that ended without its summary: its actor went away
            self.actor_lost(work, RuntimeError("the unit's steps ended early"))
        except RayTaskError as exc:  # the unit raised: its actor is fine
            self.unit_failed(work, exc)
        except RayError as exc:  # any other way a call ends in Ray: the actor or its node is gone
            self.actor_lost(work, exc)
        else:
            if step[0] == "done":
                self.unit_done(work, step[1])
            else:
                work.stage, work.index, work.since = step[0], step[1], time.time()
                self.busy[ref] = work

    def shut_down(self) -> None:
        import ray

        for _, handle in self.idle + list(self.starting.values()) + [(w.n, w.handle) for w in self.busy.values()]:
            ray.kill(handle)
        if self.settings.min_actors > 0:
            _request([])  # give the capacity back

    # ---------------------------------------------------------------- events

    def actor_started(self, ref: Any) -> None:
        import ray
        from ray.exceptions import RayError

        n, handle = self.starting.pop(ref)
        try:
            ray.get(ref, timeout=0)
        except RayError as exc:  # its constructor raised, or it died starting (out of memory, a lost node, ...)
            self.start_failures += 1
            self.out.actors_lost += 1
            message = str(exc).strip().splitlines()[-1][:300]
            log.warning("encoder actor %d did not start: %s", n, message)
            if self.start_failures >= self.settings.start_failures:
                raise JobError(f"{self.start_failures} encoder actors in a row failed to start: {message}") from None
            self.replace_lost()
            return
        self.start_failures = 0
        if self.out.first_actor_seconds is None:
            self.out.first_actor_seconds = time.time() - self.t0
        self.idle.append((n, handle))

    def unit_done(self, work: _Busy, res: dict) -> None:
        self.out.images_refused += len(work.attempt.skip)
        self.on_result(work.unit, res)
        self.idle.append((work.n, work.handle))

    def unit_failed(self, work: _Busy, exc: BaseException) -> None:
        uid = work.unit.unit_id
        self.tries[uid] += 1
        message = str(exc).strip().splitlines()[-1][:300]
        if self.tries[uid] < self.settings.attempts:
            log.warning("unit %s failed (%s); try %d of %d", uid, message, self.tries[uid] + 1, self.settings.attempts)
            self.queue.put_back(work.unit)
        else:
            log.error("unit %s failed %d times: %s", uid, self.settings.attempts, message)
            self.out.failed.append(uid)
        self.idle.append((work.n, work.handle))

    def actor_lost(self, work: _Busy, exc: BaseException) -> None:
        import ray

        uid = work.unit.unit_id
        self.out.actors_lost += 1
        cause = self.stopped.pop(uid, None) or loss_cause(exc)
        ray.kill(work.handle)  # an actor that is only unreachable must not come back holding the unit
        exact = work.attempt.careful and work.stage in ("read", "encode")
        log.warning("encoder actor %d lost while on unit %s (%s, during %s of record %s); the unit goes back to the "
                    "queue", work.n, uid, cause, work.stage, work.index)
        self.careful.add(uid)
        if exact and work.index is not None:
            self.blame(uid, work.index, cause)
        else:
            self.loose_losses[uid] += 1
            if self.loose_losses[uid] >= self.settings.losses_per_unit:
                log.error("unit %s lost %d actors without naming an image: it fails", uid, self.loose_losses[uid])
                self.out.failed.append(uid)
                self.replace_lost()
                return
        self.queue.put_front(work.unit)
        self.replace_lost()

    def blame(self, uid: str, index: int, cause: str) -> None:
        """Count a loss against a record; at ``losses_per_image`` it is refused unread from now on."""
        causes = self.blamed[(uid, index)]
        causes.append(cause)
        if len(causes) < self.settings.losses_per_image:
            return
        times = "twice" if len(causes) == 2 else f"{len(causes)} times"
        verb = "stopped" if all(c.startswith("over the time limit") for c in causes) else "killed"
        self.skips[uid][index] = f"{verb} its encoder {times}: {'; '.join(dict.fromkeys(causes))}"
        log.warning("unit %s: record %d %s; it is refused unread from now on", uid, index, self.skips[uid][index])

    def waited(self) -> None:
        """Nothing happened within a tick: say what the pool waits for."""
        now = time.time()
        if self.busy or self.idle or now - self.last_wait_log < WAIT_LOG_SECONDS:
            return
        import ray

        self.last_wait_log = now
        if self.out.first_actor_seconds is not None:
            log.info("waiting for %d encoder actor(s) to start in place of lost ones", len(self.starting))
            return
        have = {k: v for k, v in ray.cluster_resources().items()
                if not k.startswith(("node:", "memory", "object_store"))}
        log.info("waiting for encoder actors: %d pending, none placed yet after %.0f s; each needs %s; the cluster "
                 "has %s (an autoscaler adds nodes for pending actors)", len(self.starting), now - self.t0,
                 self.settings.bundle(), have or "no resources")
        if now - self.t0 >= UNSCHEDULABLE_WARNING_SECONDS and not self.warned:
            self.warned = True
            log.warning("no encoder actor could be placed in %.0f s: no node offers %s now. The job waits for the "
                        "autoscaler; if no node type of the cluster has these resources, stop it and change "
                        "--device, --cpus-per-actor or --actor-resources", now - self.t0, self.settings.bundle())

    def check_time(self) -> None:
        """Stop the actor of any unit whose current step (a record's read or encode) has run over the limit."""
        import ray

        limit = self.settings.image_seconds
        now = time.time()
        for work in self.busy.values() if limit else ():
            uid = work.unit.unit_id
            if now - work.since > limit and uid not in self.stopped:
                self.stopped[uid] = f"over the time limit of {limit:g} s per image (--image-timeout)"
                log.warning("unit %s: %s of record %s has taken %.0f s, over the limit of %g s: stopping its actor",
                            uid, work.stage, work.index, now - work.since, limit)
                ray.kill(work.handle)


def run_pool(
    units: Iterable[WorkUnit],
    total: int,
    make_actor: Callable[[int], Any],
    call: Callable[[Any, WorkUnit, Attempt], Any],
    settings: PoolSettings,
    on_result: Callable[[WorkUnit, dict], None] = lambda u, r: None,
    on_tick: Callable[[], None] = lambda: None,
) -> PoolResult:
    """Run ``call(actor, unit, attempt)`` for each of the ``total`` units on an elastic set of actors (``Pool``)."""
    return Pool(units, total, make_actor, call, settings, on_result, on_tick).run()
