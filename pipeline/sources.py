"""Reading one listed unit: loose files, webdataset tars, Parquet shards, every part of every sample.

Every input yields a record, good or bad: an unreadable shard member or a
corrupt image becomes a record with an error, never an exception that would
drop the unit's other images. Whatever is not an image is a sidecar record
(a caption, a ``.json``, a ``.cls``, any file that shares a key, a tar's
links and folders): it is stored as it is beside its sample's image, so an
archive can replace its input (a Parquet file's other columns are copied by
``shards.copy_columns``). A unit is read only under the job's input
(``root``), from regular files (``containment.open_input``), whatever its plan
says. Records are numbered in stream order; ``skip`` maps numbers to the
reason they are refused unread (the pool's verdict on an image that killed
its encoder). Each record also keeps its place in its container (``index``),
so a restore can rebuild the input in its own order.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from msinn.images import IMAGE_EXTENSIONS

from . import containment
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
    member: str | None = None  # its name in its container: tar member, path under the input; None for Parquet
    index: int = 0  # its place in its container (tar member, file of the unit, Parquet row)
    sidecar: bool = False  # not an image: stored as it is, beside its sample's image
    member_kind: str = "file"  # sidecars: file, directory, symlink, hardlink
    link: str | None = None  # a link member's target
    original: str = "bytes"  # what ``data`` is of the original: its bytes, its pixels (a PNG of them), or neither
    columns_uri: str | None = None  # re-encodes: the Parquet input's other columns the new row keeps

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
    if isinstance(exc, containment.RefusedInput):
        return f"refused: {exc}"
    return f"read failed: {type(exc).__name__}: {exc}"


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def read_files(unit: WorkUnit, options: dict | None, root: str, max_bytes: int = DEFAULT_MAX_INPUT_BYTES,
               skip: dict[int, str] | None = None) -> Iterator[InputRecord]:
    """The unit's files one at a time: images to code, every other file a sidecar of its key."""
    for i, uri in enumerate(unit.uris):
        key, name = file_key(uri, unit.root), relative_path(uri, unit.root)
        side = not is_image_name(uri)
        if skip and i in skip:
            yield InputRecord(key, uri, None, skip[i], member=name, index=i, sidecar=side)
            continue
        try:
            data = containment.read_input(uri, options, root, max_bytes)
        except Exception as exc:  # one unreadable or refused object must not stop the unit
            yield InputRecord(key, uri, None, refused_or_failed(exc), member=name, index=i, sidecar=side)
            continue
        yield InputRecord(key, uri, data, member=name, index=i, sidecar=side)


LINK_KINDS = {tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.DIRTYPE: "directory"}


def read_tar(unit: WorkUnit, options: dict | None, root: str, max_bytes: int = DEFAULT_MAX_INPUT_BYTES,
             skip: dict[int, str] | None = None) -> Iterator[InputRecord]:
    """Every member of one tar, streamed: one member in memory at a time, whatever the shard's size.

    Image members are records to code; every other member (``.txt``,
    ``.json``, any bytes, folders and links) is a sidecar of its sample. A
    shard damaged part-way yields its members up to the damage, then one
    error record that says where reading stopped. A member over
    ``max_bytes`` gets an error record, unread.
    """
    uri = unit.uris[0]
    seen = count = 0
    try:
        f = containment.open_input(uri, options, root)
    except containment.RefusedInput as exc:
        yield InputRecord(relative_path(uri, unit.root), uri, None, refused_or_failed(exc))
        return
    try:
        with f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                position = seen
                seen += 1
                key, src, i = webdataset_key(m.name), f"{uri}#{m.name}", count
                count += 1
                if not m.isfile():
                    kind = LINK_KINDS.get(m.type)
                    why = None if kind else f"tar member of type {m.type!r} (a device, FIFO or other special " \
                                            "file): recorded, not stored"
                    yield InputRecord(key, src, b"", why, member=m.name, index=position, sidecar=True,
                                      member_kind=kind or "special", link=m.linkname or None)
                    continue
                side = not is_image_name(m.name)
                if skip and i in skip:
                    yield InputRecord(key, src, None, skip[i], member=m.name, index=position, sidecar=side)
                    continue
                if m.size > max_bytes:
                    what = "input image" if not side else "input file"
                    yield InputRecord(key, src, None, f"refused: {src}: {m.size} bytes, over the limit of "
                                                      f"{max_bytes} bytes per {what}", member=m.name,
                                      index=position, sidecar=side)
                    continue
                member = tf.extractfile(m)
                data = member.read() if member is not None else None
                if data is None or len(data) != m.size:
                    yield InputRecord(key, src, None, "unreadable tar member: member truncated", member=m.name,
                                      index=position, sidecar=side)
                    return
                yield InputRecord(key, src, data, member=m.name, index=position, sidecar=side)
    except (tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, FileNotFoundError | PermissionError):
            raise  # the shard itself cannot be read: the unit fails and is reported
        where = f" after {seen} members" if seen else ""
        yield InputRecord(relative_path(uri, unit.root), uri, None, f"unreadable tar shard{where}: {exc}",
                          index=seen)


def read_parquet(
    unit: WorkUnit, options: dict | None, key_column: str, image_column: str, target_column: str | None = None,
    root: str | None = None, skip: dict[int, str] | None = None,
) -> Iterator[InputRecord]:
    import pyarrow.parquet as pq

    uri = unit.uris[0]
    try:
        f = containment.open_input(uri, options, unit.root if root is None else root)
    except containment.RefusedInput as exc:
        yield InputRecord(relative_path(uri, unit.root), uri, None, refused_or_failed(exc))
        return
    with f:  # buffered reads, a few rows at a time: a row group is never held whole (PARQUET_READ)
        yield from _parquet_records(pq.ParquetFile(f, **PARQUET_READ), uri, unit, key_column, image_column,
                                    target_column, skip or {})


# How Parquet inputs are read: pages through a 1 MB buffer, 16 rows per batch, so the memory a record costs is
# about its own size whatever the file's row groups (measured: tests/test_pipeline.py, bench/actor_memory.py).
PARQUET_READ = {"buffer_size": 1 << 20, "pre_buffer": False}
PARQUET_BATCH_ROWS = 16


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
    for batch in pf.iter_batches(columns=columns, batch_size=PARQUET_BATCH_ROWS):
        keys = batch.column(0).to_pylist()
        images = batch.column(1).to_pylist()
        targets = batch.column(2).to_pylist() if target_column else [None] * len(keys)
        for k, v, tv in zip(keys, images, targets):
            src, at = f"{uri}#row={row}", row
            row += 1
            if isinstance(v, dict):  # e.g. the {bytes, path} struct of HF datasets
                v = v.get("bytes")
            if k is None:  # its bytes are kept (stored as they are) with the error
                yield InputRecord(f"{relative_path(uri, unit.root)}#row={at}", src, None if v is None else bytes(v),
                                  "missing key", index=at)
            elif at in skip:
                yield InputRecord(str(k), src, None, skip[at], index=at)
            elif v is None:
                yield InputRecord(str(k), src, None, "missing image bytes", index=at)
            else:
                yield InputRecord(str(k), src, bytes(v), target_value=None if tv is None else float(tv), index=at)


def unread_images(unit: WorkUnit, spec, indices: set[int], keys: dict[int, str]) -> list:
    """The bytes of the unit's images at ``indices`` (their rows failed), read again, as members to store as they
    are: a bad image, or one whose key another shares, is kept rather than lost. Read a second time rather than
    held: a unit's images are never all in memory at once. Files over the input limit stay unread."""
    from .keys import escape_name
    from .manifest import Member

    out: list[Member] = []
    limit = spec.max_input_bytes
    try:
        if unit.kind == "files":
            for i in sorted(indices):
                if 0 <= i < len(unit.uris):
                    uri = unit.uris[i]
                    data = containment.read_input(uri, spec.input_options, spec.input, limit)
                    out.append(Member(keys[i], escape_name(relative_path(uri, unit.root)), data, i))
        elif unit.kind == "tar":
            with containment.open_input(unit.uris[0], spec.input_options, spec.input) as f, \
                    tarfile.open(fileobj=f, mode="r|*") as tf:
                for position, m in enumerate(tf):
                    if position in indices and m.isfile() and m.size <= limit:
                        member = tf.extractfile(m)
                        if member is not None:
                            out.append(Member(keys[position], escape_name(m.name), member.read(), position))
        elif unit.kind == "parquet":
            import pyarrow.parquet as pq

            with containment.open_input(unit.uris[0], spec.input_options, spec.input) as f:
                pf = pq.ParquetFile(f, **PARQUET_READ)
                row = 0
                for batch in pf.iter_batches(columns=[spec.image_column], batch_size=PARQUET_BATCH_ROWS):
                    for v in batch.column(0).to_pylist():
                        if row in indices:
                            v = v.get("bytes") if isinstance(v, dict) else v
                            if v is not None:
                                out.append(Member(keys[row], f"{keys[row]}.{spec.image_column}", bytes(v), row))
                        row += 1
    except Exception as exc:  # noqa: BLE001 -- the rows keep their own errors; only the stored copies are missing
        import logging

        logging.getLogger("pipeline.sources").warning("unit %s: failed images could not be read again to store "
                                                      "them as they are (%s: %s)", unit.unit_id, type(exc).__name__,
                                                      exc)
    return out
