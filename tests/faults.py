"""A file system that fails on purpose, for testing retries end to end.

``flaky://PATH`` wraps another fsspec file system (``target_protocol``,
default ``file``) and makes a deterministic share of calls raise
``ConnectionError`` before they reach it, the way an object store's transient
errors look to a client. Storage options: ``fail_every`` (every N-th call
fails; 0 = never), ``target_protocol``, ``target_options``; and, for actor
deaths and hangs, ``die_on`` (reading a file whose name holds this string
kills the reading process at once, as the kernel's or Ray's OOM killer would),
``grow_on`` (reading such a file allocates memory, 64 MB at a time up to
``grow_limit`` bytes, 2 GB by default, as a decoder without bounds would:
for Ray's own memory monitor to act on) and ``hang_on`` (reading such a
file blocks, as a FIFO or a stalled store would).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import fsspec
from fsspec import AbstractFileSystem


class FlakyFileSystem(AbstractFileSystem):
    protocol = "flaky"

    def __init__(self, fail_every: int = 3, target_protocol: str = "file", target_options: dict | None = None,
                 die_on: str | None = None, hang_on: str | None = None, grow_on: str | None = None,
                 grow_limit: int = 2 << 30, list_delay: float = 0.0, **kw):
        super().__init__(**kw)
        self.fail_every = int(fail_every)
        self.die_on, self.hang_on, self.grow_on, self.grow_limit = die_on, hang_on, grow_on, int(grow_limit)
        self.list_delay = float(list_delay)
        self.inner = fsspec.filesystem(target_protocol, **(target_options or {}))
        self._calls = 0
        self._lock = threading.Lock()
        self.failures = 0

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = path[len("flaky://") :] if path.startswith("flaky://") else path
        return path.rstrip("/") or "/"

    def _maybe_fail(self, what: str, path: str) -> None:
        with self._lock:
            self._calls += 1
            fail = self.fail_every and self._calls % self.fail_every == 0
            if fail:
                self.failures += 1
        if fail:
            raise ConnectionError(f"injected transient failure: {what} {path}")

    def _fault(self, path: str) -> None:
        if self.die_on and self.die_on in path:
            os.kill(os.getpid(), signal.SIGKILL)
        if self.hang_on and self.hang_on in path:
            time.sleep(3600)
        if self.grow_on and self.grow_on in path:
            held = []
            while sum(map(len, held)) < self.grow_limit:
                held.append(bytearray(b"\1" * (64 << 20)))  # written, so the pages are really taken
                time.sleep(0.05)
            time.sleep(60)  # at the limit: wait for the memory monitor

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kw: Any) -> bytes:
        self._fault(path)
        self._maybe_fail("read", path)
        return self.inner.cat_file(self._strip_protocol(path), start=start, end=end, **kw)

    def pipe_file(self, path: str, value: bytes, **kw: Any) -> None:
        self._maybe_fail("write", path)
        p = self._strip_protocol(path)
        self.inner.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
        self.inner.pipe_file(p, value, **kw)

    def info(self, path: str, **kw: Any) -> dict:
        self._maybe_fail("stat", path)
        return self.inner.info(self._strip_protocol(path), **kw)

    def ls(self, path: str, detail: bool = True, **kw: Any):
        time.sleep(self.list_delay)
        self._maybe_fail("list", path)
        return self.inner.ls(self._strip_protocol(path), detail=detail, **kw)

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False, detail: bool = False, **kw: Any):
        self._maybe_fail("list", path)
        return self.inner.find(self._strip_protocol(path), maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kw)

    def exists(self, path: str, **kw: Any) -> bool:
        self._maybe_fail("stat", path)
        return self.inner.exists(self._strip_protocol(path))

    def isfile(self, path: str) -> bool:
        return self.inner.isfile(self._strip_protocol(path))

    def rm(self, path: str, recursive: bool = False, maxdepth: int | None = None) -> None:
        self._maybe_fail("delete", path)
        self.inner.rm(self._strip_protocol(path), recursive=recursive)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.inner.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def _open(self, path: str, mode: str = "rb", **kw: Any):
        if "r" in mode:
            self._fault(path)
        self._maybe_fail("open", path)
        return self.inner.open(self._strip_protocol(path), mode)


def register() -> None:
    fsspec.register_implementation("flaky", FlakyFileSystem, clobber=True)
