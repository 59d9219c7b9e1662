"""The manifest: one Parquet row per input image, one file per output shard.

The columns are declared once, as the fields of :class:`ManifestRow`, each
with its Arrow type; the Parquet schema (``SCHEMA``) and the fields a failed
row clears (``RESULT_FIELDS``) derive from them, so a misspelled column is an
error, not a null. Names of the first group are fixed: external tools read
them. New columns go at the end; rows of older archives read them as NULL
(``codec`` as ``msinn``, ``profile`` as ``float32``: see ``archive.connect``).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .storage import escape_name

# One stored part of a sample beside its image (a caption, metadata, any file that shares its key, a tar's link
# or folder, an image that could not be coded): its name in the input, its member in this row's tar, and where.
MEMBER = pa.struct([
    ("name", pa.string()),  # in the input: tar member name, path under the input, or <key>.<column> (Parquet)
    ("member", pa.string()),  # the tar member it is stored as in tar_uri (the name, unless two parts share it)
    ("kind", pa.string()),  # file, directory, symlink, hardlink, special
    ("link", pa.string()),  # a link's target
    ("bytes", pa.int64()),
    ("sha256", pa.string()),
    ("offset", pa.int64()),  # of its data in tar_uri, for one ranged read
    ("length", pa.int64()),
    ("index", pa.int64()),  # its place in its input container: restore --layout source keeps the order
    ("error", pa.string()),  # why it was not stored (over the size limit, a special file), else null
])
@dataclass
class Member:
    """One part of a sample stored as it is, beside its image: a sidecar, a link, or an image not coded."""

    key: str  # its sample
    name: str  # its name in the input (tar member, path under the input, <key>.<column> for Parquet)
    data: bytes | None  # None: not stored (``error`` says why), or a link or folder (nothing to store)
    index: int  # its place in its input container
    kind: str = "file"  # file, directory, symlink, hardlink, special
    link: str | None = None
    error: str | None = None

    def entry(self) -> dict:
        """Its manifest entry (``manifest.MEMBER``), before the tar gives it a place."""
        stored = self.data is not None and self.kind == "file"
        return {"name": self.name, "member": None, "kind": self.kind, "link": self.link,
                "bytes": len(self.data) if stored else None,
                "sha256": hashlib.sha256(self.data).hexdigest() if stored else None,
                "offset": None, "length": None, "index": self.index, "error": self.error}


EXACT = ("bytes", "pixels", "none")  # what a row gives back of its input: the file, its pixels, or neither


def _col(arrow: pa.DataType, result: bool = False) -> Any:
    """A column: its Arrow type, and whether it is a result a failed row must not carry."""
    return field(default=None, metadata={"arrow": arrow, "result": result})


@dataclass
class ManifestRow:
    """One input image's row; built by the encoder, filled in as the image goes through."""

    # fixed names
    key: str = field(metadata={"arrow": pa.string(), "result": False})
    status: str = field(default="error", metadata={"arrow": pa.string(), "result": False})  # "ok" or "error"
    error: str | None = _col(pa.string())
    source_uri: str | None = _col(pa.string())
    width: int | None = _col(pa.int32(), True)
    height: int | None = _col(pa.int32(), True)
    bytes: int | None = _col(pa.int64(), True)
    bpp: float | None = _col(pa.float64(), True)
    psnr: float | None = _col(pa.float64(), True)
    qp: float | None = _col(pa.float64(), True)  # the codec's rate parameter: the model's qp, AVIF's quality, ...
    tar_uri: str | None = _col(pa.string(), True)
    offset: int | None = _col(pa.int64(), True)  # byte offset of the member's data inside the tar
    length: int | None = _col(pa.int64(), True)
    model: str | None = _col(pa.string())
    run_id: str | None = _col(pa.string())
    # more for users
    source_bytes: int | None = _col(pa.int64())
    source_format: str | None = _col(pa.string(), True)
    source_sha256: str | None = _col(pa.string())
    mode: str | None = _col(pa.string(), True)
    source_mode: str | None = _col(pa.string(), True)
    bit_depth: int | None = _col(pa.int32(), True)
    target_kind: str | None = _col(pa.string())
    target_value: float | None = _col(pa.float64())
    target_met: bool | None = _col(pa.bool_(), True)
    in_range: bool | None = _col(pa.bool_(), True)
    probes: int | None = _col(pa.int32(), True)  # real encodes, every codec's counted
    ms_ssim: float | None = _col(pa.float64(), True)
    model_hash: str | None = _col(pa.string())
    codec_version: str | None = _col(pa.string())  # this package's version, or the libraries of a classical file
    encode_seconds: float | None = _col(pa.float64(), True)
    device: str | None = _col(pa.string())
    unit_id: str | None = _col(pa.string())
    created_at: datetime | None = _col(pa.timestamp("us", tz="UTC"))
    encoded_from: str | None = _col(pa.string())  # "source" or "bitstream"
    # "portable-1" (decodes the same everywhere) or "float32"; rows written before profiles read as float32
    profile: str | None = _col(pa.string(), True)
    numerics: str | None = _col(pa.string(), True)  # float32 rows: where they were computed (device, threads, torch)
    # the file's format: "msinn" (rows written before codec choice read as msinn), "avif", "jpeg", "webp", "jxl"
    codec: str | None = _col(pa.string(), True)
    pixel_hash: str | None = _col(pa.string(), True)  # hash of the decoded pixels, every codec (container.image_digest)
    codec_params: str | None = _col(pa.string(), True)  # a classical file's settings (quality, speed, tune, ...)
    effort: int | None = _col(pa.int32(), True)  # the model's encoder-side refinement level
    # what comes back of the input: "bytes" (the original file, byte for byte), "pixels" (its pixels, mode, depth
    # and ICC/EXIF/XMP), "none" (a lossy file); rows written before --lossless read as none
    exact: str | None = _col(pa.string(), True)
    note: str | None = _col(pa.string(), True)  # how an exact file was chosen: the recompressions refused and why
    source_index: int | None = _col(pa.int64())  # the image's place in its input container (tar member, row, file)
    members: list | None = _col(pa.list_(MEMBER))  # the sample's other parts, stored beside the image (MEMBER)
    columns_uri: str | None = _col(pa.string())  # Parquet inputs: the shard of the input's other columns

    def fail(self, error: str) -> ManifestRow:
        """Mark the row failed; an error row carries no bitstream, size or quality figures."""
        self.status, self.error = "error", error
        for name in RESULT_FIELDS:
            setattr(self, name, None)
        return self


SCHEMA = pa.schema([(f.name, f.metadata["arrow"]) for f in fields(ManifestRow)])
COLUMNS = SCHEMA.names
ROW_FIELDS = tuple(f.name for f in fields(ManifestRow))
RESULT_FIELDS = tuple(f.name for f in fields(ManifestRow) if f.metadata["result"])


def _as_dict(row: ManifestRow | dict) -> dict:
    if isinstance(row, ManifestRow):
        return asdict(row)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ValueError(f"manifest row has columns the schema lacks: {sorted(unknown)}")
    return row


def _text(value: Any) -> Any:
    """Strings as Parquet can hold them: a name's bytes that are not UTF-8 escaped (``storage.escape_name``),
    wherever they travel (a key, a URI, an error message quoting either)."""
    if isinstance(value, str):
        return escape_name(value)
    if isinstance(value, list):
        return [_text(v) for v in value]
    if isinstance(value, dict):
        return {k: _text(v) for k, v in value.items()}
    return value


def to_parquet(rows: list[ManifestRow] | list[dict]) -> bytes:
    """One manifest shard; dict rows (rewritten by tools) must use the schema's column names."""
    table = pa.Table.from_pylist([{c: _text(d.get(c)) for c in COLUMNS} for d in map(_as_dict, rows)],
                                 schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def from_parquet(data: bytes, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(data), columns=columns)
