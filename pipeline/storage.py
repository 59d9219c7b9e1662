"""Object storage access: fsspec filesystems, retries with backoff, atomic writes.

Credentials and endpoints come from the storage's own configuration (for S3:
the AWS environment variables and files, ``AWS_ENDPOINT_URL`` included) or
from explicit storage options; they are passed to workers as task arguments
and never logged.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import posixpath
import random
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import fsspec

from msinn.imageio import full_uri, is_local, protocol_of

log = logging.getLogger("pipeline.storage")
T = TypeVar("T")

# Errors that say the request can never succeed: retrying would only delay the report.
PERMANENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, ValueError, TypeError)
# Credential and configuration errors look like any other exception from botocore; they are never transient.
PERMANENT_NAMES = {"NoCredentialsError", "PartialCredentialsError", "NoRegionError", "CredentialRetrievalError",
                   "InvalidConfigError", "ProfileNotFound"}
PERMANENT_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                   "AllAccessDisabled", "NoSuchBucket", "InvalidBucketName"}
# Clients that retry transient errors themselves, with backoff (botocore under s3fs, gcsfs, adlfs):
# a loop of ours on top would multiply their attempts.
SELF_RETRYING = {"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"}


def attempts_for(fs: fsspec.AbstractFileSystem) -> int:
    return 1 if protocol_of(fs) in SELF_RETRYING else 6


def _retried(fs: fsspec.AbstractFileSystem, fn: Callable[[], T], what: str) -> T:
    """``fn`` on ``fs``, retried by us only where the file system's client does not retry by itself."""
    return with_retries(fn, what, attempts=attempts_for(fs))


def is_permanent(exc: BaseException) -> bool:
    """True for errors that another try cannot fix: missing objects, refused or missing credentials, bad input."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PERMANENT) or type(exc).__name__ in PERMANENT_NAMES:
            return True
        code = getattr(exc, "response", {}).get("Error", {}).get("Code") if isinstance(
            getattr(exc, "response", None), dict) else None
        if code in PERMANENT_CODES:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


SECRET_WORDS = ("secret", "key", "token", "password", "credential")


def options_arg(value: str) -> dict:
    """``--storage-options``: ``@FILE`` (a JSON file, the safe way to pass secrets) or inline JSON.

    A command line is not a safe place for a secret: Ray keeps every job's
    entrypoint (``ray list jobs``, the dashboard). Inline options that hold
    anything secret-looking are refused with a pointer to ``@FILE``.
    """
    if value.startswith("@"):
        path = os.path.expanduser(value[1:])
        try:
            with open(path, encoding="utf-8") as f:
                opts = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise argparse.ArgumentTypeError(f"cannot read storage options from {path}: {exc}") from None
    else:
        try:
            opts = json.loads(value)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"storage options are not JSON ({exc})") from None
        if _has_secret(opts):
            raise argparse.ArgumentTypeError(
                "secrets on the command line end up in Ray's job table and the shell history: put the options in "
                "a file and pass --storage-options @FILE, or use the storage's environment (AWS_* variables, "
                "~/.aws, an instance profile)"
            )
    if not isinstance(opts, dict):
        raise argparse.ArgumentTypeError("storage options must be a JSON object")
    return opts


def _has_secret(options: object) -> bool:
    if isinstance(options, dict):
        return any(
            (isinstance(v, str) and v and any(w in str(k).lower() for w in SECRET_WORDS)) or _has_secret(v)
            for k, v in options.items()
        )
    return False


def redact(options: dict | None) -> dict:
    """Storage options safe to print: secrets replaced."""
    out = {}
    for k, v in (options or {}).items():
        if isinstance(v, dict):
            out[k] = redact(v)
        elif any(s in k.lower() for s in SECRET_WORDS):
            out[k] = "***"
        else:
            out[k] = v
    return out


S3_RETRIES = {"retries": {"mode": "adaptive", "max_attempts": 10}}  # botocore's own backoff, client-side throttling


def filesystem(uri: str, options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system for a URI. Listing caches are dropped: Ray workers write behind its back.

    S3 clients retry in botocore's adaptive mode unless the options say otherwise.
    """
    options = dict(options or {})
    if uri.startswith(("s3://", "s3a://")) and "config_kwargs" not in options:
        options["config_kwargs"] = S3_RETRIES
    fs, path = fsspec.core.url_to_fs(uri, **options)
    fs.invalidate_cache()
    return fs, path


def canonical(uri: str) -> str:
    """One spelling per location, fixed in the driver before anything is written or planned.

    Local paths (``./arch``, ``a/../b``, ``file:///x/``, ``~/x``) become absolute
    normalised paths: Ray workers run in other working directories. Object
    store URIs lose ``.``/``..`` segments, doubled and trailing slashes.
    """
    uri = str(uri)
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" not in uri:
        return os.path.normpath(os.path.abspath(os.path.expanduser(uri)))
    protocol, rest = uri.split("://", 1)
    norm = posixpath.normpath("/" + rest.lstrip("/"))  # never above the root
    if not rest.startswith("/"):  # bucket/key: no leading slash (file-like protocols keep theirs)
        norm = norm.lstrip("/")
    return f"{protocol.lower()}://{norm}"


def canonical_model(model: str | None) -> str | None:
    """A model given as a local file, by its canonical path; registry names and URIs as they are."""
    if model and "://" not in model and os.path.exists(model):
        return canonical(model)
    return model


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *(p.strip("/") for p in parts)])


def with_retries(fn: Callable[[], T], what: str, attempts: int = 6, base_delay: float = 0.2) -> T:
    """Run fn, retrying transient failures with exponential backoff and jitter."""
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:  # storage clients raise many transient kinds
            if is_permanent(exc) or i == attempts - 1:
                raise
            delay = base_delay * (2**i) * (0.5 + random.random())
            log.warning(
                "%s failed (%s: %s); retry %d/%d in %.2fs", what, type(exc).__name__, exc, i + 1, attempts - 1, delay
            )
            time.sleep(delay)
    raise AssertionError("unreachable")


def read_bytes(uri: str, options: dict | None = None, start: int | None = None, end: int | None = None) -> bytes:
    fs, path = filesystem(uri, options)
    if start is None:
        return _retried(fs, lambda: fs.cat_file(path), f"read {uri}")
    return _retried(fs, lambda: fs.cat_file(path, start=start, end=end), f"read {uri}[{start}:{end}]")


def open_read(uri: str, options: dict | None = None):
    """A file object for streaming reads (ranged requests on object stores); opening is retried, reading is not:
    a stream that breaks fails its unit, which is tried again as a whole."""
    fs, path = filesystem(uri, options)
    return _retried(fs, lambda: fs.open(path, "rb"), f"open {uri}")


def write_bytes(uri: str, data: bytes, options: dict | None = None) -> None:
    """Whole-object write that readers never see half done.

    Object stores make a single PUT visible at once; on file systems the data
    goes to a temporary name first and is renamed into place.
    """
    fs, path = filesystem(uri, options)

    def put() -> None:
        parent = path.rsplit("/", 1)[0]
        if is_local(fs):
            fs.makedirs(parent, exist_ok=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex}"
            with fs.open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            fs.pipe_file(path, data)

    _retried(fs, put, f"write {uri}")


def exists(uri: str, options: dict | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return _retried(fs, lambda: fs.exists(path), f"stat {uri}")


def list_files(uri: str, options: dict | None = None) -> list[str]:
    """Every file under a prefix (recursive), as full URIs, sorted."""
    fs, path = filesystem(uri, options)
    if not _retried(fs, lambda: fs.exists(path), f"stat {uri}"):
        return []
    if _retried(fs, lambda: fs.isfile(path), f"stat {uri}"):
        found = [path]
    else:
        found = _retried(fs, lambda: fs.find(path), f"list {uri}")
    return sorted(full_uri(fs, p) for p in found)


def file_sizes(uri: str, options: dict | None = None) -> dict[str, int]:
    """Sizes of every file under a prefix, from one listing call (no per-object requests)."""
    fs, path = filesystem(uri, options)
    if _retried(fs, lambda: fs.isfile(path), f"stat {uri}"):
        info = _retried(fs, lambda: fs.info(path), f"stat {uri}")
        items = {path: info}
    else:
        items = _retried(fs, lambda: fs.find(path, detail=True), f"list {uri}")
    return {full_uri(fs, p): int(i.get("size") or 0) for p, i in sorted(items.items())
            if i.get("type", "file") == "file"}


LIST_PAGE = 1000  # objects pulled from a paged listing per call into the file system's event loop


class ListingOrderError(RuntimeError):
    """The store listed keys out of order (S3 directory buckets do): a streamed plan cannot rely on it."""


def iter_file_sizes(uri: str, options: dict | None = None) -> Iterator[tuple[str, int]]:
    """Every file under a prefix with its size, in sorted URI order, a page or a folder at a time.

    The listing is never held whole, so a prefix of tens of millions of
    objects can stream into a plan. S3 is listed flat, page by page (each
    page retried by botocore); other file systems are walked folder by
    folder, each folder sorted so the walk yields the same order as a sorted
    flat listing (``a.png`` before ``a/x.png``, because ``.`` < ``/``). An
    object store may still return keys out of order: ``plan.iter_units``
    raises ``ListingOrderError`` when it sees that.
    """
    fs, path = filesystem(uri, options)
    if _retried(fs, lambda: fs.isfile(path), f"stat {uri}"):
        info = _retried(fs, lambda: fs.info(path), f"stat {uri}")
        yield full_uri(fs, path), int(info.get("size") or 0)
        return
    if protocol_of(fs) in ("s3", "s3a"):
        pages = _s3_pages(fs, path)
    else:
        pages = _walk_sorted(fs, path, uri)
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


def _walk_sorted(fs: fsspec.AbstractFileSystem, path: str, uri: str) -> Iterator[tuple[str, int]]:
    """Depth first, one folder listed at a time; memory grows with the widest folder, not the tree."""
    entries = _retried(fs, lambda: fs.ls(path, detail=True), f"list {uri}")
    ordered = sorted(
        (e["name"].rstrip("/") + ("/" if e.get("type") == "directory" else ""), e) for e in entries
        if e["name"].rstrip("/") != path.rstrip("/")  # some file systems list the folder itself
    )
    for name, e in ordered:
        if e.get("type") == "directory":
            yield from _walk_sorted(fs, name.rstrip("/"), uri)
        elif e.get("type", "file") == "file":
            yield e["name"], int(e.get("size") or 0)


def delete(uri: str, options: dict | None = None) -> None:
    fs, path = filesystem(uri, options)
    _retried(fs, lambda: fs.rm(path), f"delete {uri}")
