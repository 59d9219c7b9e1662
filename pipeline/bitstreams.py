"""Reading an archived image back: where its bitstream lies, and which model decodes it.

A manifest is data, not code: its ``tar_uri`` only names a shard of the
archive (``.../bitstreams/part-*.tar``), which is looked up under the archive
root the user gave, never followed elsewhere; its ``model`` is only a name to
look up in the registry (checked against ``model_hash``) unless the user
passed a checkpoint holding those weights.
"""

from __future__ import annotations

import re
from typing import Any

from . import storage

SHARD_NAME = re.compile(r"part-[A-Za-z0-9_-]{1,80}\.tar")
# a member's file name extension by the row's codec (rows written before codec choice are .msinn files)
MEMBER_EXTENSIONS = {"msinn": "msinn", "avif": "avif", "jpeg": "jpg", "webp": "webp", "jxl": "jxl"}
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


def member_name(key: str, codec: str | None) -> str:
    """The tar member of an image: ``<key>.msinn``, ``<key>.avif``, ... (each a file in its own standard format)."""
    return f"{key}.{MEMBER_EXTENSIONS[codec or 'msinn']}"


def read_member(row: dict, options: dict | None) -> bytes:
    """One image's bitstream, by one ranged read of its shard under ``row["archive_root"]``."""
    start, length = row.get("offset"), row.get("length")
    if not isinstance(start, int) or not isinstance(length, int) or start < 0 or not 0 < length <= MAX_MEMBER_BYTES:
        raise UntrustedReference(f"offset/length {start!r}/{length!r} do not describe a bitstream")
    uri = shard_uri(row["archive_root"], row["tar_uri"])
    data = storage.read_bytes(uri, options, start=start, end=start + length)
    if len(data) != length:
        raise ValueError(f"{uri}: {len(data)} of {length} bytes at offset {start} (shard truncated?)")
    return data


def load_model(spec: str, device: str):
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


def model_for_row(row: dict, models: str | list[str] | None, device: str):
    """The model a row decodes with: a given one holding the row's weights, else the registered one it names.

    Matching by weights hash lets one command restore an archive written by
    several models (say a retired model's downloaded file next to the bundled
    ones): each row takes the checkpoint it was encoded with, whatever order
    they are given in. A row may name only a registered model whose hash it
    also carries: never a path or URL to load.
    """
    from msinn.codec import model_identity
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


def decode_row(row: dict, options: dict | None, models: str | list[str] | None, device: str = "cpu") -> tuple[Any, str]:
    """An archived image as (pixels in its restore layout, mode), with every check its codec allows.

    A ``.msinn`` file is checked by its container (CRCs, per-level symbol
    hashes, image hash); every file, whatever its codec, is checked against
    the hash of the decoded pixels recorded in its row at encode time, so a
    decoder that disagrees with the one that wrote the file (another
    libavif, another colour conversion) is an error naming both, never a
    silently different image.
    """
    from msinn.container import image_digest
    from msinn.errors import BitstreamError

    key = str(row["key"])
    codec = row_codec(row)
    data = read_member(row, options)
    if codec == "msinn":
        from msinn.codec import decode_image

        decoded = decode_image(data, model_for_row(row, models, device), key)
        pixels, mode = decoded.pixels, decoded.mode
    else:
        from msinn.classical import decode

        mode = row.get("mode")
        if mode not in RESTORE_MODES:
            raise UntrustedReference(f"mode {mode!r} is not a layout this package restores")
        if not row.get("pixel_hash"):
            raise BitstreamError(f"{key}: a {codec} row without the hash of its decoded pixels cannot be checked")
        try:
            pixels = decode(data, mode, key)
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
