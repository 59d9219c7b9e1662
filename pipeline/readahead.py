"""Reading ahead of a consumer on a background thread, bounded by bytes.

Reading a shard from object storage is network time the encoder would
otherwise wait for; this overlaps it, holding a bounded amount of input.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar


class _Record(Protocol):
    data: bytes | None

    @property
    def sha256(self) -> str | None: ...


R = TypeVar("R", bound=_Record)


def read_ahead(records: Iterator[R], max_bytes: int, max_records: int = 256,
               init: Callable[[], None] | None = None) -> Iterator[R]:
    """The same records, read (and hashed) on a background thread while the consumer encodes earlier ones.

    At most ``max_bytes`` of image data (and ``max_records`` records) wait in
    memory: back-pressure by bytes, so a shard of huge images holds no more
    than one of small ones (a single record larger than the budget still
    passes, alone). An exception in the reader is raised to the consumer
    after the records read before it, as a plain loop would; a consumer that
    stops early stops the reader. ``init`` runs first on the reader thread
    (the encoder sets its torch thread count there: re-encodes decode
    bitstreams while reading).
    """
    cond = threading.Condition()
    waiting: deque[tuple[R, int]] = deque()
    state = {"held": 0, "done": False, "stop": False, "error": None}

    def produce() -> None:
        try:
            if init is not None:
                init()
            for rec in records:
                size = len(rec.data or b"")
                rec.sha256  # noqa: B018 - hash here, on this thread
                with cond:
                    while not state["stop"] and waiting and (
                            state["held"] + size > max_bytes or len(waiting) >= max_records):
                        cond.wait()
                    if state["stop"]:
                        return
                    waiting.append((rec, size))
                    state["held"] += size
                    cond.notify_all()
        except BaseException as exc:  # handed to the consumer, raised there
            state["error"] = exc
        finally:
            close = getattr(records, "close", None)
            if close is not None:
                close()
            with cond:
                state["done"] = True
                cond.notify_all()

    reader = threading.Thread(target=produce, name="read-ahead", daemon=True)
    reader.start()
    try:
        while True:
            with cond:
                while not waiting and not state["done"]:
                    cond.wait()
                if waiting:
                    rec, size = waiting.popleft()
                    state["held"] -= size
                    cond.notify_all()
                elif state["error"] is not None:
                    raise state["error"]
                else:
                    return
            yield rec
    finally:
        with cond:
            state["stop"] = True
            cond.notify_all()
        reader.join()
