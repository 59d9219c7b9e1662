"""Reading an archived image back: where its bitstream lies, and which model decodes it.

A manifest is data, not code: its ``tar_uri`` only names a shard of the
archive (``.../bitstreams/part-*.tar``), which is looked up under the archive
root the user gave, never followed elsewhere; its ``model`` is only a name to
look up in the registry (checked against ``model_hash``) unless the user
passed a checkpoint holding those weights.
"""

from __future__ import annotations

import math
import re
import tarfile
from typing import TYPE_CHECKING, Any

from . import storage

if TYPE_CHECKING:  # pragma: no cover
    from msinn.interface import CodecModel

SHARD_NAME = re.compile(r"part-[A-Za-z0-9_-]{1,80}\.tar")
# a member's file name extension by the row's codec (rows written before codec choice are .msinn files); the
# exact codecs of --lossless (msinn.lossless) too, a stored original by its format; "none": a sample with no image
MEMBER_EXTENSIONS = {"msinn": "msinn", "avif": "avif", "jpeg": "jpg", "webp": "webp", "jxl": "jxl",
                     "lepton": "lep", "jxl-jpeg": "jxl", "jxl-lossless": "jxl", "webp-lossless": "webp", "png": "png",
                     "stored": None, "none": None}
RESTORE_MODES = ("L", "LA", "RGB", "RGBA")
MAX_MEMBER_BYTES = 1 << 30  # one image's bitstream: far above any real one

_MODELS: dict[tuple[str, str], Any] = {}


class UntrustedReference(ValueError):
    """A manifest row names something outside what it may name (a path, a URL, another root)."""


def shard_name(tar_uri: str) -> str:
    """The shard's file name, if ``tar_uri`` names a bitstream shard of an archive; else an error naming it."""
    parts = str(tar_uri).replace("\\", "/").rstrip("/").rsplit("/", 2)
    if len(parts) < 2 or parts[-2] != "bitstreams" or not SHARD_NAME.fullmatch(parts[-1]):
        raise UntrustedReference(f"tar_uri {tar_uri!r} does not name a bitstream shard of the archive")
    return parts[-1]


def shard_uri(archive: str, tar_uri: str) -> str:
    """Where a row's shard lies: always under the archive root the user gave."""
    return storage.join(archive, "bitstreams", shard_name(tar_uri))


def row_codec(row: dict) -> str:
    """The codec of a row's file, one of those this package writes; anything else names no file to read."""
    codec = row.get("codec") or "msinn"
    if codec not in MEMBER_EXTENSIONS:
        raise UntrustedReference(f"codec {codec!r} is not one this package writes")
    return codec


def member_name(key: str, codec: str | None, source_format: str | None = None) -> str:
    """The tar member of an image: ``<key>.msinn``, ``<key>.avif``, ``<key>.lep``, ... (each a file in its own
    standard format); an original stored as it is keeps its format's extension (``<key>.jpg``, ``<key>.gif``)."""
    from msinn.lossless import stored_extension

    codec = codec or "msinn"
    if codec == "none":
        raise UntrustedReference(f"{key}: a sample without an image has no image member")
    ext = MEMBER_EXTENSIONS[codec] or stored_extension(source_format)
    return f"{key}.{ext}"


BLOCK = tarfile.BLOCKSIZE


def read_member(row: dict, options: dict | None) -> bytes:
    """One image's bitstream, by one ranged read of its shard under ``row["archive_root"]``.

    The read starts at the member's tar header, which must name the row's
    key and codec (``<key>.msinn``, ``<key>.avif``, ...) and length: a row
    whose offset points at another member (another image) is refused, never
    decoded as this key.
    """
    name = member_name(str(row["key"]), row_codec(row), row.get("source_format"))
    return read_stored(row["archive_root"], row["tar_uri"], name, row.get("offset"), row.get("length"), options)


def read_part(row: dict, entry: dict, options: dict | None) -> bytes:
    """One stored part of a sample (an entry of the row's ``members``), checked against its size and hash."""
    import hashlib

    from .keys import part_of

    name = str(entry.get("member") or "")
    if not name or not part_of(str(row["key"]), name):
        raise UntrustedReference(f"{row['key']}: member {name[:200]!r} is not a part of this sample")
    data = read_stored(row["archive_root"], row["tar_uri"], name, entry.get("offset"), entry.get("length"), options,
                       empty_ok=entry.get("bytes") == 0)
    if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
        raise ValueError(f"{row['key']}: stored part {name!r} differs from the one archived (size or sha256)")
    return data


def read_stored(archive_root: str, tar_uri: str, member: str, start, length, options: dict | None,
                empty_ok: bool = False) -> bytes:
    """A member's data by one ranged read of a shard under ``archive_root``, its tar header checked first."""
    low = 0 if empty_ok else 1
    if not isinstance(start, int) or not isinstance(length, int) or start < 0 or not low <= length <= MAX_MEMBER_BYTES:
        raise UntrustedReference(f"offset/length {start!r}/{length!r} do not describe a bitstream")
    uri = shard_uri(archive_root, tar_uri)
    name = member.encode("utf-8", "surrogateescape")
    # a name over 100 bytes is held by a GNU long-name block (header and padded name) before the member's own header
    head = BLOCK + (BLOCK + math.ceil((len(name) + 1) / BLOCK) * BLOCK if len(name) > 100 else 0)
    if start < head:
        raise UntrustedReference(f"offset {start} leaves no room for the tar header of {name.decode(errors='replace')}")
    blob = storage.read_bytes(uri, options, start=start - head, end=start + length)
    if len(blob) != head + length:
        raise ValueError(f"{uri}: {len(blob) - head} of {length} bytes at offset {start} (shard truncated?)")
    _check_header(blob[:head], name, length, uri, start)
    return blob[head:]


def _check_header(head: bytes, name: bytes, length: int, uri: str, start: int) -> None:
    """The tar header(s) before ``start`` name ``name`` and give ``length``; else the row points elsewhere."""
    try:
        info = tarfile.TarInfo.frombuf(head[-BLOCK:], "utf-8", "surrogateescape")
        long_name = None
        if len(name) > 100:
            link = tarfile.TarInfo.frombuf(head[:BLOCK], "utf-8", "surrogateescape")
            long_name = head[BLOCK : BLOCK + link.size].rstrip(b"\0") if link.type == tarfile.GNUTYPE_LONGNAME else b""
    except tarfile.TarError:
        raise UntrustedReference(f"{uri}: no tar header before offset {start}: the row does not point at a member"
                                 ) from None
    held = info.name.encode("utf-8", "surrogateescape")
    ok = (held == name if long_name is None else (held == name[:100] and long_name == name)) and info.size == length
    if not ok:
        shown = (long_name or held).decode("utf-8", "replace")
        want = name.decode("utf-8", "replace")
        raise UntrustedReference(f"{uri}: offset {start} holds member {shown!r} ({info.size} bytes), not {want!r} "
                                 f"({length} bytes): the row points at another image")


def load_model(spec: str, device: str) -> CodecModel:
    """A model by registry name or checkpoint path/URI the user gave, loaded once per worker process."""
    import msinn

    key = (spec, device)
    if key not in _MODELS:
        _MODELS[key] = msinn.load(spec, device=device)
    return _MODELS[key]


def as_model_list(models: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """``--model`` given once (a string), several times (a list) or not at all."""
    if not models:
        return []
    return [models] if isinstance(models, str) else list(models)


def model_for_row(row: dict, models: str | list[str] | None, device: str) -> CodecModel:
    """The model a row decodes with: a given one holding the row's weights, else the registered one it names.

    Matching by weights hash lets one command restore an archive written by
    several models (say a retired model's downloaded file next to the bundled
    ones): each row takes the checkpoint it was encoded with, whatever order
    they are given in. A row may name only a registered model whose hash it
    also carries: never a path or URL to load.
    """
    from msinn.checkpoint import model_identity
    from msinn.registry import lookup

    given = as_model_list(models)
    want = str(row.get("model_hash") or "")
    for spec in given:
        m = load_model(spec, device)
        name, h = model_identity(m)
        n = min(len(h), len(want))
        if (n and h[:n] == want[:n]) or (not want and name == row.get("model")):
            return m
    if len(given) == 1 and not want:  # no hash to match on: the one given model is the user's word
        return load_model(given[0], device)
    name = str(row.get("model") or "")
    entry = lookup(name)
    if entry is None or not want or not entry.sha256.startswith(want):
        held = f"; none of the given models ({', '.join(given)}) holds these weights" if given else ""
        raise UntrustedReference(
            f"written with model {name!r} (weights {want or 'unknown'}), which is not a registered model with "
            f"those weights{held}; pass its checkpoint with --model"
        )
    return load_model(entry.name, device)


def is_exact(row: dict) -> bool:
    from msinn.lossless import EXACT_CODECS

    return row_codec(row) in EXACT_CODECS


def exact_member(row: dict, options: dict | None, max_pixels: int | None = None):
    """An exact row's file, checked: the original bytes (against ``source_sha256``) or the exact pixels and
    metadata (``msinn.lossless.ExactPixels``, against ``pixel_hash``); BitstreamError naming what differs."""
    from msinn.errors import BitstreamError
    from msinn.lossless import check_exact

    codec = row_codec(row)
    data = read_member(row, options)
    try:
        return check_exact(codec, data, row, max_pixels)
    except ValueError as exc:
        raise BitstreamError(f"{row['key']}: {exc}") from None


def recorded_size(row: dict) -> tuple[int, int] | None:
    """The (width, height) a row records for its image, None if it records none; anything else is refused."""
    w, h = row.get("width"), row.get("height")
    if w is None and h is None:
        return None
    if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (w, h)):
        raise UntrustedReference(f"width/height {w!r}/{h!r} do not describe an image")
    return w, h


def check_member_size(key: str, codec: str, data: bytes, expect: tuple[int, int] | None) -> None:
    """The size a member's own header gives, against its row's, before a pixel is decoded (any codec).

    A row's bitstream is decoded only into the image the row describes: a
    38-byte WebP or a 19 KB JPEG XL member claiming 12000x12000 in a 96x64
    row is refused here, from a few header bytes, not after gigabytes.
    """
    from msinn.errors import BitstreamError

    if codec == "msinn":
        from msinn.container import read_header

        header, _ = read_header(data, key)
        w, h = header.width, header.height
    else:
        from msinn.sizing import image_size

        try:
            size = image_size(data, key)
        except ValueError as exc:
            raise BitstreamError(f"{key}: {codec} file does not decode ({exc})") from None
        w, h = size.width, size.height
    if expect is not None and (w, h) != expect:
        raise BitstreamError(f"{key}: its {codec} file's header gives {w}x{h}, which differs from the manifest's "
                             f"{expect[0]}x{expect[1]}; refused before decoding")


def decode_row(row: dict, options: dict | None, models: str | list[str] | None, device: str = "cpu") -> tuple[Any, str]:
    """An archived image as (pixels in its restore layout, mode), with every check its codec allows.

    The member's header size must be the row's before anything is decoded
    (:func:`check_member_size`). A ``.msinn`` file is checked by its container
    (CRCs, per-level symbol hashes, image hash); every file, whatever its codec, is checked against
    the hash of the decoded pixels recorded in its row at encode time, so a
    decoder that disagrees with the one that wrote the file (another
    libavif, another colour conversion) is an error naming both, never a
    silently different image.
    """
    from msinn.container import image_digest
    from msinn.errors import BitstreamError

    key = str(row["key"])
    codec = row_codec(row)
    if codec == "none":
        raise BitstreamError(f"{key}: a sample without an image (its other parts are stored as they are)")
    expect = recorded_size(row)
    if is_exact(row):  # checked exactly (size first), then decoded as any input image is
        from msinn.images import open_image, restore_image
        from msinn.lossless import write_png

        got = exact_member(row, options)
        img = open_image(got if isinstance(got, bytes) else write_png(got), key, expect=expect)
        return restore_image(img.rgb, img.alpha, img.mode), img.mode
    if codec != "msinn" and expect is None:
        raise BitstreamError(f"{key}: a {codec} row without the size of its image cannot be checked before decoding")
    data = read_member(row, options)
    check_member_size(key, codec, data, expect)
    if codec == "msinn":
        from msinn.decoding import decode_image

        decoded = decode_image(data, model_for_row(row, models, device), key)
        pixels, mode = decoded.pixels, decoded.mode
    else:
        from msinn.choice import CLASSICAL_MAX_PIXELS  # the largest classical file the pipeline writes
        from msinn.classical import decode

        mode = row.get("mode")
        if mode not in RESTORE_MODES:
            raise UntrustedReference(f"mode {mode!r} is not a layout this package restores")
        if not row.get("pixel_hash"):
            raise BitstreamError(f"{key}: a {codec} row without the hash of its decoded pixels cannot be checked")
        try:
            pixels = decode(data, mode, key, CLASSICAL_MAX_PIXELS, expect)
        except ValueError as exc:
            raise BitstreamError(f"{key}: {codec} file does not decode ({exc})") from None
    if row.get("width") is not None and pixels.shape[:2] != (row["height"], row["width"]):
        raise BitstreamError(f"{key}: decoded size {pixels.shape[1]}x{pixels.shape[0]} differs from the manifest's "
                             f"{row['width']}x{row['height']}")
    want = row.get("pixel_hash")
    if want and image_digest(pixels) != want:
        from msinn.classical import versions

        here = versions(codec) if codec != "msinn" else "this decoder"
        raise BitstreamError(
            f"{key}: decoded {codec} pixels differ from those recorded when it was written "
            f"(written with {row.get('codec_version') or 'unrecorded libraries'}; decoded with {here})"
        )
    return pixels, mode
