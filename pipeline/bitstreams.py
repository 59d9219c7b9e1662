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
from typing import Any

from . import storage

SHARD_NAME = re.compile(r"part-[A-Za-z0-9_-]{1,80}\.tar")
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


BLOCK = tarfile.BLOCKSIZE


def read_member(row: dict, options: dict | None) -> bytes:
    """One image's bitstream, by one ranged read of its shard under ``row["archive_root"]``.

    The read starts at the member's tar header, which must name the row's
    key (``<key>.msinn``) and length: a row whose offset points at another
    member (another image) is refused, never decoded as this key.
    """
    start, length = row.get("offset"), row.get("length")
    if not isinstance(start, int) or not isinstance(length, int) or start < 0 or not 0 < length <= MAX_MEMBER_BYTES:
        raise UntrustedReference(f"offset/length {start!r}/{length!r} do not describe a bitstream")
    uri = shard_uri(row["archive_root"], row["tar_uri"])
    name = f"{row['key']}.msinn".encode("utf-8", "surrogateescape")
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
