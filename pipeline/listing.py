"""Listing a job's input: every file with its size, in sorted URI order, streamed.

The planner relies on the order (and checks it); entries that are not plain
files follow the symlink rule of :mod:`pipeline.containment`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator

import fsspec

from .containment import Skip, special_entry_size
from .storage import filesystem, full_uri, is_local, protocol_of, retried

log = logging.getLogger("pipeline.storage")  # the name its skips have always been logged under


def named_like(uri: str, options: dict | None, prefix: str) -> list[str]:
    """Files beside ``uri`` (same folder) whose names start with ``prefix``: one prefix listing on S3, a folder
    listing elsewhere."""
    fs, path = filesystem(uri, options)
    folder = path.rsplit("/", 1)[0] if "/" in path else path
    if protocol_of(fs) in ("s3", "s3a"):
        found = retried(fs, lambda: fs.find(folder, maxdepth=1, prefix=prefix), f"list {uri}")
    else:
        found = [e["name"] for e in retried(fs, lambda: fs.ls(folder, detail=True), f"list {uri}")]
    return sorted(full_uri(fs, p) for p in found if p.rsplit("/", 1)[-1].startswith(prefix))


def _log_skip(uri: str, why: str) -> None:
    log.warning("%r: not planned: %s", uri, why)  # repr: a name's control or bidirectional characters escaped


def _single_file(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> tuple[str, int] | None:
    """(uri, size) when the input names one file rather than a prefix: both listings start with this."""
    if not retried(fs, lambda: fs.isfile(path), f"stat {uri}"):
        return None
    info = retried(fs, lambda: fs.info(path), f"stat {uri}")
    return full_uri(fs, path), int(info.get("size") or 0)


def _entry_size(
    fs: fsspec.AbstractFileSystem, real_root: str, on_skip: Skip | None
) -> Callable[[str, dict], int | None]:
    """The size rule both listings apply to one entry: a file's own size; links and other entries as
    ``special_entry_size`` decides (None: not planned, reported to ``on_skip`` or logged)."""

    def size(name: str, info: dict) -> int | None:
        if info.get("type", "file") == "file":
            return int(info.get("size") or 0)
        return special_entry_size(fs, name, info, real_root, on_skip or _log_skip)

    return size


def file_sizes(uri: str, options: dict | None = None, on_skip: Skip | None = None) -> dict[str, int]:
    """Sizes of every file under a prefix, from one listing call (no per-object requests); other entries
    are reported to ``on_skip`` (or logged) unless ``special_entry_size``'s rule plans them."""
    fs, path = filesystem(uri, options)
    if (one := _single_file(fs, path, uri)) is not None:
        return dict([one])
    items = retried(fs, lambda: fs.find(path, detail=True), f"list {uri}")
    size_of = _entry_size(fs, os.path.realpath(path) if is_local(fs) else path, on_skip)
    out = {}
    for p, i in sorted(items.items()):
        if (size := size_of(p, i)) is not None:
            out[full_uri(fs, p)] = size
    return out


LIST_PAGE = 1000  # objects pulled from a paged listing per call into the file system's event loop


def iter_file_sizes(uri: str, options: dict | None = None, on_skip: Skip | None = None) -> Iterator[tuple[str, int]]:
    """Every file under a prefix with its size, in sorted URI order, a page or a folder at a time.

    The listing is never held whole, so a prefix of tens of millions of
    objects can stream into a plan. S3 is listed flat, page by page (each
    page retried by botocore); other file systems are walked folder by
    folder, each folder sorted so the walk yields the same order as a sorted
    flat listing (``a.png`` before ``a/x.png``, because ``.`` < ``/``). An
    object store may still return keys out of order: the planner checks.
    Entries that are not plain files go to ``on_skip`` with the reason
    (``special_entry_size`` says which are planned anyway), never dropped silently.
    """
    fs, path = filesystem(uri, options)
    if (one := _single_file(fs, path, uri)) is not None:
        yield one
        return
    if protocol_of(fs) in ("s3", "s3a"):
        pages = _s3_pages(fs, path)
    else:
        pages = _walk_sorted(fs, path, uri, _entry_size(fs, os.path.realpath(path) if is_local(fs) else path, on_skip))
    for name, size in pages:  # the order is checked by the planner, which relies on it
        yield full_uri(fs, name), size


def _s3_pages(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[tuple[str, int]]:
    """A flat S3 listing (no delimiter), pulled a page at a time through s3fs's own paginated iterator."""
    from fsspec.asyn import sync

    bucket, _, key = path.partition("/")
    prefix = key.rstrip("/") + "/" if key else ""
    pages = fs._iterdir(bucket, delimiter="", prefix=prefix)

    async def take(n: int) -> list[dict]:
        out: list[dict] = []
        try:
            while len(out) < n:
                out.append(await pages.__anext__())
        except StopAsyncIteration:
            pass
        return out

    while batch := sync(fs.loop, take, LIST_PAGE):
        for info in batch:
            if info.get("type") == "file" and not info["name"].endswith("/"):
                yield info["name"], int(info.get("size") or 0)


def _walk_sorted(fs: fsspec.AbstractFileSystem, path: str, uri: str,
                 size_of: Callable[[str, dict], int | None]) -> Iterator[tuple[str, int]]:
    """Depth first, one folder listed at a time; memory grows with the widest folder, not the tree."""
    entries = retried(fs, lambda: fs.ls(path, detail=True), f"list {uri}")
    ordered = sorted(
        (e["name"].rstrip("/") + ("/" if e.get("type") == "directory" else ""), e) for e in entries
        if e["name"].rstrip("/") != path.rstrip("/")  # some file systems list the folder itself
    )
    for name, e in ordered:
        if e.get("type") == "directory":
            yield from _walk_sorted(fs, name.rstrip("/"), uri, size_of)
        elif (size := size_of(e["name"], e)) is not None:
            yield e["name"], size
