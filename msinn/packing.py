"""xz-compressed model files (``NAME.pt.xz``): the bundled weights take half the room.

A portable model stores small integers in wide tensors, so xz shrinks its file
to under half (5.26 MB to 2.45 MB); float16 checkpoints shrink less (to about
88%). The package keeps a size cap on its weights, and packing is what lets
every portable name people archived with stay bundled while new defaults are
added. Packing changes only the bytes on disk: the tensors, and so the weights
hash that bitstreams and the registry record, are the same.

A packed file is data from anywhere (a download, object storage), so unpacking
is bounded twice before any byte reaches ``torch.load``: the decoder's memory
(an xz header may ask for a dictionary of gigabytes) and the unpacked size
(a few kilobytes may claim gigabytes). Python's ``lzma`` (liblzma) does the
work; this module only sets the limits and says clearly what was wrong.
"""

from __future__ import annotations

import types

XZ_MAGIC = b"\xfd7zXZ\x00"
PACKED_SUFFIX = ".xz"
# The largest unpacked model file read: the reference implementation's released checkpoints are well under
# this; anything larger is refused before it is held in memory whole.
MAX_UNPACKED_BYTES = 1 << 30
# liblzma's decoder memory: preset 9 (extreme or not) needs 65 MiB; a header asking for more is refused.
MAX_DECODER_MEMORY = 128 << 20
# What ``pack`` writes: xz's strongest preset, ``-9e`` (the files are written once and read many times).
PACK_LEVEL = 9


class PackError(ValueError):
    """A packed model file cannot be unpacked within the limits; the message says why."""


def is_packed(head: bytes) -> bool:
    """True for the first bytes of an xz stream."""
    return head[: len(XZ_MAGIC)] == XZ_MAGIC


def _lzma() -> types.ModuleType:
    """Python's lzma, imported on first use: a Python built without it still reads plain files."""
    try:
        import lzma
    except ImportError as exc:  # pragma: no cover - CPython builds normally include it
        raise PackError(f"this Python has no lzma module, so packed model files cannot be read ({exc})") from None
    return lzma


def pack(data: bytes) -> bytes:
    """``data`` as one xz stream (with xz's own CRC64 check), for files ending in ``.xz``."""
    lzma = _lzma()
    return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=PACK_LEVEL | lzma.PRESET_EXTREME)


def unpack(data: bytes, name: str, limit: int = MAX_UNPACKED_BYTES) -> bytes:
    """The bytes packed in ``data`` (one xz stream), refusing more than ``limit`` bytes in or out, a decoder
    that needs more than ``MAX_DECODER_MEMORY``, a truncated or corrupt stream, and bytes after the stream."""
    if len(data) > limit:
        raise PackError(f"{name}: a packed file larger than {limit} bytes, the most a model file may hold")
    lzma = _lzma()
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_XZ, memlimit=MAX_DECODER_MEMORY)
    try:
        out = decoder.decompress(data, max_length=limit + 1)
    except lzma.LZMAError as exc:
        raise PackError(f"{name}: not a readable xz stream ({exc}); a packed model file is one whole xz stream "
                        f"that needs at most {MAX_DECODER_MEMORY >> 20} MiB to decode") from exc
    if len(out) > limit:
        raise PackError(f"{name}: unpacks to more than {limit} bytes, the most a model file may hold")
    if not decoder.eof:
        raise PackError(f"{name}: the xz stream ends early (a truncated file)")
    if decoder.unused_data:
        raise PackError(f"{name}: {len(decoder.unused_data)} bytes follow the xz stream")
    return out
