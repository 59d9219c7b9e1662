"""Decoding a ``.msinn`` file with every check it allows: the model it names, its profile, its claimed
sizes, every hash it carries, and the float32 retry under this machine's thread counts."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import torch

from .checkpoint import model_identity
from .container import Header, TileRecord, image_digest, symbols_digest, unpack
from .determinism import numerics_record, parse_numerics
from .errors import BitstreamError
from .images import DEFAULT_MAX_PIXELS, decode_alpha, restore_image, to_pil
from .model import MSINN, tile_symbols


@dataclass
class DecodedImage:
    pixels: np.ndarray
    mode: str
    header: Header

    def to_pil(self):
        return to_pil(self.pixels, self.mode)


def check_header_model(header: Header, model: MSINN, source: str = "input") -> None:
    name, h = model_identity(model)
    if header.model_hash != h[: len(header.model_hash)]:
        raise BitstreamError(
            f"{source}: encoded with model {header.model_name} (weights {header.model_hash}), "
            f"but the loaded model is {name} (weights {h}); decode with --model {header.model_name}"
        )


class NumericsMismatch(BitstreamError):
    """A float32 file whose numerics this machine cannot reproduce (its data is intact)."""


class _Drift(BitstreamError):
    """Decoded symbols or pixels differ from the encoder's although the payload's CRC holds."""


def check_profile(header: Header, model: MSINN, source: str = "input") -> None:
    """The file's coding profile must be the loaded model's. When the loaded model is the one the file names
    (same weights), the file contradicts itself: it is damaged, and no other model would help."""
    if header.profile != model.profile:
        name, h = model_identity(model)
        if (header.model_hash and h.startswith(header.model_hash)) or name == header.model_name:
            raise BitstreamError(
                f"{source}: the header says {header.profile}, but the model it names, {header.model_name} "
                f"(weights {header.model_hash}), codes {model.profile}: the header is damaged or was altered"
            )
        raise BitstreamError(
            f"{source}: a {header.profile} file of model {header.model_name} (weights {header.model_hash}), but the "
            f"loaded model {name} codes {model.profile}; decode with --model {header.model_name} (or the checkpoint "
            "holding those weights)"
        )


DEFAULT_MAX_TILE_PIXELS = 1 << 23  # 8.4 MP per tile (the encoder's tiles are 1 MP, whole images up to 2 MP)


def check_limits(header: Header, model: MSINN, source: str, max_pixels: int, max_tile_pixels: int) -> None:
    """Refuse, before any allocation, a file whose claimed size is over the limits or larger than its
    streams can hold (every symbol costs at least a few millionths of a bit)."""
    if header.width * header.height > max_pixels:
        raise BitstreamError(f"{source}: {header.width}x{header.height} is over the limit of {max_pixels} pixels")
    min_bits = model.tables().min_bits_per_symbol()
    for i, t in enumerate(header.tiles):
        symbols = tile_symbols(t.latent_shape)
        pixels = symbols // 3  # of the padded tile
        if pixels > max_tile_pixels:
            raise BitstreamError(f"{source}: tile {i} claims {pixels} pixels, over the limit of {max_tile_pixels}")
        if t.length < math.ceil(symbols * min_bits / 8):
            raise BitstreamError(
                f"{source}: tile {i}'s {t.length}-byte stream cannot hold the {symbols} symbols its size claims"
            )


def decode_image(
    data: bytes,
    model: MSINN,
    source: str = "input",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_tile_pixels: int = DEFAULT_MAX_TILE_PIXELS,
) -> DecodedImage:
    """Decode a ``.msinn`` file, checking every hash it carries; raises BitstreamError on any mismatch.

    Portable files decode the same everywhere. A float32 file decodes only
    under the numerics that wrote it: on CPU the thread count it records is
    tried first, then a few common ones; when none reproduces it,
    :class:`NumericsMismatch` says what wrote the file and how to recover.
    """
    header, payload = unpack(data, source)
    check_profile(header, model, source)
    check_header_model(header, model, source)
    try:
        model.check_qp(header.qp)
    except ValueError as exc:
        raise BitstreamError(f"{source}: {exc} for model {header.model_name}") from None
    model.tables()  # a model without entropy tables is a caller error, not a damaged file
    check_limits(header, model, source, max_pixels, max_tile_pixels)
    if header.profile != "float32":
        return _decode(header, payload, model, source)
    return _decode_float(header, payload, model, source)


def _decode_float(header: Header, payload: bytes, model: MSINN, source: str) -> DecodedImage:
    """Decode a float32 file under this machine's thread counts. The header's numerics record is informational:
    it never chooses how the file is decoded (a forged "threads=64" must not change this process's threads), it
    only tells a damaged file written here from a file written under other numerics."""
    current = torch.get_num_threads()
    if model.device.type != "cpu":
        tries = [current]
    else:
        cores = os.cpu_count() or 1
        tries = list(dict.fromkeys(n for n in (current, 1, 2, 4, cores) if 0 < n <= max(current, cores)))
    first: _Drift | None = None
    try:
        for n in tries:
            torch.set_num_threads(n)
            try:
                return _decode(header, payload, model, source)
            except _Drift as exc:
                first = first or exc
    finally:
        torch.set_num_threads(current)
    wrote = header.numerics or "unrecorded float32 numerics (a format version 1 file)"
    here = numerics_record(model.device)
    if _same_numerics(header.numerics, here, tries):
        raise BitstreamError(
            f"{source}: damaged: it was written under this machine's numerics ({wrote}), which were tried, and its "
            f"decoded symbols still differ from the encoder's. First mismatch: {first}"
        )
    raise NumericsMismatch(
        f"{source}: written by {wrote}; this machine ({here}, threads tried: {tries}) computes its float32 entropy "
        "parameters differently, so it cannot be decoded here; decode it where it was written, or re-encode it "
        f"from its source with the portable profile (msinn-pipeline reencode --from source). First mismatch: {first}"
    )


def _same_numerics(recorded: str, here: str, tries: list[int]) -> bool:
    """True when a file's numerics record matches this machine's (same device, CPU or GPU and torch) and the
    thread count it records was among those tried: a mismatch then means damage, not another machine."""
    if not recorded:
        return False
    wrote, mine = parse_numerics(recorded), parse_numerics(here)
    threads = wrote.pop("threads", None)
    mine.pop("threads", None)
    return wrote == mine and (threads is None or (threads.isdigit() and int(threads) in tries))


def _decode(header: Header, payload: bytes, model: MSINN, source: str) -> DecodedImage:
    rgb = np.empty((header.height, header.width, 3), dtype=np.uint8)
    for i, t in enumerate(header.tiles):
        stream = payload[t.offset : t.offset + t.length]

        def check(level: int, symbols: np.ndarray, t: TileRecord = t, i: int = i) -> None:
            if symbols_digest(symbols) != t.level_digests[level]:
                raise _Drift(
                    f"{source}: tile {i} latent level {level}: decoded symbols do not match the encoder's "
                    "(corrupt stream, or this decoder's entropy parameters differ from the encoder's)"
                )

        try:
            x_hat = model.decode_latents(stream, t.latent_shape, header.qp, level_check=check)
        except BitstreamError:
            raise
        except (ValueError, RuntimeError) as exc:
            raise BitstreamError(f"{source}: tile {i} could not be decoded ({exc})") from exc
        rgb[t.y : t.y + t.height, t.x : t.x + t.width] = model.to_uint8(x_hat)[: t.height, : t.width]
    alpha = None
    if header.alpha_offset is not None:
        try:
            alpha = decode_alpha(
                payload[header.alpha_offset : header.alpha_offset + header.alpha_length], header.width, header.height
            )
        except ValueError as exc:
            raise BitstreamError(f"{source}: {exc}") from None
    pixels = restore_image(rgb, alpha, header.mode)
    if image_digest(pixels) != header.image_digest:
        raise _Drift(f"{source}: decoded image does not match the encoder's reconstruction hash")
    return DecodedImage(pixels, header.mode, header)
