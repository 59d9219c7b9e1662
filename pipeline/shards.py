"""Output shards: building a bitstream tar, committing a unit, and finding the units already committed.

A unit is committed in two whole-object writes: the tar of bitstreams first,
the manifest shard last. A reader that finds a manifest shard therefore finds
every bitstream it names; a unit interrupted anywhere before its manifest
write is simply redone, rewriting the same tar with the same bytes.
"""

from __future__ import annotations

import io
import tarfile

from . import manifest, storage
from .bitstreams import member_name
from .manifest import ManifestRow
from .spec import JobSpec, WorkUnit


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


def commit(spec: JobSpec, unit: WorkUnit, results: list[tuple[ManifestRow, bytes | None]]) -> list[ManifestRow]:
    """Write the unit's tar (if any image succeeded), then its manifest shard; returns the final rows."""
    rows = [row for row, _ in results]
    members = [(member_name(row.key, row.codec), data) for row, data in results if data is not None]
    turi = tar_uri(spec, unit)
    if members:
        blob, offsets = build_tar(members)
        storage.write_bytes(turi, blob, spec.output_options)
        for row in rows:
            if row.status == "ok":
                row.tar_uri = turi
                row.offset, row.length = offsets[member_name(row.key, row.codec)]
    storage.write_bytes(manifest_uri(spec, unit), manifest.to_parquet(rows), spec.output_options)
    return rows


def committed_shards(spec: JobSpec) -> set[str]:
    """Names of the manifest shards under the output (one listing, not a stat per unit)."""
    listing = storage.list_files(storage.join(spec.output, "manifest"), spec.output_options)
    return {u.rsplit("/", 1)[-1] for u in listing}


def is_committed(unit: WorkUnit, shards: set[str]) -> bool:
    return f"{unit.shard_name}.parquet" in shards
