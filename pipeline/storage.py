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
import re
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

import fsspec

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


# Words of option names that hold credentials, in the spellings fsspec back ends use (s3fs, gcsfs, adlfs, http).
SECRET_WORDS = {"secret", "key", "keys", "apikey", "token", "tokens", "password", "passwd", "pwd", "passphrase",
                "credential", "credentials", "auth", "authorization", "sas", "sig", "cookie", "cookies"}
SECRET_NAMES = ("connectionstring",)  # names that are secret only as a whole
# Values that carry a credential whatever their option's name: a SAS or presigned query, a connection string,
# user:password@ in a URL, an HTTP authorisation scheme.
SECRET_VALUES = re.compile(
    r"([?&](sig|signature|x-amz-signature|x-amz-credential|x-amz-security-token|x-goog-signature|x-goog-credential)=)"
    r"|(accountkey=|sharedaccesssignature=|sharedaccesskey=|password=|pwd=)"
    r"|(^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]*@)"
    r"|(^(bearer|basic|token|sharedkey|aws4-hmac-sha256)\s)",
    re.IGNORECASE,
)


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
        where = secret_path(opts)
        if where is not None:
            raise argparse.ArgumentTypeError(
                f"storage option {where} looks like a credential: secrets on the command line end up in Ray's job "
                "table and the shell history: put the options in a file and pass --storage-options @FILE, or use "
                "the storage's environment (AWS_* variables, ~/.aws, an instance profile)"
            )
    if not isinstance(opts, dict):
        raise argparse.ArgumentTypeError("storage options must be a JSON object")
    return opts


def _secret_name(name: object) -> bool:
    """``aws_secret_access_key``, ``accountKey``, ``headers.Authorization``, ``sas_token``: yes; ``region_name``,
    ``signature_version``: no."""
    text = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower()
    words = set(re.findall(r"[a-z0-9]+", text))
    return bool(words & SECRET_WORDS) or any(n in re.sub(r"[^a-z0-9]", "", text) for n in SECRET_NAMES)


def secret_path(options: object, path: str = "") -> str | None:
    """Where in (nested) options a credential seems to be, as ``a.b[2]``, or None.

    Any non-empty value (a string, a number, a list, an object) under a
    credential-like name counts, and so does any string shaped like a
    credential (a SAS or presigned query, ``user:pass@`` in a URL, a
    connection string, an ``Authorization`` scheme) under any name.
    """
    if isinstance(options, dict):
        for k, v in options.items():
            here = f"{path}.{k}" if path else str(k)
            if _secret_name(k) and v not in (None, "", [], {}, False):
                return here
            found = secret_path(v, here)
            if found:
                return found
    elif isinstance(options, list | tuple):
        for i, v in enumerate(options):
            found = secret_path(v, f"{path}[{i}]")
            if found:
                return found
    elif isinstance(options, str) and SECRET_VALUES.search(options.strip()):
        return path or "(value)"
    return None


def redact(options: object) -> object:
    """Storage options safe to print: every value under a credential-like name, or shaped like one, replaced."""
    if isinstance(options, dict):
        return {k: "***" if _secret_name(k) else redact(v) for k, v in options.items()}
    if isinstance(options, list | tuple):
        return [redact(v) for v in options]
    if isinstance(options, str) and SECRET_VALUES.search(options.strip()):
        return "***"
    return options if options is not None else {}


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


def within(uri: str, root: str) -> bool:
    """True when ``uri`` is ``root`` or lies below it, compared segment by segment in canonical spelling
    (``/data/in2`` is not under ``/data/in``; ``/data/in/../x`` is not under it either)."""
    u, r = canonical(uri), canonical(root)
    return u == r or u.startswith(r.rstrip("/") + "/")


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


class RefusedInput(ValueError):
    """An input that is not read: outside the input it was planned from, not a regular file, or too large."""


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a folder"), (stat.S_ISLNK, "a symlink")):
        if test(mode):
            return name
    return "not a regular file"


def open_input(uri: str, options: dict | None, root: str) -> BinaryIO:
    """A planned input opened for reading, only if it lies under ``root`` and is a regular file.

    Locally, links are resolved first and the file they lead to must lie
    under ``root`` too; the file is opened without blocking and checked
    with ``fstat``, so a FIFO or a device (which could block forever or
    never end) is refused instead of read. Object stores hold only objects.
    """
    if not within(uri, root):
        raise RefusedInput(f"{uri}: not under the input {root}; only files under it are read")
    fs, path = filesystem(uri, options)
    if not is_local(fs):
        return open_read(uri, options)
    real = os.path.realpath(path)
    real_root = os.path.realpath(canonical(root))
    if not _inside(real, real_root):
        raise RefusedInput(f"{uri}: leads to {real}, outside the input {root}; only files under it are read")
    fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise RefusedInput(f"{uri}: {_kind(st.st_mode)}, not a regular file; only regular files are read")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_input(uri: str, options: dict | None, root: str, max_bytes: int) -> bytes:
    """A planned input's bytes (``open_input``'s checks), refused when larger than ``max_bytes``.

    On object stores this is one ranged GET of at most ``max_bytes + 1`` bytes.
    """
    fs, path = filesystem(uri, options)
    if is_local(fs) or not within(uri, root):
        with open_input(uri, options, root) as f:
            data = f.read(max_bytes + 1)
    else:
        data = _retried(fs, lambda: fs.cat_file(path, start=0, end=max_bytes + 1), f"read {uri}")
    if len(data) > max_bytes:
        raise RefusedInput(f"{uri}: over the limit of {max_bytes} bytes per input image")
    return data


def named_like(uri: str, options: dict | None, prefix: str) -> list[str]:
    """Files beside ``uri`` (same folder) whose names start with ``prefix``: one prefix listing on S3, a folder
    listing elsewhere."""
    fs, path = filesystem(uri, options)
    folder = path.rsplit("/", 1)[0] if "/" in path else path
    if protocol_of(fs) in ("s3", "s3a"):
        found = _retried(fs, lambda: fs.find(folder, maxdepth=1, prefix=prefix), f"list {uri}")
    else:
        found = [e["name"] for e in _retried(fs, lambda: fs.ls(folder, detail=True), f"list {uri}")]
    return sorted(full_uri(fs, p) for p in found if p.rsplit("/", 1)[-1].startswith(prefix))


Skip = Callable[[str, str], None]  # (URI, why) of a listed entry that is not planned


def _log_skip(uri: str, why: str) -> None:
    log.warning("%r: not planned: %s", uri, why)  # repr: a name's control or bidirectional characters escaped


def _special(fs: fsspec.AbstractFileSystem, name: str, info: dict, real_root: str, on_skip: Skip) -> int | None:
    """The size to plan a listed entry that is not a plain file with, or None after reporting why it is skipped.

    The rule for local inputs: a symlink to a regular file inside the input
    is followed (planned under the link's name); a symlink leading outside
    the input, to a folder, or to nothing, and every FIFO, socket or device,
    is skipped and reported. Object stores list only objects.
    """
    uri = full_uri(fs, name)
    if not is_local(fs):
        on_skip(uri, f"not a file (listed as {info.get('type')!r})")
        return None
    try:
        st = os.lstat(name)
        if not stat.S_ISLNK(st.st_mode):
            on_skip(uri, f"{_kind(st.st_mode)}, not a regular file")
            return None
        target = os.path.realpath(name)
        if not os.path.exists(target):
            on_skip(uri, "a dangling symlink")
            return None
        if not _inside(target, real_root):
            on_skip(uri, f"a symlink to {target}, outside the input")
            return None
        tst = os.stat(target)
    except OSError as exc:
        on_skip(uri, f"cannot be inspected ({exc})")
        return None
    if not stat.S_ISREG(tst.st_mode):
        on_skip(uri, f"a symlink to {_kind(tst.st_mode)} (only links to regular files are followed)")
        return None
    return int(tst.st_size)


def file_sizes(uri: str, options: dict | None = None, on_skip: Skip | None = None) -> dict[str, int]:
    """Sizes of every file under a prefix, from one listing call (no per-object requests); other entries
    are reported to ``on_skip`` (or logged) unless ``_special``'s rule plans them."""
    fs, path = filesystem(uri, options)
    if _retried(fs, lambda: fs.isfile(path), f"stat {uri}"):
        info = _retried(fs, lambda: fs.info(path), f"stat {uri}")
        items = {path: info}
    else:
        items = _retried(fs, lambda: fs.find(path, detail=True), f"list {uri}")
    real_root = os.path.realpath(path) if is_local(fs) else path
    out = {}
    for p, i in sorted(items.items()):
        size = int(i.get("size") or 0) if i.get("type", "file") == "file" else _special(
            fs, p, i, real_root, on_skip or _log_skip)
        if size is not None:
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
    (``_special`` says which are planned anyway), never dropped silently.
    """
    fs, path = filesystem(uri, options)
    if _retried(fs, lambda: fs.isfile(path), f"stat {uri}"):
        info = _retried(fs, lambda: fs.info(path), f"stat {uri}")
        yield full_uri(fs, path), int(info.get("size") or 0)
        return
    if protocol_of(fs) in ("s3", "s3a"):
        pages = _s3_pages(fs, path)
    else:
        real_root = os.path.realpath(path) if is_local(fs) else path
        pages = _walk_sorted(fs, path, uri, lambda n, e: _special(fs, n, e, real_root, on_skip or _log_skip))
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
                 special: Callable[[str, dict], int | None]) -> Iterator[tuple[str, int]]:
    """Depth first, one folder listed at a time; memory grows with the widest folder, not the tree."""
    entries = _retried(fs, lambda: fs.ls(path, detail=True), f"list {uri}")
    ordered = sorted(
        (e["name"].rstrip("/") + ("/" if e.get("type") == "directory" else ""), e) for e in entries
        if e["name"].rstrip("/") != path.rstrip("/")  # some file systems list the folder itself
    )
    for name, e in ordered:
        if e.get("type") == "directory":
            yield from _walk_sorted(fs, name.rstrip("/"), uri, special)
        elif e.get("type", "file") == "file":
            yield e["name"], int(e.get("size") or 0)
        elif (size := special(e["name"], e)) is not None:
            yield e["name"], size


def delete(uri: str, options: dict | None = None) -> None:
    fs, path = filesystem(uri, options)
    _retried(fs, lambda: fs.rm(path), f"delete {uri}")
