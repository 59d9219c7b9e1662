"""Encoding one whole image: input image, tiles, rate control, refinement and the container together."""

from __future__ import annotations

import copy
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .checkpoint import model_identity
from .container import (
    Header,
    TileRecord,
    header_bytes,
    image_digest,
    pack,
    symbols_digest,
)
from .determinism import numerics_record
from .images import (
    DEFAULT_MAX_PIXELS,
    PreparedImage,
    encode_alpha,
    open_image,
    restore_image,
)
from .metrics import psnr_uint8
from .model import MSINN
from .ratecontrol import Target, keep_within_cap, search_rate
from .refine import Effort, effort_of, refine_latents
from .tensors import to_padded_tensor, to_uint8
from .version import __version__

DEFAULT_TILE_PIXELS = 1 << 21  # images up to ~2 MP are coded whole
DEFAULT_TILE_SIZE = 1024
PROBE_FRACTION = 1 / 16  # area of the crop whose estimates shape the rate search


@dataclass(frozen=True)
class EncodeOptions:
    """How the model codes an image beyond its target; every value is checked here, once, before any work."""

    tile_pixels: int = DEFAULT_TILE_PIXELS
    tile_size: int = DEFAULT_TILE_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    effort: int = 0  # the encoder-side refinement level (msinn.refine)

    def __post_init__(self) -> None:
        if self.tile_size < 64 or self.tile_size % 64:
            raise ValueError("tile_size must be a positive multiple of 64")
        if self.tile_pixels < 64 * 64:
            raise ValueError("tile_pixels must be at least 4096")
        effort_of(self.effort)  # a level this version does not have

    @property
    def refinement(self) -> Effort | None:
        """The refinement of the (checked) effort level; None for 0."""
        return effort_of(self.effort)


def default_target(model: MSINN) -> Target:
    """The target when none is given: the model's middle rate parameter."""
    return Target("qp", (model.anchor_num - 1) / 2)


@dataclass(frozen=True)
class ChosenRate:
    """The rate chosen for an image and the encode made at it (what :func:`_choose_rate` decides)."""

    qp: int | float
    encs: list  # per tile: the model's encode at qp (symbols; streams made only for the kept one)
    recon: np.ndarray = field(repr=False)
    in_range: bool
    note: str
    probes: int  # real encodes
    estimates: int  # crop rate/PSNR estimates


@dataclass
class EncodeResult:
    data: bytes
    header: Header
    qp: int | float
    bytes: int
    bpp: float
    psnr: float
    target: Target
    in_range: bool
    note: str
    probes: int  # real encodes
    estimates: int  # crop rate/PSNR estimates
    seconds: float
    reconstruction: np.ndarray = field(repr=False)

    def summary(self) -> dict[str, Any]:
        return {
            "bytes": self.bytes,
            "bpp": round(self.bpp, 6),
            "psnr": round(self.psnr, 4) if math.isfinite(self.psnr) else None,
            "qp": self.qp,
            "target": {"kind": self.target.kind, "value": self.target.value},
            "in_range": self.in_range,
            "note": self.note,
            "probes": self.probes,
            "estimates": self.estimates,
            "seconds": round(self.seconds, 3),
            "width": self.header.width,
            "height": self.header.height,
            "mode": self.header.mode,
            "model": self.header.model_name,
        }



def tile_grid(width: int, height: int, options: EncodeOptions) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of independently coded tiles; one tile unless over the pixel budget."""
    if width * height <= options.tile_pixels:
        return [(0, 0, width, height)]
    t = options.tile_size
    return [(x, y, min(t, width - x), min(t, height - y)) for y in range(0, height, t) for x in range(0, width, t)]


class _ImageSession:
    """One image being encoded: tiles padded and analysed once, encodes cached per qp.

    It is the rate search's :class:`msinn.ratecontrol.RateProblem`: cheap
    estimates on crops, real measurements on the whole image.
    """

    def __init__(self, model: MSINN, img: PreparedImage, options: EncodeOptions, cap_bound: float | None):
        self.model = model
        self.img = img
        self.device = model.device
        self.anchor_num = model.anchor_num
        self.pixels = img.width * img.height
        self.tiles = tile_grid(img.width, img.height, options)
        self.alpha_bytes = encode_alpha(img.alpha) if img.alpha is not None else b""
        # everything in the file but the tile streams, sized for the largest values a cap allows
        self.overhead = _header_overhead(model, img, self.tiles, len(self.alpha_bytes), int(cap_bound or 1 << 32))
        self.latents = []
        with torch.inference_mode():
            for x0, y0, w, h in self.tiles:
                self.latents.append(model.analyze(to_padded_tensor(img.rgb[y0 : y0 + h, x0 : x0 + w], self.device)))
        self._crop_latents: list[torch.Tensor] | None = None
        self._crop_rgb: np.ndarray | None = None

    def with_latents(self, latents: list[list[torch.Tensor]]) -> _ImageSession:
        """The same image and crops, coded from other latents (refined ones)."""
        other = copy.copy(self)
        other.latents = latents
        return other

    def encode(self, qp: int | float) -> list:
        """Symbols of every tile at ``qp``; the rANS streams are made only for the encode that is kept."""
        qp = self.model.snap_qp(qp)
        return [self.model.encode_latents(lat, qp, keep_state=True, code=False) for lat in self.latents]

    def reconstruct(self, encs: list) -> np.ndarray:
        out = np.empty_like(self.img.rgb)
        for (x0, y0, w, h), enc in zip(self.tiles, encs):
            out[y0 : y0 + h, x0 : x0 + w] = self.model.to_uint8(enc.finish())[:h, :w]
        return out

    def crop(self) -> tuple[list[torch.Tensor], np.ndarray]:
        """Latents of probe crops covering about PROBE_FRACTION of the image, and their pixels.

        Four crops, one in each quadrant, coded as one batch: spread out, they
        represent the image's content better than one central crop of the
        same area. A small image is probed whole.
        """
        if self._crop_latents is None:
            h, w = self.img.height, self.img.width
            side = math.sqrt(h * w * PROBE_FRACTION / 4)  # each crop's side, before keeping the aspect
            ch = min(h, max(64, int(round(side * math.sqrt(h / w) / 64)) * 64))
            cw = min(w, max(64, int(round(side * math.sqrt(w / h) / 64)) * 64))
            if 4 * ch * cw * 2 >= h * w or ch > h // 2 or cw > w // 2:
                crops = [self.img.rgb]
            else:
                centres = [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
                crops = [self.img.rgb[cy - ch // 2 : cy - ch // 2 + ch, cx - cw // 2 : cx - cw // 2 + cw]
                         for cy, cx in centres]
            self._crop_rgb = np.stack(crops) if len(crops) > 1 else crops[0][None]
            with torch.inference_mode():
                x = torch.cat([to_padded_tensor(c, self.device) for c in crops])
                self._crop_latents = self.model.analyze(x)
        return self._crop_latents, self._crop_rgb

    def estimate(self, q: float, kind: str) -> float:
        """From the crops: the whole file's log size (``bytes``) or the decoded PSNR (``psnr``) at ``q``."""
        crop_latents, crop_rgb = self.crop()  # crop_rgb: N x h x w x 3
        if kind == "bytes":
            bits, _ = self.model.estimate_bits(crop_latents, q)
            crop_pixels = crop_rgb.shape[0] * crop_rgb.shape[1] * crop_rgb.shape[2]
            return math.log(max(bits / crop_pixels * self.pixels / 8, 1.0) + self.overhead)
        _, x_hat = self.model.estimate_bits(crop_latents, q, reconstruct=True)
        h, w = crop_rgb.shape[1:3]
        rec = np.stack([to_uint8(x_hat[i : i + 1])[:h, :w] for i in range(x_hat.shape[0])])
        return min(psnr_uint8(rec, crop_rgb), 100.0)

    def measure(self, q: int | float, kind: str, exact: bool) -> tuple[float, tuple[list, np.ndarray | None]]:
        """A real encode at ``q``: its log file size or PSNR, with (encodes, reconstruction if made)."""
        encs = self.encode(q)
        if kind == "bytes":
            payload = sum(len(e.data) if exact else e.code_length() for e in encs)  # exact from the CDF tables
            return math.log(payload + self.overhead), (encs, None)
        rec = self.reconstruct(encs)
        return min(psnr_uint8(rec, self.img.rgb), 100.0), (encs, rec)


def _file_header(
    model: MSINN, img: PreparedImage, tiles: list[TileRecord], qp: int | float, alpha: tuple[int, int] | None,
    digest: str, payload_length: int = 0,
) -> Header:
    """The header of a ``.msinn`` file (``pack`` fills in the payload's length and CRC; the size cap's
    bound passes its own length).

    One builder serves the real file and the size cap's bound, so the two
    cannot drift apart. ``alpha`` is (offset, length) of the alpha stream.
    """
    name, h = model_identity(model)
    single = len(tiles) == 1
    return Header(
        model_name=name, model_hash=h, qp=qp, width=img.width, height=img.height, mode=img.mode,
        source_mode=img.source_mode, bit_depth=img.bit_depth, padding="replicate",
        tile_width=img.width if single else tiles[0].width, tile_height=img.height if single else tiles[0].height,
        tiles=tiles, alpha_offset=alpha[0] if alpha else None, alpha_length=alpha[1] if alpha else None,
        payload_length=payload_length, payload_crc32=0, image_digest=digest, codec_version=__version__,
        profile=model.profile, numerics="" if model.profile != "float32" else numerics_record(model.device),
    )


def _header_overhead(
    model: MSINN, img: PreparedImage, tiles: list[tuple[int, int, int, int]], alpha_len: int, payload_bound: int
) -> int:
    """Bytes of everything in the file but the tile streams: the real header, sized for the largest values.

    The rate parameter is counted as a float (its longest form) and every
    offset and length as ``payload_bound``, so the real header is never larger
    when the payload stays within it: a size cap holds for the whole file.
    """
    n = max(int(payload_bound), 1)
    records = [TileRecord(x, y, w, ht, [-(-ht // 64) * 4, -(-w // 64) * 4], n, n, ["00000000"] * 5)
               for x, y, w, ht in tiles]
    header = _file_header(model, img, records, 0.5, (n, n) if alpha_len else None, "0" * 16, payload_length=n)
    return header_bytes(header) + alpha_len


@dataclass
class PendingEncode:
    """An encode whose rate is chosen and whose reconstruction is known.

    Everything that needs the network is done; what is left (rANS coding of
    the kept symbols, hashes, the container) is CPU work that :meth:`finish`
    does, possibly on another thread while the network serves the next image.
    """

    model: MSINN
    img: PreparedImage
    target: Target
    options: EncodeOptions
    tiles: list[tuple[int, int, int, int]]
    rate: ChosenRate
    alpha_bytes: bytes
    seconds: float

    def finish(self) -> EncodeResult:
        """Code the kept symbols and pack the ``.msinn`` file; a cap within reach is never exceeded."""
        t0 = time.perf_counter()
        # the sizes a cap's search relied on (cached there, so free here), read before coding replaces them
        predicted = sum(enc.code_length() for enc in self.rate.encs) if self.target.is_cap else 0
        streams = [enc.data for enc in self.rate.encs]
        result = self._pack(streams, t0)
        if not self.target.is_cap or not self.rate.in_range:
            return result

        def search_again(aim: float) -> EncodeResult:
            retry = _prepare(self.model, self.img, Target("bytes", aim), self.options, exact_sizes=True)
            again = retry._pack([enc.data for enc in retry.rate.encs], t0)
            again.target = self.target  # the result reports the original target
            if not retry.rate.in_range:
                again.in_range, again.note = False, retry.rate.note
            return again

        cap = self.target.cap_bytes(self.img.width * self.img.height)
        return keep_within_cap(cap, result, predicted == sum(map(len, streams)), search_again)

    def _pack(self, streams: list[bytes], t0: float) -> EncodeResult:
        """The ``.msinn`` file from the coded streams; ``t0`` is when finishing began."""
        img, model, rate = self.img, self.model, self.rate
        tiles, offset = [], 0
        for (x0, y0, w, h), enc, stream in zip(self.tiles, rate.encs, streams):
            digests = [symbols_digest(v) for v in enc.level_symbols]
            tiles.append(TileRecord(x0, y0, w, h, list(enc.latent_shape), offset, len(stream), digests))
            offset += len(stream)
        final_pixels = restore_image(rate.recon, img.alpha, img.mode)
        alpha = (offset, len(self.alpha_bytes)) if self.alpha_bytes else None
        header = _file_header(model, img, tiles, rate.qp, alpha, image_digest(final_pixels))
        data = pack(header, b"".join(streams) + self.alpha_bytes)
        pixels = img.width * img.height
        return EncodeResult(
            data=data,
            header=header,
            qp=rate.qp,
            bytes=len(data),
            bpp=len(data) * 8 / pixels,
            psnr=psnr_uint8(rate.recon, img.rgb),
            target=self.target,
            in_range=rate.in_range,
            note=rate.note,
            probes=rate.probes,
            estimates=rate.estimates,
            seconds=self.seconds + time.perf_counter() - t0,
            reconstruction=final_pixels,
        )


def prepare_encode(
    model: MSINN, img: PreparedImage, target: Target | None = None, options: EncodeOptions | None = None
) -> PendingEncode:
    """The network half of :func:`encode_image` for an image already read: rate chosen, reconstruction made,
    nothing entropy-coded yet (the pipeline codes the rest on another thread).

    The edge of the library: ``target`` and ``options`` checked themselves when
    they were made; what only the model can check (a qp in its range) is
    checked here, before any work. ``options.effort`` > 0 refines the latents
    before coding (:mod:`msinn.refine`); the target still holds.
    """
    options = options or EncodeOptions()
    target = target or default_target(model)
    if target.kind == "qp":
        model.check_qp(target.value)
    return _prepare(model, img, target, options)


def encode_image(
    model: MSINN,
    source: bytes | str | os.PathLike | PreparedImage,
    target: Target | None = None,
    options: EncodeOptions | None = None,
    source_name: str | None = None,
    effort: int | None = None,
) -> EncodeResult:
    """Encode one image (a file, its bytes or an image already read) to a complete ``.msinn`` file meeting
    ``target``; ``effort`` is a shorthand for ``options.effort``."""
    options = options or EncodeOptions()
    if effort is not None:
        options = replace(options, effort=effort)
    if isinstance(source, PreparedImage):
        img = source
    else:
        if isinstance(source, bytes):
            data, name = source, source_name or "input"
        else:
            name = source_name or str(source)
            data = Path(source).read_bytes()
        img = open_image(data, name, options.max_pixels)
    return prepare_encode(model, img, target, options).finish()


def _prepare(
    model: MSINN, img: PreparedImage, target: Target, options: EncodeOptions, exact_sizes: bool = False
) -> PendingEncode:
    """Analysis once, then the rate: a fixed qp, or :func:`msinn.ratecontrol.search_rate` for caps and floors;
    with ``options.effort``, refinement at that rate and the search again over the refined latents."""
    t0 = time.perf_counter()
    pixels = img.width * img.height
    session = _ImageSession(model, img, options, target.cap_bytes(pixels) if target.is_cap else None)
    rate = _choose_rate(session, target, exact_sizes)
    if options.refinement is not None:
        rate = _refined(session, target, exact_sizes, rate, options.refinement)
    return PendingEncode(
        model=model, img=img, target=target, options=options, tiles=session.tiles, rate=rate,
        alpha_bytes=session.alpha_bytes, seconds=time.perf_counter() - t0,
    )


def _choose_rate(session: _ImageSession, target: Target, exact_sizes: bool) -> ChosenRate:
    """The rate for the target and the encode at it."""
    model = session.model
    if target.kind == "qp":
        qp = model.snap_qp(int(target.value) if float(target.value).is_integer() else float(target.value))
        encs = session.encode(qp)
        return ChosenRate(qp, encs, session.reconstruct(encs), True, "", probes=1, estimates=0)
    res = search_rate(session, target, exact_sizes)
    encs, recon = res.payload
    recon = session.reconstruct(encs) if recon is None else recon
    return ChosenRate(model.snap_qp(res.qp), encs, recon, res.in_range, res.note, res.measures, res.estimates)


def _refined(
    session: _ImageSession, target: Target, exact_sizes: bool, base: ChosenRate, effort: Effort
) -> ChosenRate:
    """Refine every tile's latents at the chosen qp, then meet the target again from them; keep whichever
    file is better (a floor: smaller; a cap: higher PSNR; a qp: lower rate + lambda x distortion)."""
    model, img = session.model, session.img
    refined, lams = [], []
    for (x0, y0, w, h), lat in zip(session.tiles, session.latents):
        x = to_padded_tensor(img.rgb[y0 : y0 + h, x0 : x0 + w], session.device)
        with torch.enable_grad():
            lat, lam = refine_latents(model, lat, x, float(base.qp), effort, region=(h, w))
        refined.append(lat)
        lams.append(lam or 0.0)
    other = _choose_rate(session.with_latents(refined), target, exact_sizes)
    counts = {"probes": base.probes + other.probes, "estimates": base.estimates + other.estimates}
    if not other.in_range and base.in_range:  # the refined latents cannot meet a target the plain ones meet
        return replace(base, **counts)
    size = lambda r: sum(e.code_length() for e in r.encs)  # noqa: E731  (exact from the CDF tables)
    quality = lambda r: psnr_uint8(r.recon, img.rgb)  # noqa: E731
    if target.is_cap:
        better = quality(other) > quality(base)
    elif target.kind == "psnr":
        better = size(other) < size(base)
    else:
        lam = float(np.mean(lams))  # bpp per unit of MSE on [0, 1]
        mse = lambda r: float(np.mean((r.recon.astype(np.float64) - img.rgb) ** 2)) / 255**2  # noqa: E731
        cost = lambda r: size(r) * 8 / session.pixels + lam * mse(r)  # noqa: E731
        better = cost(other) < cost(base)
    return replace(other if better else base, **counts)
