"""The MS-INN variable-rate codec (Tu et al., IEEE TMM 2025).

An invertible multi-scale transform maps the image to five latent levels.
Levels are coded coarsest first; each level's entropy parameters come from a
channel context (the already decoded coarser levels, pushed back through the
inverse transform), a two-pass checkerboard spatial context, and per-anchor
gain vectors that select the rate. Latent residual prediction refines each
decoded level, and a small U-Net post-processes the image.

Numerics follow the reference implementation operation for operation, so that
bitstreams are byte-identical to it on CPU in float32.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .compressai_parts import GaussianConditional, LowerBound
from .config import LATENT_CHANNELS, MSINNConfig
from .entropy import RansTables, StreamDecoder
from .hashing import hash_tensors
from .layers import CheckerboardContextConv, InvUnit, depth_to_space, space_to_depth
from .postprocess import PostProcessNet
from .tensors import to_uint8

SCALES_MIN, SCALES_MAX, SCALES_LEVELS = 0.11, 256.0, 64

Qp = int | float | Sequence[int] | torch.Tensor
LevelCheck = Callable[[int, np.ndarray], None]


def default_scale_table() -> torch.Tensor:
    return torch.exp(torch.linspace(math.log(SCALES_MIN), math.log(SCALES_MAX), SCALES_LEVELS))


def _conv3x3_stack(cin: int, cout: int, width: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    chans = [cin, width, width, width, width]
    for a, b in zip(chans[:-1], chans[1:]):
        layers += [nn.Conv2d(a, b, 3, padding=1), nn.GELU()]
    layers.append(nn.Conv2d(width, cout, 3, padding=1))
    return nn.Sequential(*layers)


def _spatial_context_stack(c: int, width: int) -> nn.Sequential:
    return nn.Sequential(
        CheckerboardContextConv(c, width, "A"),
        nn.GELU(),
        CheckerboardContextConv(width, width, "B"),
        nn.GELU(),
        CheckerboardContextConv(width, width, "B"),
        nn.GELU(),
        CheckerboardContextConv(width, 2 * c, "B"),
    )


def _entropy_parameter_stack(c: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c * 12 // 3, c * 10 // 3, 1),
        nn.GELU(),
        nn.Conv2d(c * 10 // 3, c * 8 // 3, 1),
        nn.GELU(),
        nn.Conv2d(c * 8 // 3, c * 6 // 3, 1),
    )


@dataclass(frozen=True)
class Level:
    """One latent level in decoding order."""

    index: int
    channels: int
    # Stage of the analysis transform inverted once this level is decoded
    # (None for the coarsest level, which only starts the support tensor).
    stage: int | None
    # Phase 0: anchors sit where dy != dx inside each 2x2 block; phase 1: dy == dx.
    phase: int


LEVELS: tuple[Level, ...] = tuple(
    Level(i, c, None if i == 0 else 4 - i, i % 2) for i, c in enumerate(LATENT_CHANNELS)
)


def split_phases(t: torch.Tensor, phase: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(anchor, non_anchor) halves of a level, each 1 x 2C x h/2 x w/2, in coding order."""
    c = t.shape[1]
    s = space_to_depth(t)
    off_diag = s[:, c : 3 * c]
    diag = torch.cat((s[:, :c], s[:, 3 * c :]), dim=1)
    return (off_diag, diag) if phase == 0 else (diag, off_diag)


def merge_phases(anchor: torch.Tensor, non_anchor: torch.Tensor, phase: int) -> torch.Tensor:
    """The inverse of :func:`split_phases`: one level from its anchor and non-anchor halves."""
    off_diag, diag = (anchor, non_anchor) if phase == 0 else (non_anchor, anchor)
    c = off_diag.shape[1] // 2
    return depth_to_space(torch.cat((diag[:, :c], off_diag, diag[:, c:]), dim=1))


def anchor_mask(h: int, w: int, phase: int, device: torch.device) -> torch.Tensor:
    """1x1xHxW boolean mask of a level's anchor positions (coded first, without spatial context)."""
    yy = torch.arange(h, device=device).view(h, 1) % 2
    xx = torch.arange(w, device=device).view(1, w) % 2
    off_diag = yy != xx
    return (off_diag if phase == 0 else ~off_diag).view(1, 1, h, w)


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return (torch.round(x) - x).detach() + x


@dataclass(frozen=True)
class _LevelStart:
    """A level as the level loop hands it to a coding path: its gains, anchor mask, and the anchors'
    entropy parameters (from the channel context alone)."""

    level: Level
    gain: torch.Tensor
    inv_gain: torch.Tensor
    scale_gain: torch.Tensor
    anchor: torch.Tensor
    scales: torch.Tensor
    means: torch.Tensor


class _LevelCoding:
    """How one path quantises (and codes) a level's two halves; :meth:`MSINN._levels` runs the loop around it.

    The paths differ only here: training rounds with a straight-through
    estimator and measures likelihoods, refinement rounds with any function
    and counts bits, encoding rounds and collects symbols, decoding reads
    symbols from the stream.
    """

    def anchors(self, s: _LevelStart, y: torch.Tensor) -> torch.Tensor:
        """The level reconstructed at its anchors (the other positions are masked off by the loop)."""
        raise NotImplementedError

    def rest(
        self, s: _LevelStart, y: torch.Tensor, y_hat1: torch.Tensor, scales: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        """The whole level reconstructed, before LRP; ``scales``, ``means``: the non-anchors' parameters."""
        raise NotImplementedError

    def level_done(self, y_hat: torch.Tensor) -> None:
        """A level after LRP (training keeps them)."""


class _TrainingCoding(_LevelCoding):
    """The reference's training pass: both halves' symbols use the second pass's means, the rate its scales."""

    def __init__(self, gaussian_conditional: GaussianConditional):
        self.gaussian_conditional = gaussian_conditional
        self.likelihoods: dict[str, torch.Tensor] = {}
        self.y_hats: list[torch.Tensor] = []

    def anchors(self, s: _LevelStart, y: torch.Tensor) -> torch.Tensor:
        return _ste_round((y - s.means) * s.gain) * s.inv_gain + s.means

    def rest(
        self, s: _LevelStart, y: torch.Tensor, y_hat1: torch.Tensor, scales: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        res = (y - means) * s.gain
        _, self.likelihoods[f"y{s.level.index}"] = self.gaussian_conditional(res, scales * s.scale_gain, means=None)
        return _ste_round(res) * s.inv_gain + means

    def level_done(self, y_hat: torch.Tensor) -> None:
        self.y_hats.append(y_hat)


class _SoftCoding(_LevelCoding):
    """The coding path with ``rounding`` for round(), adding up the bits of the discretised Gaussian."""

    q1: torch.Tensor  # the anchors' symbols, between the two halves

    def __init__(
        self, gaussian_conditional: GaussianConditional, rounding: Callable[[torch.Tensor], torch.Tensor],
        bits: torch.Tensor,
    ):
        self.gaussian_conditional = gaussian_conditional
        self.rounding = rounding
        self.bits = bits

    def anchors(self, s: _LevelStart, y: torch.Tensor) -> torch.Tensor:
        self.q1 = self.rounding((y - s.means) * s.gain)
        return self.q1 * s.inv_gain + s.means

    def rest(
        self, s: _LevelStart, y: torch.Tensor, y_hat1: torch.Tensor, scales: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        q = torch.where(s.anchor, self.q1, self.rounding((y - means) * s.gain))
        scales = self.gaussian_conditional.lower_bound_scale(torch.where(s.anchor, s.scales, scales) * s.scale_gain)
        upper = torch.special.ndtr((0.5 - q.abs()) / scales)
        lower = torch.special.ndtr((-0.5 - q.abs()) / scales)
        self.bits = self.bits - torch.log2((upper - lower).clamp_min(1e-9)).sum()
        return q * s.inv_gain + torch.where(s.anchor, s.means, means)


class _Encoding(_LevelCoding):
    """Rounds both halves and collects each level's symbols (anchors, then the rest) and CDF indexes."""

    q1: torch.Tensor  # the anchors' symbols and indexes, between the two halves
    idx1: torch.Tensor

    def __init__(self, index: Callable[[torch.Tensor], torch.Tensor]):
        self.index = index
        self.level_symbols: list[np.ndarray] = []
        self.indexes: list[np.ndarray] = []

    def anchors(self, s: _LevelStart, y: torch.Tensor) -> torch.Tensor:
        self.q1 = torch.round((y - s.means) * s.gain)
        self.idx1 = self.index(s.scales * s.scale_gain)
        return self.q1 * s.inv_gain + s.means

    def rest(
        self, s: _LevelStart, y: torch.Tensor, y_hat1: torch.Tensor, scales: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        phase = s.level.phase
        q2 = torch.round((y - means) * s.gain)
        idx2 = self.index(scales * s.scale_gain)
        sym_a, sym_n = split_phases(self.q1, phase)[0], split_phases(q2, phase)[1]
        self.level_symbols.append(torch.cat((sym_a.reshape(-1), sym_n.reshape(-1))).to(torch.int32).cpu().numpy())
        self.indexes.append(split_phases(self.idx1, phase)[0].reshape(-1).cpu().numpy())
        self.indexes.append(split_phases(idx2, phase)[1].reshape(-1).cpu().numpy())
        return torch.where(s.anchor, y_hat1, q2 * s.inv_gain + means)


class _Decoding(_LevelCoding):
    """Reads each half's symbols from the rANS stream; ``level_check(i, symbols)`` may veto a level."""

    sym_a: np.ndarray  # the anchors' symbols, checked with the rest's

    def __init__(
        self, index: Callable[[torch.Tensor], torch.Tensor], decoder: StreamDecoder, level_check: LevelCheck | None
    ):
        self.index = index
        self.decoder = decoder
        self.level_check = level_check

    def _read(self, s: _LevelStart, scales: torch.Tensor, half: int, like: torch.Tensor) -> torch.Tensor:
        idx = split_phases(self.index(scales * s.scale_gain), s.level.phase)[half]
        symbols = self.decoder.decode(idx.reshape(-1).cpu().numpy())
        if half == 0:
            self.sym_a = symbols
        elif self.level_check is not None:
            self.level_check(s.level.index, np.concatenate((self.sym_a, symbols)))
        q = torch.from_numpy(symbols).to(device=like.device, dtype=like.dtype).view(idx.shape)
        zeros = torch.zeros_like(q)
        return merge_phases(q, zeros, s.level.phase) if half == 0 else merge_phases(zeros, q, s.level.phase)

    def anchors(self, s: _LevelStart, y: torch.Tensor) -> torch.Tensor:
        return self._read(s, s.scales, 0, y) * s.inv_gain + s.means

    def rest(
        self, s: _LevelStart, y: torch.Tensor, y_hat1: torch.Tensor, scales: torch.Tensor, means: torch.Tensor
    ) -> torch.Tensor:
        return torch.where(s.anchor, y_hat1, self._read(s, scales, 1, y) * s.inv_gain + means)


@dataclass
class EncodedLatents:
    """What an encode produced: the coded symbols, their CDF indexes, and the rANS stream.

    The stream is made on first use of ``data``: rate control sizes candidate
    encodes with :meth:`code_length` and pays for entropy coding only for the
    one it keeps, which can then be coded on another thread while the network
    moves on to the next image. ``finish()`` completes the decoder-side
    reconstruction from state kept at the last level.
    """

    latent_shape: tuple[int, int]
    level_symbols: list[np.ndarray]
    symbols: np.ndarray
    indexes: np.ndarray
    tables: RansTables
    _finish: Callable[[], torch.Tensor] | None = None
    _data: bytes | None = None
    _length: int | None = None

    @property
    def data(self) -> bytes:
        """The rANS stream (coded once, then cached)."""
        if self._data is None:
            self._data = self.tables.encode(self.symbols, self.indexes)
        return self._data

    def code_length(self) -> int:
        """Length of ``data`` in bytes, exact from the CDF tables, without coding (computed once)."""
        if self._data is not None:
            return len(self._data)
        if self._length is None:
            self._length = self.tables.code_length(self.symbols, self.indexes)
        return self._length

    def finish(self) -> torch.Tensor:
        """The (unclamped) image the decoder will reconstruct from ``data``."""
        if self._finish is None:
            raise RuntimeError("encode was run without keep_state=True")
        return self._finish()



class MSINN(nn.Module):
    """MS-INN codec. ``MSINN(anchor_num=12)`` or ``MSINN(MSINNConfig(...))``."""

    def __init__(self, config: MSINNConfig | None = None, **overrides: object):
        super().__init__()
        if config is None:
            config = MSINNConfig(**overrides)  # type: ignore[arg-type]
        elif overrides:
            config = dataclasses.replace(config, **overrides)  # type: ignore[arg-type]
        self.config = config
        self.anchor_num = config.anchor_num
        self.channel_split = list(LATENT_CHANNELS)
        self.num_iters = len(LEVELS)

        widths = (config.N, config.N, config.N, config.M)
        ch = 12
        for s in range(4):
            units = nn.ModuleList(
                InvUnit(ch, widths[s], config.flow_permutation, config.flow_coupling, config.act_norm)
                for _ in range(config.depths[s])
            )
            setattr(self, f"g_a{s}", units)
            ch *= 2

        if config.post_process:
            self.post_net = PostProcessNet()

        cw = config.context_channels
        cs = LATENT_CHANNELS
        self.initial_scale = nn.Parameter(torch.ones(1, cs[0], 1, 1))
        self.cc_transforms = nn.ModuleList(_conv3x3_stack(cs[i], 2 * cs[i], cw) for i in range(1, 5))
        self.sc_transforms = nn.ModuleList(_spatial_context_stack(c, cw) for c in cs)
        self.entropy_parameters = nn.ModuleList(_entropy_parameter_stack(c) for c in cs)
        self.gaussian_conditional = GaussianConditional(None)
        total = sum(cs)
        self.gain = nn.Parameter(torch.ones(config.anchor_num, total, 1, 1))
        self.inv_gain = nn.Parameter(torch.ones(config.anchor_num, total, 1, 1))
        self.scale_gain = nn.Parameter(torch.ones(config.anchor_num, total, 1, 1))
        self.lower_bound = LowerBound(0.01)
        if config.lrp:
            self.lrp_transforms = nn.ModuleList(
                _conv3x3_stack(c if i == 0 else 2 * c, c, cw) for i, c in enumerate(cs)
            )
        self._tables: RansTables | None = None
        # The registry name or file name a loader gives the model (None for one built here).
        self.model_name: str | None = None
        self._sha256: tuple[str, tuple] | None = None  # (weights hash, _weights_key() when it was taken)

    profile = "float32"

    @property
    def device(self) -> torch.device:
        return self.gain.device

    @property
    def float_model(self) -> MSINN:
        """The float model gradients flow through (refinement): this one; a portable model's is its float twin."""
        return self

    # ------------------------------------------------------------------ identity
    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights (:func:`weights_hash`): the identity every file records.

        Always that of the weights as they are now. The value a loader
        records (the hash of the file's tensors as read), or the one computed
        on first use, is kept only while every tensor is the same object,
        storage, dtype and in-place version as when it was taken: a training
        step, ``load_state_dict`` or a change of device or dtype makes the
        next read hash the weights again, so a trained model never carries
        its starting point's identity. Kept, it costs a walk over the state
        dict, not a hash of every weight, so the codec reads it per file.
        (An in-place change through ``.data`` bypasses version counters;
        nothing in this project makes one.)
        """
        key = self._weights_key()
        if self._sha256 is None or self._sha256[1] != key:
            self._sha256 = (weights_hash(self.state_dict()), key)
        return self._sha256[0]

    @weights_sha256.setter
    def weights_sha256(self, sha256: str) -> None:
        """Record the hash of the weights just loaded (the loader hashes the file's tensors as it read them)."""
        self._sha256 = (sha256, self._weights_key())

    def _weights_key(self) -> tuple:
        """What changes whenever a hashed tensor may have: its object, storage, dtype and in-place version."""
        return tuple(
            (k, id(t), t.data_ptr(), t.dtype, t._version)
            for k, t in self.state_dict(keep_vars=True).items()
            if not is_derived_key(k)
        )

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """A decoded 1x3xHxW image -> HxWx3 uint8 (a method: the portable profile rounds its own way)."""
        return to_uint8(x)

    def snap_qp(self, qp: int | float) -> int | float:
        """The rate parameter as coded (the float profile codes any qp exactly)."""
        self.check_qp(qp)
        return qp

    # ------------------------------------------------------------------ transform
    def stage(self, s: int) -> nn.ModuleList:
        return getattr(self, f"g_a{s}")

    def analyze(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Analysis transform: five latents, coarsest (decoding order) first.

        It does not depend on the rate, so rate control computes it once.
        """
        kept = []
        h = x
        for s in range(4):
            h = space_to_depth(h)
            for unit in self.stage(s):
                h = unit(h)
            keep, h = h.chunk(2, dim=1)
            kept.append(keep)
        kept.append(h)
        return kept[::-1]

    def grow_support(self, level: Level, y_hat: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        """Fold a decoded level into the support tensor by inverting one stage."""
        if level.stage is None:
            return y_hat
        h = torch.cat((y_hat, support), dim=1)
        for unit in reversed(self.stage(level.stage)):
            h = unit(h, reverse=True)
        return depth_to_space(h)

    def _finish(self, support: torch.Tensor) -> torch.Tensor:
        return self.post_net(support) if self.config.post_process else support

    # ------------------------------------------------------------------ rate parameter
    def check_qp(self, qp: Qp) -> None:
        if isinstance(qp, bool):
            raise TypeError("qp must be a number, not a bool")
        if isinstance(qp, int | float):
            if not math.isfinite(qp) or not 0 <= qp <= self.anchor_num - 1:
                raise ValueError(f"qp {qp!r} outside [0, {self.anchor_num - 1}]")

    def gains(self, qp: Qp) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Lower-bounded (gain, inverse gain, scale gain) per level for a rate parameter.

        A fractional qp interpolates geometrically between its two anchors; a
        qp equal to an anchor (int or float, the top anchor included) selects it.
        """
        self.check_qp(qp)
        per_param = [p.split(self.channel_split, dim=1) for p in (self.gain, self.inv_gain, self.scale_gain)]
        out = []
        for i in range(self.num_iters):
            vecs = []
            for slices in per_param:
                table = slices[i]
                if isinstance(qp, float) and not float(qp).is_integer():
                    lo = int(qp)
                    t = qp - lo
                    v = table[lo : lo + 1] ** (1 - t) * table[lo + 1 : lo + 2] ** t
                elif isinstance(qp, int | float):
                    q = int(qp)
                    v = table[q : q + 1]
                else:
                    v = table[qp]
                vecs.append(self.lower_bound(v))
            out.append((vecs[0], vecs[1], vecs[2]))
        return out

    # ------------------------------------------------------------------ entropy parameters
    def _channel_context(self, level: Level, support: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        if level.index == 0:
            b, c, h, w = like.shape
            scales = self.initial_scale.expand(b, c, h, w)
            return torch.cat((scales, torch.zeros_like(scales)), dim=1)
        return self.cc_transforms[level.index - 1](support)

    def _params(self, level: Level, cc: torch.Tensor, sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scales, means = self.entropy_parameters[level.index](torch.cat((cc, sc), dim=1)).chunk(2, 1)
        return scales, means

    def _spatial_context(self, level: Level, half: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        sc = self.sc_transforms[level.index](half)
        return torch.where(anchor, torch.zeros((), dtype=sc.dtype, device=sc.device), sc)

    def _lrp(self, level: Level, y_hat: torch.Tensor, support: torch.Tensor | None, inv_gain: torch.Tensor):
        if not self.config.lrp:
            return y_hat
        inp = y_hat if level.index == 0 else torch.cat((y_hat, support), dim=1)
        return y_hat + 0.5 * torch.tanh(self.lrp_transforms[level.index](inp)) * inv_gain

    # ------------------------------------------------------------------ the level loop
    def _levels(self, likes: Sequence[torch.Tensor], gains: list, coding: _LevelCoding) -> Callable[[], torch.Tensor]:
        """The checkerboard level loop, written once for training, refinement, encoding and decoding.

        ``likes`` holds one tensor per level, coarsest first: the latents
        themselves, or (to decode) tensors of their shape, dtype and device.
        Per level, the anchors' parameters come from the channel context
        alone, the rest's from the spatial context of the reconstructed
        anchors too; ``coding`` says how each half is quantised (and coded).
        Returns the rest of the reconstruction: the finest level's LRP, its
        inverse stage and the post-net, which encoding runs only when asked.
        """
        support = None
        zero = torch.zeros((), dtype=likes[0].dtype, device=likes[0].device)
        for level, y in zip(LEVELS, likes):
            g, ig, sg = gains[level.index]
            cc = self._channel_context(level, support, y)
            anchor = anchor_mask(y.shape[2], y.shape[3], level.phase, y.device)
            scales1, means1 = self._params(level, cc, torch.zeros_like(cc))
            start = _LevelStart(level, g, ig, sg, anchor, scales1, means1)
            y_hat1 = coding.anchors(start, y)
            half = torch.where(anchor, y_hat1, zero)
            scales2, means2 = self._params(level, cc, self._spatial_context(level, half, anchor))
            y_hat = coding.rest(start, y, y_hat1, scales2, means2)
            if level.index == self.num_iters - 1:
                break
            support = self._reconstruct(level, y_hat, support, ig, coding)
        last, last_support, last_ig = LEVELS[-1], support, gains[-1][1]

        def finish() -> torch.Tensor:
            return self._finish(self._reconstruct(last, y_hat, last_support, last_ig, coding))

        return finish

    def _reconstruct(
        self, level: Level, y_hat: torch.Tensor, support: torch.Tensor | None, ig: torch.Tensor, coding: _LevelCoding
    ) -> torch.Tensor:
        """A coded level refined by LRP and folded into the support tensor."""
        y_hat = self._lrp(level, y_hat, support, ig)
        coding.level_done(y_hat)
        return self.grow_support(level, y_hat, support)

    # ------------------------------------------------------------------ training / estimate
    def forward(self, x: torch.Tensor, qp: Qp) -> dict:
        """Differentiable pass: reconstruction and per-level likelihoods (as the reference)."""
        return self.forward_latents(self.analyze(x), qp)

    def forward_latents(self, latents: list[torch.Tensor], qp: Qp) -> dict:
        """:meth:`forward` from precomputed latents (rate control probes reuse the analysis)."""
        coding = _TrainingCoding(self.gaussian_conditional)
        x_hat = self._levels(latents, self.gains(qp), coding)()
        return {"x_hat": x_hat, "y": latents, "y_hat": coding.y_hats, "likelihoods": coding.likelihoods}

    def soft_forward(
        self, latents: list[torch.Tensor], qp: int | float, rounding: Callable[[torch.Tensor], torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(bits, reconstruction) of coding ``latents`` with ``rounding`` in place of round(): differentiable.

        The coding path's structure exactly (anchor half from the channel
        context, the other half from the spatial context of the rounded
        anchors, per-level rate of the discretised Gaussian), so with
        ``torch.round`` it gives the coded symbols' cost and the decoder's
        image. Encoder-side refinement (:mod:`msinn.refine`) passes a soft,
        stochastic rounding and differentiates through it.
        """
        gains = self.gains(qp)
        coding = _SoftCoding(self.gaussian_conditional, rounding, latents[0].new_zeros(()))
        x_hat = self._levels(latents, gains, coding)()
        return coding.bits, x_hat

    @torch.inference_mode()
    def estimate_bits(self, latents: list[torch.Tensor], qp: int | float, reconstruct: bool = False):
        """Estimated bits (sum of -log2 likelihoods) and, optionally, the reconstruction.

        Every likelihood is known when the level loop ends, so the inverse
        transform (``finish``) runs only when the reconstruction is asked for:
        the rate search's byte probes skip it.
        """
        coding = _TrainingCoding(self.gaussian_conditional)
        finish = self._levels(latents, self.gains(qp), coding)
        return float(likelihood_bits(coding.likelihoods)), (finish() if reconstruct else None)

    # ------------------------------------------------------------------ entropy coder tables
    def update(self, scale_table: torch.Tensor | None = None, force: bool = True) -> bool:
        """Build the Gaussian conditional's CDF tables (needed before coding)."""
        if scale_table is None:
            scale_table = default_scale_table()
        updated = self.gaussian_conditional.update_scale_table(scale_table, force=force)
        self._tables = None
        return bool(updated) or self.gaussian_conditional._offset.numel() > 0

    def tables(self) -> RansTables:
        if self.gaussian_conditional._offset.numel() == 0:
            raise RuntimeError("entropy tables missing: call model.update() before coding")
        if self._tables is None:
            self._tables = RansTables.from_gaussian_conditional(self.gaussian_conditional)
        return self._tables

    def _indexes(self, scales: torch.Tensor) -> torch.Tensor:
        """Scale-table index per element; equal to GaussianConditional.build_indexes."""
        gc = self.gaussian_conditional
        scales = gc.lower_bound_scale(scales)
        return torch.searchsorted(gc.scale_table[:-1].to(scales), scales.contiguous(), right=False).to(torch.int32)

    # ------------------------------------------------------------------ coding
    @torch.inference_mode()
    def encode_latents(
        self, latents: list[torch.Tensor], qp: int | float, keep_state: bool = False, code: bool = True
    ) -> EncodedLatents:
        """Entropy-code latents from :meth:`analyze` at one rate parameter.

        ``code=False`` stops after the context models: the symbols are ready,
        the rANS stream is made when ``data`` is first read.
        """
        if latents[0].shape[0] != 1:
            raise ValueError("coding works on one image at a time (batch size 1)")
        gains = self.gains(qp)
        tables = self.tables()
        coding = _Encoding(self._indexes)
        rest = self._levels(latents, gains, coding)
        finish = None
        if keep_state:

            def finish() -> torch.Tensor:
                with torch.inference_mode():
                    return rest()

        shape = latents[0].shape[-2:]
        hw = (int(shape[0]), int(shape[1]))
        symbols, indexes = np.concatenate(coding.level_symbols), np.concatenate(coding.indexes)
        enc = EncodedLatents(hw, coding.level_symbols, symbols, indexes, tables, finish)
        if code:
            enc.data  # noqa: B018 -- code now, on the caller's thread
        return enc

    # Same signature as PortableMSINN.decode_latents on purpose: both implement CodecModel's (msinn/interface.py).
    @torch.inference_mode()
    def decode_latents(
        self,
        data: bytes,
        latent_shape: Sequence[int],
        qp: int | float,
        level_check: LevelCheck | None = None,
    ) -> torch.Tensor:
        """Decode a rANS stream to the (unclamped) image; ``level_check(i, symbols)`` may veto a level."""
        h0, w0, decoder = open_stream(self.tables(), data, latent_shape)
        gains = self.gains(qp)
        # Each level's shape, dtype and device, without memory: a scalar expanded.
        like = torch.empty((), dtype=self.gain.dtype, device=self.gain.device)
        scales = [2 ** max(level.index - 1, 0) for level in LEVELS]
        likes = [like.expand(1, lv.channels, h0 * s, w0 * s) for lv, s in zip(LEVELS, scales)]
        return self._levels(likes, gains, _Decoding(self._indexes, decoder, level_check))()

    def compress_raw(self, x: torch.Tensor, qp: int | float) -> tuple[bytes, tuple[int, int]]:
        """Encode a 1x3xHxW image in [0, 1] (H, W multiples of 64) to one rANS stream.

        Byte-identical to the reference ``compress(x, qp)`` on CPU in float32.
        """
        _check_image(x)
        with torch.inference_mode():
            enc = self.encode_latents(self.analyze(x), qp)
        return enc.data, enc.latent_shape

    def decompress_raw(self, data: bytes, latent_shape: Sequence[int], qp: int | float) -> torch.Tensor:
        """Decode a stream from :meth:`compress_raw` to a 1x3xHxW image clamped to [0, 1]."""
        with torch.inference_mode():
            return self.decode_latents(data, latent_shape, qp).clamp_(0, 1)

    # ------------------------------------------------------------------ state dict
    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Load weights; entropy-coder tables are derived buffers and are rebuilt by update()."""
        sd = dict(state_dict)
        gc_derived = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")
        for key in [k for k in sd if k.startswith("gaussian_conditional.") and k.rsplit(".", 1)[-1] in gc_derived]:
            del sd[key]
        result = super().load_state_dict(sd, strict=False, assign=assign)
        if strict:
            missing = [k for k in result.missing_keys if not is_derived_key(k)]
            if missing or result.unexpected_keys:
                raise RuntimeError(
                    f"state dict does not fit MSINN({self.config}): missing {missing[:10]}, "
                    f"unexpected {result.unexpected_keys[:10]}"
                )
        self._tables = None
        self._sha256 = None
        return result


def likelihood_bits(likelihoods: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Estimated bits of a batch: the sum of -log2 likelihoods over every level of ``forward``'s output.

    A tensor, so the training loss can differentiate it; ``float()`` it to report.
    """
    return sum(-torch.log2(lik).sum() for lik in likelihoods.values())


def tile_symbols(latent_shape: Sequence[int]) -> int:
    """Symbols coded for a tile whose coarsest latent is h0 x w0: 3 per pixel of the 16*h0 x 16*w0 padded tile."""
    return 3 * int(latent_shape[0]) * 16 * int(latent_shape[1]) * 16


def open_stream(tables: RansTables, data: bytes, latent_shape: Sequence[int]):
    """(h0, w0, rANS stream decoder) for a tile whose coarsest latent is h0 x w0."""
    h0, w0 = int(latent_shape[0]), int(latent_shape[1])
    if h0 < 1 or w0 < 1:
        raise ValueError(f"invalid latent shape {tuple(latent_shape)}")
    return h0, w0, tables.decoder(data, max_symbols=tile_symbols(latent_shape))


def is_derived_key(key: str) -> bool:
    """A state-dict key of a buffer derived from the weights (masks, CDF tables): never saved, rebuilt on load."""
    leaf = key.rsplit(".", 1)[-1]
    return leaf in ("mask", "_quantized_cdf", "_offset", "_cdf_length", "scale_table", "scale_bound", "bound")


def weights_hash(sd: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over the non-derived tensors in name order: the model's identity."""
    h = hashlib.sha256()
    hash_tensors(h, {k: v for k, v in sd.items() if not is_derived_key(k)})
    return h.hexdigest()


def _check_image(x: torch.Tensor) -> None:
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected a 1x3xHxW image tensor, got shape {tuple(x.shape)}")
    if x.shape[2] % 64 or x.shape[3] % 64 or x.shape[2] == 0 or x.shape[3] == 0:
        raise ValueError(f"image sides must be positive multiples of 64, got {x.shape[2]}x{x.shape[3]}")
