"""The manifest: one Parquet row per input image, one file per output shard.

Column names of the first group are fixed: external tools read them.
"""

from __future__ import annotations

import io

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


def to_parquet(rows: list[dict]) -> bytes:
    table = pa.Table.from_pylist([{c: r.get(c) for c in COLUMNS} for r in rows], schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_parquet(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))
