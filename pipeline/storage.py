"""Object storage access: fsspec filesystems, retries with backoff, atomic writes, canonical URIs.

(Storage options and their secrets: :mod:`pipeline.storage_options`; what of an
input may be read: :mod:`pipeline.containment`; listing an input:
:mod:`pipeline.listing`.)

Credentials and endpoints come from the storage's own configuration (for S3:
the AWS environment variables and files, ``AWS_ENDPOINT_URL`` included) or
from explicit storage options; they are passed to workers as task arguments
and never logged.
"""

from __future__ import annotations

import logging
import os
import posixpath
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

import fsspec

from msinn.atomic import write_atomic

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


ESCAPED_BYTE = re.compile(r"\\x[89a-f][0-9a-f]")


def escape_name(name: str) -> str:
    """A name as text: each byte that is not UTF-8 (a surrogate, as Python reads such a file or tar member name)
    becomes the four characters ``\\xHH``. Keys, manifests and plans hold only text; names read back with
    :func:`unescape_name`. A literal backslash in an input name is refused as a key, so an escape never
    collides with a real key."""
    if not any("\udc80" <= c <= "\udcff" for c in name):
        return name
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if "\udc80" <= c <= "\udcff" else c for c in name)


def unescape_name(text: str) -> str:
    """The name :func:`escape_name` wrote, with its non-UTF-8 bytes back (as surrogates, which the local file
    system and tarfile write as the original bytes)."""
    if "\\x" not in text:
        return text
    return ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(0)[2:], 16)), text)



def protocol_of(fs: fsspec.AbstractFileSystem) -> str:
    """A file system's main protocol name (fsspec gives a string or a tuple of aliases)."""
    return fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return protocol_of(fs) in ("file", "local")


def full_uri(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """A path that fsspec listed, as a URI that opens on the same file system (local paths stay plain)."""
    return path if is_local(fs) else f"{protocol_of(fs)}://{path}"


def attempts_for(fs: fsspec.AbstractFileSystem) -> int:
    return 1 if protocol_of(fs) in SELF_RETRYING else 6


def retried(fs: fsspec.AbstractFileSystem, fn: Callable[[], T], what: str) -> T:
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
        return retried(fs, lambda: fs.cat_file(path), f"read {uri}")
    return retried(fs, lambda: fs.cat_file(path, start=start, end=end), f"read {uri}[{start}:{end}]")


def open_read(uri: str, options: dict | None = None):
    """A file object for streaming reads (ranged requests on object stores); opening is retried, reading is not:
    a stream that breaks fails its unit, which is tried again as a whole."""
    fs, path = filesystem(uri, options)
    return retried(fs, lambda: fs.open(path, "rb"), f"open {uri}")


def write_bytes(uri: str, data: bytes, options: dict | None = None) -> None:
    """Whole-object write that readers never see half done.

    Object stores make a single PUT visible at once, so there the object is
    written as it is (fsspec's ``pipe_file``); local files go through the
    project's one local writer, :func:`msinn.atomic.write_atomic` (temporary
    file, fsync, rename).
    """
    fs, path = filesystem(uri, options)

    def put() -> None:
        parent = path.rsplit("/", 1)[0]
        if is_local(fs):
            fs.makedirs(parent, exist_ok=True)
            write_atomic(path, data)
        else:
            fs.pipe_file(path, data)

    retried(fs, put, f"write {uri}")


def exists(uri: str, options: dict | None = None) -> bool:
    fs, path = filesystem(uri, options)
    return retried(fs, lambda: fs.exists(path), f"stat {uri}")


def list_files(uri: str, options: dict | None = None) -> list[str]:
    """Every file under a prefix (recursive), as full URIs, sorted."""
    fs, path = filesystem(uri, options)
    if not retried(fs, lambda: fs.exists(path), f"stat {uri}"):
        return []
    if retried(fs, lambda: fs.isfile(path), f"stat {uri}"):
        found = [path]
    else:
        found = retried(fs, lambda: fs.find(path), f"list {uri}")
    return sorted(full_uri(fs, p) for p in found)


def delete(uri: str, options: dict | None = None) -> None:
    fs, path = filesystem(uri, options)
    retried(fs, lambda: fs.rm(path), f"delete {uri}")
