"""Reading the images of one work unit: loose files, webdataset tars, Parquet shards.

Every input yields a record, good or bad: an unreadable shard member or a
corrupt image becomes a record with an error, never an exception that would
drop the unit's other images.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tarfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

from msinn.imageio import IMAGE_EXTENSIONS

from . import storage
from .plan import file_key, relative_path
from .spec import ArchivedRow, WorkUnit


@dataclass
class InputRecord:
    key: str
    source_uri: str
    data: bytes | None
    error: str | None = None
    encoded_from: str = "source"  # or "bitstream" when re-encoding a decoded archive member
    original_bytes: int | None = None  # size and hash of the original input, when data is not it
    original_sha256: str | None = None
    target_value: float | None = None  # per-image target from an input column, overriding the job's

    @cached_property
    def sha256(self) -> str | None:
        """Computed once, by whoever asks first (the read-ahead thread, off the encoder's critical path)."""
        if self.original_sha256 is not None:
            return self.original_sha256
        return hashlib.sha256(self.data).hexdigest() if self.data is not None else None

    @property
    def source_bytes(self) -> int | None:
        if self.original_bytes is not None:
            return self.original_bytes
        return len(self.data) if self.data is not None else None


MAX_KEY_BYTES = 1024  # keys become file names on restore: keep them within what file systems take
MAX_KEY_PART_BYTES = 200


def safe_key(key: str) -> str | None:
    """A key usable as a tar member and a restored file name, or None.

    No absolute paths, '.', '..', backslashes or control characters, and no
    path component longer than 200 bytes (file systems stop at 255 with the
    extension added on restore).
    """
    if not key or key.startswith("/") or "\\" in key or any(ord(c) < 32 for c in key):
        return None
    raw = key.encode("utf-8", "surrogatepass")
    if len(raw) > MAX_KEY_BYTES or any(len(p.encode("utf-8", "surrogatepass")) > MAX_KEY_PART_BYTES
                                       for p in key.split("/")):
        return None
    if key in (".", "..") or key.endswith("/"):
        return None
    norm = posixpath.normpath(key)
    if norm != key or norm.startswith("..") or "/../" in f"/{norm}/":
        return None
    return key


def webdataset_key(member: str) -> str:
    """A tar member's sample key by the webdataset convention: its folder and its basename up to the first dot.

    ``a/b.c.png`` and ``a/b.c.json`` are fields ``c.png`` and ``c.json`` of sample ``a/b``.
    A member whose basename starts with a dot keeps its whole name.
    """
    folder, _, base = member.rpartition("/")
    stem = base.split(".", 1)[0] or base
    return f"{folder}/{stem}" if folder else stem


def read_files(unit: WorkUnit, options: dict | None) -> Iterator[InputRecord]:
    for uri in unit.uris:
        key = file_key(uri, unit.root)
        try:
            data = storage.read_bytes(uri, options)
        except Exception as exc:  # one unreadable object must not stop the unit
            yield InputRecord(key, uri, None, f"read failed: {type(exc).__name__}: {exc}")
            continue
        yield InputRecord(key, uri, data)


def read_tar(unit: WorkUnit, options: dict | None) -> Iterator[InputRecord]:
    """Image members of one tar, streamed: one member in memory at a time, whatever the shard's size.

    A shard damaged part-way yields its members up to the damage, then one
    error record that says where reading stopped.
    """
    uri = unit.uris[0]
    seen = 0
    try:
        with storage.open_read(uri, options) as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                seen += 1
                if not m.isfile() or not m.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                key = webdataset_key(m.name)
                src = f"{uri}#{m.name}"
                member = tf.extractfile(m)
                data = member.read() if member is not None else None
                if data is None or len(data) != m.size:
                    yield InputRecord(key, src, None, "unreadable tar member: member truncated")
                    return
                yield InputRecord(key, src, data)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError):
            raise  # the shard itself cannot be read: the unit fails and is reported
        where = f" after {seen} members" if seen else ""
        yield InputRecord(relative_path(uri, unit.root), uri, None, f"unreadable tar shard{where}: {exc}")


def read_parquet(
    unit: WorkUnit, options: dict | None, key_column: str, image_column: str, target_column: str | None = None
) -> Iterator[InputRecord]:
    import pyarrow.parquet as pq

    uri = unit.uris[0]
    with storage.open_read(uri, options) as f:  # ranged reads: one row group in memory at a time
        yield from _parquet_records(pq.ParquetFile(f), uri, unit, key_column, image_column, target_column)


def _parquet_records(
    pf, uri: str, unit: WorkUnit, key_column: str, image_column: str, target_column: str | None
) -> Iterator[InputRecord]:
    names = pf.schema_arrow.names
    columns = [key_column, image_column] + ([target_column] if target_column else [])
    for col in columns:
        if col not in names:
            raise ValueError(f"{uri}: no column {col!r} (columns: {names})")
    row = 0
    for batch in pf.iter_batches(columns=columns, batch_size=256):
        keys = batch.column(0).to_pylist()
        images = batch.column(1).to_pylist()
        targets = batch.column(2).to_pylist() if target_column else [None] * len(keys)
        for k, v, tv in zip(keys, images, targets):
            src = f"{uri}#row={row}"
            row += 1
            if isinstance(v, dict):  # e.g. the {bytes, path} struct of HF datasets
                v = v.get("bytes")
            if k is None:
                yield InputRecord(f"{relative_path(uri, unit.root)}#row={row - 1}", src, None, "missing key")
            elif v is None:
                yield InputRecord(str(k), src, None, "missing image bytes")
            else:
                yield InputRecord(str(k), src, bytes(v), target_value=None if tv is None else float(tv))


def read_source(source_uri: str, options: dict | None, key_column: str = "key", image_column: str = "image") -> bytes:
    """The bytes of one input, from its manifest ``source_uri`` (plain, ``tar#member`` or ``parquet#row=N``).

    A plain file whose name holds a ``#`` is read as itself: the fragment form
    applies only after ``.tar`` or ``.parquet``.
    """
    m = re.fullmatch(r"(.+?\.(?:tar|parquet))#(.+)", source_uri, flags=re.DOTALL)
    if m is None or storage.exists(source_uri, options):
        return storage.read_bytes(source_uri, options)
    uri, frag = m.group(1), m.group(2)
    blob = storage.read_bytes(uri, options)
    if frag.startswith("row=") and uri.endswith(".parquet"):
        import pyarrow.parquet as pq

        row = int(frag[4:])
        table = pq.read_table(io.BytesIO(blob), columns=[image_column])
        v = table.column(0)[row].as_py()
        return v["bytes"] if isinstance(v, dict) else v
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:*") as tf:
        f = tf.extractfile(frag)
        if f is None:
            raise FileNotFoundError(f"{source_uri}: not a file member")
        return f.read()


UNSAFE_KEY = ("unsafe key {key!r} (absolute path, '.' or '..', control characters, or a name too long for a "
              "file system)")


def stream_unit(
    unit: WorkUnit,
    options: dict | None,
    key_column: str = "key",
    image_column: str = "image",
    target_column: str | None = None,
) -> Iterator[InputRecord]:
    """A unit's records one at a time, each with bytes or with an error; unsafe keys already refused.

    Keys shared by several records are not refused here (that needs every
    key): the consumer applies ``refuse_duplicates`` to what it keeps.
    """
    if unit.kind == "rows":
        records: Iterator[InputRecord] = read_archived(unit, options, key_column, image_column)
    elif unit.kind == "files":
        records = read_files(unit, options)
    elif unit.kind == "tar":
        records = read_tar(unit, options)
    else:
        records = read_parquet(unit, options, key_column, image_column, target_column)
    for r in records:
        if safe_key(r.key) is None:
            r.error, r.data = UNSAFE_KEY.format(key=r.key[:80]), None
            r.key = "unsafe-" + hashlib.sha256(r.key.encode("utf-8", "replace")).hexdigest()[:16]
        yield r


def read_ahead(records: Iterator[InputRecord], max_bytes: int, max_records: int = 256,
               init: Callable[[], None] | None = None) -> Iterator[InputRecord]:
    """The same records, read (and hashed) on a background thread while the consumer encodes earlier ones.

    Reading a shard from object storage is network time the encoder would
    otherwise wait for. At most ``max_bytes`` of image data (and
    ``max_records`` records) wait in memory: back-pressure by bytes, so a
    shard of huge images holds no more than one of small ones (a single
    record larger than the budget still passes, alone). An exception in the
    reader is raised to the consumer after the records read before it, as a
    plain loop would; a consumer that stops early stops the reader. ``init``
    runs first on the reader thread (the encoder sets its torch thread count
    there: re-encodes decode bitstreams while reading).
    """
    cond = threading.Condition()
    waiting: deque[tuple[InputRecord, int]] = deque()
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


Keyed = TypeVar("Keyed")  # an InputRecord or a ManifestRow: anything with .key and .source_uri


def refuse_duplicates(items: list[Keyed], fail: Callable[[Keyed, str], None]) -> list[Keyed]:
    """A key shared by several inputs names none of them: every one is failed with the same reason.

    The first keeps the key, the others become ``key~dupN``, so no image is
    archived under another's name and no ``source_uri`` (``tar#member``
    resolves to the last member of that name) points at other bytes. Items
    are input records or manifest rows: anything with ``key`` and ``source_uri``.
    """
    sharing: dict[str, list[Any]] = {}
    for it in items:
        sharing.setdefault(it.key, []).append(it)
    taken = set(sharing)
    for key, group in sharing.items():
        if len(group) < 2:
            continue
        where = ", ".join(str(g.source_uri) for g in group[:4]) + (" ..." if len(group) > 4 else "")
        for i, it in enumerate(group):
            fail(it, f"duplicate key {key!r}: {len(group)} inputs share it ({where}); none is archived")
            if i:
                n = i + 1
                while f"{key}~dup{n}" in taken:
                    n += 1
                it.key = f"{key}~dup{n}"
                taken.add(it.key)
    return items


def read_archived(unit: WorkUnit, options: dict | None, key_column: str, image_column: str) -> Iterator[InputRecord]:
    """Inputs of a re-encode unit, one at a time: the original image if readable (and asked for), else the
    decoded bitstream (decoded only when the encoder gets to it, as tar members are read)."""
    for row in unit.rows:
        yield _read_archived_row(row, unit.root, options, key_column, image_column)


def _read_archived_row(
    row: ArchivedRow, archive: str, options: dict | None, key_column: str, image_column: str
) -> InputRecord:
    src_err = None
    if row.source_mode in ("auto", "source") and row.source_uri:
        try:
            data = read_source(row.source_uri, options, key_column, image_column)
            return InputRecord(row.key, row.source_uri, data, encoded_from="source")
        except Exception as exc:  # the original may be gone: fall back when allowed
            src_err = f"{type(exc).__name__}: {exc}"
    if row.source_mode in ("auto", "bitstream") and row.tar_uri and row.status == "ok":
        try:
            return _decoded_bitstream(row, archive, options)
        except Exception as exc:
            why = f"bitstream unreadable: {type(exc).__name__}: {exc}"
            return InputRecord(row.key, row.source_uri or "", None, why)
    why = f"source unreadable ({src_err})" if src_err else "no bitstream to decode"
    return InputRecord(row.key, row.source_uri or "", None, f"no input: {why}")


def _decoded_bitstream(row: ArchivedRow, archive: str, options: dict | None) -> InputRecord:
    """The archived image as a PNG, decoded from its file in this archive's shards (any codec, every check)."""
    from msinn.images import to_pil

    from .bitstreams import decode_row

    pixels, mode = decode_row(row.manifest_row(archive), options, list(row.decode_model) or None, "cpu")
    buf = io.BytesIO()
    to_pil(pixels, mode).save(buf, format="PNG")
    return InputRecord(row.key, row.source_uri or "", buf.getvalue(), encoded_from="bitstream",
                       original_bytes=row.source_bytes, original_sha256=row.source_sha256)
