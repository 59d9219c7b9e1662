"""The manifest: one Parquet row per input image, one file per output shard.

Column names of the first group are fixed: external tools read them. A row
is a ``ManifestRow``, whose fields are exactly the schema's columns (a test
holds them together), so a misspelled column is an error, not a null.
"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, fields
from datetime import datetime

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema(
    [
        # fixed names
        ("key", pa.string()),
        ("status", pa.string()),  # "ok" or "error"
        ("error", pa.string()),
        ("source_uri", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("bytes", pa.int64()),
        ("bpp", pa.float64()),
        ("psnr", pa.float64()),
        ("qp", pa.float64()),
        ("tar_uri", pa.string()),
        ("offset", pa.int64()),  # byte offset of the member's data inside the tar
        ("length", pa.int64()),
        ("model", pa.string()),
        ("run_id", pa.string()),
        # more for users
        ("source_bytes", pa.int64()),
        ("source_format", pa.string()),
        ("source_sha256", pa.string()),
        ("mode", pa.string()),
        ("source_mode", pa.string()),
        ("bit_depth", pa.int32()),
        ("target_kind", pa.string()),
        ("target_value", pa.float64()),
        ("target_met", pa.bool_()),
        ("in_range", pa.bool_()),
        ("probes", pa.int32()),
        ("ms_ssim", pa.float64()),
        ("model_hash", pa.string()),
        ("codec_version", pa.string()),
        ("encode_seconds", pa.float64()),
        ("device", pa.string()),
        ("unit_id", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("encoded_from", pa.string()),  # "source" or "bitstream"
        # "portable-1" (decodes the same everywhere) or "float32"; rows written before profiles read as float32
        ("profile", pa.string()),
        ("numerics", pa.string()),  # float32 rows: where they were computed (device, threads, torch)
    ]
)

COLUMNS = SCHEMA.names


@dataclass
class ManifestRow:
    """One input image's row; built by the encoder, filled in as the image goes through."""

    key: str
    status: str = "error"
    error: str | None = None
    source_uri: str | None = None
    width: int | None = None
    height: int | None = None
    bytes: int | None = None
    bpp: float | None = None
    psnr: float | None = None
    qp: float | None = None
    tar_uri: str | None = None
    offset: int | None = None
    length: int | None = None
    model: str | None = None
    run_id: str | None = None
    source_bytes: int | None = None
    source_format: str | None = None
    source_sha256: str | None = None
    mode: str | None = None
    source_mode: str | None = None
    bit_depth: int | None = None
    target_kind: str | None = None
    target_value: float | None = None
    target_met: bool | None = None
    in_range: bool | None = None
    probes: int | None = None
    ms_ssim: float | None = None
    model_hash: str | None = None
    codec_version: str | None = None
    encode_seconds: float | None = None
    device: str | None = None
    unit_id: str | None = None
    created_at: datetime | None = None
    encoded_from: str | None = None
    profile: str | None = None
    numerics: str | None = None

    def fail(self, error: str) -> ManifestRow:
        """Mark the row failed; an error row carries no bitstream, size or quality figures."""
        self.status, self.error = "error", error
        for name in RESULT_FIELDS:
            setattr(self, name, None)
        return self


RESULT_FIELDS = ("width", "height", "bytes", "bpp", "psnr", "qp", "tar_uri", "offset", "length", "source_format",
                 "mode", "source_mode", "bit_depth", "target_met", "in_range", "probes", "ms_ssim", "encode_seconds",
                 "profile", "numerics")


ROW_FIELDS = tuple(f.name for f in fields(ManifestRow))


def _as_dict(row: ManifestRow | dict) -> dict:
    if isinstance(row, ManifestRow):
        return asdict(row)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"manifest row has columns the schema lacks: {sorted(unknown)}")
    return row


def to_parquet(rows: list[ManifestRow] | list[dict]) -> bytes:
    """One manifest shard; dict rows (rewritten by tools) must use the schema's column names."""
    table = pa.Table.from_pylist([{c: d.get(c) for c in COLUMNS} for d in map(_as_dict, rows)], schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(data), columns=columns)
