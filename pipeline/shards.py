"""Output shards: building a bitstream tar, committing a unit, and finding the units already committed.

A unit is committed in two whole-object writes (three for Parquet inputs):
the tar of bitstreams first (a webdataset shard: each image's file beside
its sample's other parts, in the input's order), the copy of a Parquet
input's other columns next, the manifest shard last. A reader that finds a manifest shard therefore finds
every bitstream it names; a unit interrupted anywhere before its manifest
write is simply redone, rewriting its whole tar and then its manifest shard.
The redo holds the same bytes with a portable model; float32 files (their
numerics record) or a model changed between runs give other bytes, which is
safe because the manifest shard written last describes the tar written first.
"""

from __future__ import annotations

import io
import tarfile
from datetime import UTC, datetime

from . import containment, manifest, storage
from .bitstreams import member_name
from .manifest import ManifestRow, Member
from .spec import JobSpec, WorkUnit


def _unique(name: str, taken: set[str]) -> str:
    """A tar member name no other entry of the shard has (two inputs may share one: a tar may repeat a name)."""
    out, n = name, 1
    while out in taken:
        n += 1
        out = f"{name}~{n}"
    taken.add(out)
    return out


def tar_uri(spec: JobSpec, unit: WorkUnit) -> str:
    return storage.join(spec.output, "bitstreams", f"{unit.shard_name}.tar")


def manifest_uri(spec: JobSpec, unit: WorkUnit) -> str:
    return storage.join(spec.output, "manifest", f"{unit.shard_name}.parquet")


def build_tar(members: list[tuple[str, bytes]]) -> tuple[bytes, dict[str, tuple[int, int]]]:
    """A deterministic tar (fixed mtime, owner, mode) and each member's (data offset, length)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tf:
        offsets = {m.name: (m.offset_data, m.size) for m in tf.getmembers()}
    return blob, offsets


def sample_row(spec: JobSpec, unit: WorkUnit, m: Member) -> ManifestRow:
    """The row of a sample with no image to code: its parts are stored, nothing is decoded (codec ``none``)."""
    source = None  # where the sample's first part came from, in the form an image's source_uri takes
    if unit.kind == "tar" and unit.uris:
        source = f"{unit.uris[0]}#{m.name}"
    elif unit.kind == "parquet" and unit.uris:
        source = f"{unit.uris[0]}#row={m.index}"
    elif unit.kind == "files" and 0 <= m.index < len(unit.uris):
        source = unit.uris[m.index]
    return ManifestRow(key=m.key, status="ok", source_uri=source, run_id=spec.run_id, unit_id=unit.unit_id,
                       created_at=datetime.now(UTC), codec="none", source_index=m.index, members=[])


def commit(spec: JobSpec, unit: WorkUnit, results: list[tuple[ManifestRow, bytes | None]],
           members: list[Member] | None = None) -> list[ManifestRow]:
    """Write the unit's tar (images and their samples' other parts, in the input's order), a Parquet input's
    other columns, then the manifest shard; returns the final rows.

    Every member is attached to its sample's row (``members``); a sample
    with parts but no image gets a row of its own (codec ``none``), so
    nothing read is dropped. Rows and members without a place in the input
    (re-encodes of older archives) keep the order they come in.
    """
    rows = [row for row, _ in results]
    by_key = {row.key: row for row in rows}
    order: list[tuple[int, int, str, bytes, object]] = []  # (index, arrival, name, data, row or member entry)
    taken: set[str] = set()
    for n, (row, data) in enumerate(results):
        if data is not None:
            name = _unique(member_name(row.key, row.codec, row.source_format), taken)
            order.append((row.source_index if row.source_index is not None else n, n, name, data, row))
    for n, m in enumerate(members or (), start=len(results)):
        row = by_key.get(m.key)
        if row is None:
            row = by_key[m.key] = sample_row(spec, unit, m)
            rows.append(row)
        entry = m.entry()
        if (row.status == "ok" and row.codec != "none" and m.index == row.source_index and entry["sha256"]
                and entry["sha256"] == row.source_sha256):
            continue  # a failed image's bytes kept by an earlier run: the image itself now has its file
        row.members = [*(row.members or []), entry]
        if m.data is not None and m.kind == "file":
            entry["member"] = _unique(m.name, taken)
            order.append((m.index, n, entry["member"], m.data, entry))
    turi = tar_uri(spec, unit)
    if order:
        order.sort(key=lambda t: (t[0], t[1]))
        blob, offsets = build_tar([(name, data) for _, _, name, data, _ in order])
        storage.write_bytes(turi, blob, spec.output_options)
        for _, _, name, _, ref in order:
            if isinstance(ref, ManifestRow):
                ref.tar_uri = turi
                ref.offset, ref.length = offsets[name]
            else:
                ref["offset"], ref["length"] = offsets[name]
        for row in rows:
            if row.members and any(e.get("member") for e in row.members):
                row.tar_uri = turi
    if unit.kind == "parquet":
        uri = copy_columns(spec, unit)
        for row in rows:
            row.columns_uri = uri
    storage.write_bytes(manifest_uri(spec, unit), manifest.to_parquet(rows), spec.output_options)
    return rows


def columns_uri(spec: JobSpec, unit: WorkUnit) -> str:
    return storage.join(spec.output, "columns", f"{unit.shard_name}.parquet")


def copy_columns(spec: JobSpec, unit: WorkUnit) -> str:
    """A Parquet input's columns other than the image, every row in its order (``__row``), with the file's schema
    and metadata: what ``restore --layout source`` needs to give the file back with the images put in again.

    Read a batch at a time without the image column; written whole (the other columns of one input file).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    from .sources import PARQUET_READ

    with containment.open_input(unit.uris[0], spec.input_options, spec.input) as f:
        pf = pq.ParquetFile(f, **PARQUET_READ)
        schema = pf.schema_arrow
        keep = [n for n in schema.names if n != spec.image_column]
        batches, row = [], 0
        field = schema.field(spec.image_column) if spec.image_column in schema.names else None
        extra = [f.name for f in field.type if f.name != "bytes"] if field is not None and pa.types.is_struct(
            field.type) else []  # a {bytes, path} struct: its other fields are kept beside the columns
        nested = [f"{spec.image_column}.{name}" for name in extra]  # the struct's other leaves, not its bytes
        for batch in pf.iter_batches(columns=keep + nested, batch_size=4096):
            table = pa.Table.from_batches([batch])
            if extra:
                image = table.column(spec.image_column).combine_chunks()
                table = table.drop_columns([spec.image_column])
                for name in extra:
                    table = table.append_column(f"__image.{name}", image.field(name))
            table = table.append_column("__row", pa.array(range(row, row + len(table)), pa.int64()))
            row += len(table)
            batches.append(table)
    meta = dict(schema.metadata or {})
    meta[b"msinn.source_schema"] = schema.serialize().to_pybytes()
    meta[b"msinn.image_column"] = spec.image_column.encode()
    out = pa.concat_tables(batches) if batches else pa.table({"__row": pa.array([], pa.int64())})
    out = out.replace_schema_metadata(meta)
    buf = io.BytesIO()
    pq.write_table(out, buf, compression="zstd")
    uri = columns_uri(spec, unit)
    storage.write_bytes(uri, buf.getvalue(), spec.output_options)
    return uri


def committed_shards(spec: JobSpec) -> set[str]:
    """Names of the manifest shards under the output (one listing, not a stat per unit)."""
    listing = storage.list_files(storage.join(spec.output, "manifest"), spec.output_options)
    return {u.rsplit("/", 1)[-1] for u in listing}


def is_committed(unit: WorkUnit, shards: set[str]) -> bool:
    return f"{unit.shard_name}.parquet" in shards
