"""Reading the images of one listed unit: loose files, webdataset tars, Parquet shards.

Every input yields a record, good or bad: an unreadable shard member or a
corrupt image becomes a record with an error, never an exception that would
drop the unit's other images. A unit is read only under the job's input
(``root``), from regular files (``storage.open_input``), whatever its plan
says. Records are numbered in stream order; ``skip`` maps numbers to the
reason they are refused unread (the pool's verdict on an image that killed
its encoder).
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from msinn.images import IMAGE_EXTENSIONS

from . import storage
from .keys import file_key, relative_path, webdataset_key
from .spec import WorkUnit

DEFAULT_MAX_INPUT_BYTES = 4 << 30  # one input image file, at most (JobSpec.max_input_bytes)


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


def refused_or_failed(exc: BaseException) -> str:
    """An input read's error, as the row says it: ``refused: ...`` for what is never read, ``read failed: ...``."""
    if isinstance(exc, storage.RefusedInput):
        return f"refused: {exc}"
    return f"read failed: {type(exc).__name__}: {exc}"


def read_files(unit: WorkUnit, options: dict | None, root: str, max_bytes: int = DEFAULT_MAX_INPUT_BYTES,
               skip: dict[int, str] | None = None) -> Iterator[InputRecord]:
    for i, uri in enumerate(unit.uris):
        key = file_key(uri, unit.root)
        if skip and i in skip:
            yield InputRecord(key, uri, None, skip[i])
            continue
        try:
            data = storage.read_input(uri, options, root, max_bytes)
        except Exception as exc:  # one unreadable or refused object must not stop the unit
            yield InputRecord(key, uri, None, refused_or_failed(exc))
            continue
        yield InputRecord(key, uri, data)


def read_tar(unit: WorkUnit, options: dict | None, root: str, max_bytes: int = DEFAULT_MAX_INPUT_BYTES,
             skip: dict[int, str] | None = None) -> Iterator[InputRecord]:
    """Image members of one tar, streamed: one member in memory at a time, whatever the shard's size.

    A shard damaged part-way yields its members up to the damage, then one
    error record that says where reading stopped. A member over ``max_bytes``
    gets an error record, unread.
    """
    uri = unit.uris[0]
    seen = index = 0
    try:
        f = storage.open_input(uri, options, root)
    except storage.RefusedInput as exc:
        yield InputRecord(relative_path(uri, unit.root), uri, None, refused_or_failed(exc))
        return
    try:
        with f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                seen += 1
                if not m.isfile() or not m.name.lower().endswith(IMAGE_EXTENSIONS):
                    continue
                key, src, i = webdataset_key(m.name), f"{uri}#{m.name}", index
                index += 1
                if skip and i in skip:
                    yield InputRecord(key, src, None, skip[i])
                    continue
                if m.size > max_bytes:
                    yield InputRecord(key, src, None, f"refused: {src}: {m.size} bytes, over the limit of "
                                                      f"{max_bytes} bytes per input image")
                    continue
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
    unit: WorkUnit, options: dict | None, key_column: str, image_column: str, target_column: str | None = None,
    root: str | None = None, skip: dict[int, str] | None = None,
) -> Iterator[InputRecord]:
    import pyarrow.parquet as pq

    uri = unit.uris[0]
    try:
        f = storage.open_input(uri, options, unit.root if root is None else root)
    except storage.RefusedInput as exc:
        yield InputRecord(relative_path(uri, unit.root), uri, None, refused_or_failed(exc))
        return
    with f:  # ranged reads: one row group in memory at a time
        yield from _parquet_records(pq.ParquetFile(f), uri, unit, key_column, image_column, target_column,
                                    skip or {})


def _parquet_records(
    pf, uri: str, unit: WorkUnit, key_column: str, image_column: str, target_column: str | None,
    skip: dict[int, str],
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
            elif row - 1 in skip:
                yield InputRecord(str(k), src, None, skip[row - 1])
            elif v is None:
                yield InputRecord(str(k), src, None, "missing image bytes")
            else:
                yield InputRecord(str(k), src, bytes(v), target_value=None if tv is None else float(tv))
