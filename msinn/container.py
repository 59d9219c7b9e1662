"""The ``.msinn`` file: a self-describing, checked wrapper around rANS streams.

Layout, specified in ``docs/bitstream.md``::

    magic        4 bytes   89 4D 53 4E  ("\\x89MSN")
    version      1 byte    format version (readers refuse a newer one)
    header_len   varint    length of the header fields
    header       tag-length-value fields (unknown optional tags are skipped)
    header_crc   4 bytes   CRC32 of the header bytes, big-endian
    payload      payload_length bytes (tile streams, then the alpha plane)

The header names the coding profile (``portable-1``: exact integer decoding,
the same on every machine; ``float32``: the reference numerics), the model
(registry name and weights hash prefix), the exact rate parameter, the image
geometry and colour layout, every tile's stream
with a hash of its decoded symbols per latent level, the payload's length
and CRC32, and a hash of the final 8-bit image.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .errors import BitstreamError

MAGIC = b"\x89MSN"
FORMAT_VERSION = 2  # 2 adds the coding profile (and, for float files, how they were computed)
PROFILES = ("float32", "portable-1")  # version 1 files are float32
MAX_HEADER_BYTES = 16 << 20
MODEL_HASH_PREFIX = 16  # hex characters of the weights' SHA-256 kept in the header
LEVEL_DIGEST_BYTES = 4
IMAGE_DIGEST_BYTES = 8


def symbols_digest(symbols: np.ndarray) -> str:
    """Hash of one level's decoded symbols (int32 little-endian), 8 hex characters."""
    data = np.ascontiguousarray(symbols, dtype="<i4").tobytes()
    return hashlib.blake2b(data, digest_size=LEVEL_DIGEST_BYTES).hexdigest()


def image_digest(pixels: np.ndarray) -> str:
    """Hash of the final 8-bit image (shape and bytes), 16 hex characters."""
    a = np.ascontiguousarray(pixels, dtype=np.uint8)
    h = hashlib.blake2b(digest_size=IMAGE_DIGEST_BYTES)
    h.update(repr(a.shape).encode())
    h.update(a.tobytes())
    return h.hexdigest()


@dataclass
class TileRecord:
    """One independently coded tile: its place in the image and its stream."""

    x: int
    y: int
    width: int
    height: int
    latent_shape: list[int]
    offset: int
    length: int
    level_digests: list[str]


@dataclass
class Header:
    model_name: str
    model_hash: str
    qp: float | int
    width: int
    height: int
    mode: str  # colour layout of the decoded image: "RGB", "RGBA", "L" or "LA"
    source_mode: str  # Pillow mode of the input, for information
    bit_depth: int  # bits per sample of the input (8 unless reduced from 16)
    padding: str
    tile_width: int
    tile_height: int
    tiles: list[TileRecord]
    alpha_offset: int | None
    alpha_length: int | None
    payload_length: int
    payload_crc32: int
    image_digest: str
    codec_version: str = ""
    # "portable-1": decoding is exact integer arithmetic, the same on every machine;
    # "float32": the reference numerics, reproducible only where they were computed
    profile: str = "float32"
    # float32 files: where they were computed ("device=cpu;arch=x86_64;threads=2;torch=2.14.1")
    numerics: str = ""

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["tiles"] = [asdict(t) for t in self.tiles]
        return d

    def validate(self) -> None:
        """Reject headers whose numbers cannot describe a real image (before any allocation)."""
        def bad(msg: str) -> BitstreamError:
            return BitstreamError(f"invalid header: {msg}")

        ints = (self.width, self.height, self.tile_width, self.tile_height, self.payload_length)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise bad("non-integer geometry")
        if self.profile not in PROFILES:
            raise bad(f"coding profile {self.profile!r} is unknown to this decoder (newer than it?)")
        if not (0 < self.width <= 1 << 20 and 0 < self.height <= 1 << 20):
            raise bad(f"image size {self.width}x{self.height}")
        if self.mode not in ("RGB", "RGBA", "L", "LA"):
            raise bad(f"colour mode {self.mode!r}")
        if not isinstance(self.qp, int | float) or isinstance(self.qp, bool):
            raise bad("rate parameter is not a number")
        if not self.tiles:
            raise bad("no tiles")
        covered = 0
        for t in self.tiles:
            if not (0 <= t.x < self.width and 0 <= t.y < self.height and t.width > 0 and t.height > 0):
                raise bad(f"tile at {t.x},{t.y} outside the image")
            if t.x + t.width > self.width or t.y + t.height > self.height:
                raise bad(f"tile at {t.x},{t.y} overruns the image")
            if len(t.latent_shape) != 2 or t.latent_shape[0] * 16 < t.height or t.latent_shape[1] * 16 < t.width:
                raise bad(f"tile at {t.x},{t.y} has latent shape {t.latent_shape}")
            if t.latent_shape[0] * 16 > t.height + 63 or t.latent_shape[1] * 16 > t.width + 63:
                raise bad(f"tile at {t.x},{t.y} has latent shape {t.latent_shape} too large for its size")
            if t.offset < 0 or t.length < 4 or t.offset + t.length > self.payload_length:
                raise bad(f"tile at {t.x},{t.y} stream lies outside the payload")
            if len(t.level_digests) != 5:
                raise bad(f"tile at {t.x},{t.y} lacks level hashes")
            covered += t.width * t.height
        if covered != self.width * self.height:
            raise bad("tiles do not cover the image exactly once")
        if (self.alpha_offset is None) != (self.alpha_length is None) or (self.alpha_offset is not None) != (
            self.mode in ("RGBA", "LA")
        ):
            raise bad("alpha plane does not match the colour mode")
        if self.alpha_offset is not None and (
            self.alpha_offset < 0 or self.alpha_offset + self.alpha_length > self.payload_length
        ):
            raise bad("alpha plane lies outside the payload")


def pack(header: Header, payload: bytes) -> bytes:
    """Serialise header and payload into one file (lengths and CRCs filled in here)."""
    header.payload_length = len(payload)
    header.payload_crc32 = zlib.crc32(payload)
    header.validate()
    body = encode_header(header)
    prefix = MAGIC + bytes((FORMAT_VERSION,)) + _uvarint(len(body))  # always the current version
    return b"".join((prefix, body, struct.pack(">I", zlib.crc32(body)), payload))


def header_bytes(header: Header) -> int:
    """Bytes a file spends before its payload: magic, version, header length, fields, CRC."""
    body = encode_header(header)
    return len(MAGIC) + 1 + len(_uvarint(len(body))) + len(body) + 4


def read_header(data: bytes, source: str = "input") -> tuple[Header, int]:
    """Parse and check the header; returns it and the payload's start offset.

    Needs only the header bytes, so ``msinn info`` never runs the network.
    """
    if len(data) < len(MAGIC) + 2:
        raise BitstreamError(f"{source}: {len(data)} bytes is too short for an MS-INN file")
    if data[: len(MAGIC)] != MAGIC:
        raise BitstreamError(f"{source}: not an MS-INN file (bad magic bytes)")
    version = data[len(MAGIC)]
    if version > FORMAT_VERSION:
        raise BitstreamError(f"{source}: format version {version} is newer than this decoder ({FORMAT_VERSION})")
    if version < 1:
        raise BitstreamError(f"{source}: invalid format version {version}")
    try:
        hlen, pos = _read_uvarint(data, len(MAGIC) + 1)
    except BitstreamError as exc:
        raise BitstreamError(f"{source}: {exc}") from None
    if hlen > MAX_HEADER_BYTES:
        raise BitstreamError(f"{source}: header length {hlen} is implausible")
    end = pos + hlen + 4
    if len(data) < end:
        raise BitstreamError(f"{source}: truncated inside the header")
    body = bytes(data[pos : pos + hlen])
    (crc,) = struct.unpack_from(">I", data, pos + hlen)
    if zlib.crc32(body) != crc:
        raise BitstreamError(f"{source}: header checksum mismatch (corrupt file)")
    try:
        header = decode_header(body, version)
    except BitstreamError as exc:
        raise BitstreamError(f"{source}: {exc}") from None
    return header, end


def unpack(data: bytes, source: str = "input") -> tuple[Header, bytes]:
    """Header and payload, with the payload's length and CRC32 verified."""
    header, start = read_header(data, source)
    payload = bytes(data[start:])
    if len(payload) < header.payload_length:
        raise BitstreamError(f"{source}: truncated payload ({len(payload)} of {header.payload_length} bytes)")
    if len(payload) > header.payload_length:
        raise BitstreamError(f"{source}: {len(payload) - header.payload_length} unexpected bytes after the payload")
    if zlib.crc32(payload) != header.payload_crc32:
        raise BitstreamError(f"{source}: payload checksum mismatch (corrupt file)")
    return header, payload


# ---------------------------------------------------------------------- binary header fields
# Each field is: tag (1 byte), length (unsigned LEB128 varint), value. Tags >= 128
# are critical: a reader that does not know one must refuse the file; unknown
# tags below 128 are skipped, so later versions can add optional fields.
_MODES = ("RGB", "RGBA", "L", "LA")
_PADDINGS = ("replicate",)
T_MODEL_NAME, T_MODEL_HASH, T_QP_F64, T_QP_INT = 1, 2, 3, 4
T_WIDTH, T_HEIGHT, T_MODE, T_SOURCE_MODE, T_BIT_DEPTH, T_PADDING = 5, 6, 7, 8, 9, 10
T_TILE_W, T_TILE_H, T_TILE, T_ALPHA_OFF, T_ALPHA_LEN = 11, 12, 13, 14, 15
T_PAYLOAD_LEN, T_PAYLOAD_CRC, T_IMAGE_DIGEST, T_CODEC_VERSION = 16, 17, 18, 19
T_PROFILE, T_NUMERICS = 20, 21
# inside a tile record
U_X, U_Y, U_W, U_H, U_LAT_H, U_LAT_W, U_OFFSET, U_LENGTH, U_DIGESTS = 1, 2, 3, 4, 5, 6, 7, 8, 9


def _uvarint(n: int) -> bytes:
    if n < 0:
        raise ValueError("varint of a negative number")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_uvarint(buf: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(buf):
            raise BitstreamError("truncated varint")
        b = buf[pos]
        pos += 1
        n |= (b & 0x7F) << shift
        if not b & 0x80:
            return n, pos
        shift += 7
        if shift > 63:
            raise BitstreamError("varint too long")


def _field(tag: int, value: bytes) -> bytes:
    return bytes((tag,)) + _uvarint(len(value)) + value


def _fields(buf: bytes) -> dict[int, list[bytes]]:
    out: dict[int, list[bytes]] = {}
    pos = 0
    while pos < len(buf):
        tag = buf[pos]
        n, pos = _read_uvarint(buf, pos + 1)
        if pos + n > len(buf):
            raise BitstreamError(f"field {tag} overruns the header")
        out.setdefault(tag, []).append(buf[pos : pos + n])
        pos += n
    return out


def _one(f: dict[int, list[bytes]], tag: int, name: str) -> bytes:
    vals = f.get(tag)
    if not vals:
        raise BitstreamError(f"header lacks the {name} field")
    if len(vals) > 1:
        raise BitstreamError(f"header repeats the {name} field")
    return vals[0]


def _int(f: dict[int, list[bytes]], tag: int, name: str) -> int:
    v = _one(f, tag, name)
    n, end = _read_uvarint(v, 0)
    if end != len(v):
        raise BitstreamError(f"malformed {name} field")
    return n


def _str(f: dict[int, list[bytes]], tag: int, name: str) -> str:
    try:
        return _one(f, tag, name).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BitstreamError(f"{name} field is not UTF-8") from exc


def encode_header(h: Header) -> bytes:
    parts = [
        _field(T_MODEL_NAME, h.model_name.encode()),
        _field(T_MODEL_HASH, bytes.fromhex(h.model_hash)),
    ]
    if isinstance(h.qp, int):
        parts.append(_field(T_QP_INT, _uvarint(h.qp)))
    else:
        parts.append(_field(T_QP_F64, struct.pack(">d", float(h.qp))))
    parts += [
        _field(T_WIDTH, _uvarint(h.width)),
        _field(T_HEIGHT, _uvarint(h.height)),
        _field(T_MODE, bytes((_MODES.index(h.mode),))),
        _field(T_SOURCE_MODE, h.source_mode.encode()),
        _field(T_BIT_DEPTH, _uvarint(h.bit_depth)),
        _field(T_PADDING, bytes((_PADDINGS.index(h.padding),))),
        _field(T_TILE_W, _uvarint(h.tile_width)),
        _field(T_TILE_H, _uvarint(h.tile_height)),
    ]
    for t in h.tiles:
        rec = b"".join(
            (
                _field(U_X, _uvarint(t.x)),
                _field(U_Y, _uvarint(t.y)),
                _field(U_W, _uvarint(t.width)),
                _field(U_H, _uvarint(t.height)),
                _field(U_LAT_H, _uvarint(t.latent_shape[0])),
                _field(U_LAT_W, _uvarint(t.latent_shape[1])),
                _field(U_OFFSET, _uvarint(t.offset)),
                _field(U_LENGTH, _uvarint(t.length)),
                _field(U_DIGESTS, b"".join(bytes.fromhex(d) for d in t.level_digests)),
            )
        )
        parts.append(_field(T_TILE, rec))
    if h.alpha_offset is not None:
        parts.append(_field(T_ALPHA_OFF, _uvarint(h.alpha_offset)))
        parts.append(_field(T_ALPHA_LEN, _uvarint(h.alpha_length)))
    parts += [
        _field(T_PAYLOAD_LEN, _uvarint(h.payload_length)),
        _field(T_PAYLOAD_CRC, struct.pack(">I", h.payload_crc32)),
        _field(T_IMAGE_DIGEST, bytes.fromhex(h.image_digest)),
        _field(T_CODEC_VERSION, h.codec_version.encode()),
        _field(T_PROFILE, h.profile.encode()),
    ]
    if h.numerics:
        parts.append(_field(T_NUMERICS, h.numerics.encode()))
    return b"".join(parts)


def _enum(f: dict[int, list[bytes]], tag: int, name: str, values: tuple[str, ...]) -> str:
    v = _one(f, tag, name)
    if len(v) != 1 or v[0] >= len(values):
        raise BitstreamError(f"unknown {name} code")
    return values[v[0]]


def decode_header(body: bytes, version: int = FORMAT_VERSION) -> Header:
    f = _fields(body)
    for tag in f:
        if tag >= 128:
            raise BitstreamError(f"header uses critical field {tag} unknown to this decoder")
    if T_QP_INT in f:
        qp: int | float = _int(f, T_QP_INT, "qp")
    else:
        raw = _one(f, T_QP_F64, "qp")
        if len(raw) != 8:
            raise BitstreamError("malformed qp field")
        qp = struct.unpack(">d", raw)[0]
    tiles = []
    for rec in f.get(T_TILE, []):
        u = _fields(rec)
        digests = _one(u, U_DIGESTS, "tile level hashes")
        if len(digests) != 5 * LEVEL_DIGEST_BYTES:
            raise BitstreamError("malformed tile level hashes")
        tiles.append(
            TileRecord(
                x=_int(u, U_X, "tile x"),
                y=_int(u, U_Y, "tile y"),
                width=_int(u, U_W, "tile width"),
                height=_int(u, U_H, "tile height"),
                latent_shape=[_int(u, U_LAT_H, "latent height"), _int(u, U_LAT_W, "latent width")],
                offset=_int(u, U_OFFSET, "tile offset"),
                length=_int(u, U_LENGTH, "tile length"),
                level_digests=[
                    digests[i : i + LEVEL_DIGEST_BYTES].hex() for i in range(0, len(digests), LEVEL_DIGEST_BYTES)
                ],
            )
        )
    has_alpha = T_ALPHA_OFF in f
    crc = _one(f, T_PAYLOAD_CRC, "payload CRC")
    if len(crc) != 4:
        raise BitstreamError("malformed payload CRC field")
    h = Header(
        model_name=_str(f, T_MODEL_NAME, "model name"),
        model_hash=_one(f, T_MODEL_HASH, "model hash").hex(),
        qp=qp,
        width=_int(f, T_WIDTH, "width"),
        height=_int(f, T_HEIGHT, "height"),
        mode=_enum(f, T_MODE, "colour mode", _MODES),
        source_mode=_str(f, T_SOURCE_MODE, "source mode"),
        bit_depth=_int(f, T_BIT_DEPTH, "bit depth"),
        padding=_enum(f, T_PADDING, "padding", _PADDINGS),
        tile_width=_int(f, T_TILE_W, "tile width"),
        tile_height=_int(f, T_TILE_H, "tile height"),
        tiles=tiles,
        alpha_offset=_int(f, T_ALPHA_OFF, "alpha offset") if has_alpha else None,
        alpha_length=_int(f, T_ALPHA_LEN, "alpha length") if has_alpha else None,
        payload_length=_int(f, T_PAYLOAD_LEN, "payload length"),
        payload_crc32=struct.unpack(">I", crc)[0],
        image_digest=_one(f, T_IMAGE_DIGEST, "image hash").hex(),
        codec_version=_str(f, T_CODEC_VERSION, "codec version") if T_CODEC_VERSION in f else "",
        # version 1 predates profiles: every such file is float32
        profile=_str(f, T_PROFILE, "coding profile") if version >= 2 else "float32",
        numerics=_str(f, T_NUMERICS, "numerics") if T_NUMERICS in f else "",
    )
    h.validate()
    return h
