"""The portable decoder: MS-INN's decoding as a function of integers alone.

:class:`IntegerDecoder` codes exactly like :class:`msinn.model.MSINN` (same
levels, contexts, checkerboard passes, latent residual prediction, inverse
transform), but everything a decoder recomputes runs on integer codes: the
channel context (coarser levels pushed back through the inverse transform),
the spatial context, the entropy parameters, the scale-table index, the means,
the gains of a fractional rate parameter, the residual prediction, the
synthesis and the post-processing network. The encoder runs the same integer
code for its contexts and reconstruction, so both agree bit for bit.

Its blocks are written against an arithmetic ``o`` (:mod:`msinn.portable.ops`):
decoding passes :class:`~msinn.portable.ops.TensorOps`, the exactness proof
(:mod:`msinn.portable.proof`) passes bounds through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..config import LATENT_CHANNELS, MSINNConfig
from ..entropy import RansTables
from ..layers import depth_to_space
from ..model import LEVELS, EncodedLatents, Level, LevelCheck, anchor_mask, merge_phases, open_stream, split_phases
from .exact import Layer, build_layer, pow2
from .formats import GAIN_FRAC, MAIN_BOUND, MAIN_FRAC, MUL_FRAC, QP_FRAC, SYMBOL_BOUND, TANH_FRAC
from .ops import TensorOps
from .postnet import post_process
from .tables import EXP2_ONE, exp2_fixed

OPS = TensorOps()
Gains = list[tuple[Any, Any]]  # (inverse gain, scale gain) per level


class IntegerDecoder:
    """The integer network of a portable model file: its layers, its blocks, the coding loops."""

    def __init__(
        self,
        config: MSINNConfig,
        spec: Mapping[str, Any],
        tensors: Mapping[str, torch.Tensor],
        layers: Mapping[str, Layer] | None = None,
    ):
        """Build (and check) every layer of ``spec``, or take ``layers`` already built from it."""
        self.config = config
        self.spec = spec
        self.tensors = tensors
        self.layers: dict[str, Layer] = (
            dict(layers) if layers is not None
            else {name: build_layer(name, s, tensors) for name, s in spec["layers"].items()}
        )
        self.scale_fracs: list[int] = [self.layers[f"ep{i}.scale"].frac_out for i in range(len(LEVELS))]
        self.mean_fracs: list[int] = [self.layers[f"ep{i}.mean"].frac_out for i in range(len(LEVELS))]
        self.device = torch.device("cpu")
        self._tables: RansTables | None = None
        self._thresholds: dict[tuple[int, str], torch.Tensor] = {}
        self._gain_cache: dict[int, Gains] = {}

    def to(self, device: torch.device) -> None:
        self.device = device
        self._thresholds.clear()
        self._gain_cache.clear()

    def run(self, o: Any, name: str, x: Any) -> Any:
        """Layer ``name`` on ``x`` (which it may consume)."""
        return o.layer(name, self.layers[name], x)

    # ------------------------------------------------------------------ rate parameter
    def qp_code(self, qp: int | float) -> int:
        """The rate parameter in units of 2**-16 (the profile's grid); raises off the grid."""
        code = float(qp) * (1 << QP_FRAC)
        if not code.is_integer():
            raise ValueError(f"qp {qp!r} is not a multiple of 2**-{QP_FRAC} (the portable profile's rate grid)")
        return int(code)

    def _gain_codes(self, log_key: str, code: int) -> np.ndarray:
        """GAIN_FRAC codes of one gain vector: the anchors' log2 interpolated linearly, exponentiated by table."""
        logs = self.tensors[log_key].numpy().astype(np.int64)
        lo, t = code >> QP_FRAC, code & ((1 << QP_FRAC) - 1)
        a = logs[lo]
        if t:
            a = a + (((logs[lo + 1] - a) * t) >> QP_FRAC)
        return exp2_fixed(a, self.tensors["exp2"].numpy().astype(np.int64), GAIN_FRAC)

    def gains(self, qp: int | float) -> Gains:
        """(inverse gain, scale gain) codes per level, in GAIN_FRAC, as float64 tensors 1xCx1x1.

        A fractional qp interpolates the anchors' log2 gains linearly (the
        float model's geometric interpolation) and exponentiates by table.
        """
        code = self.qp_code(qp)
        if code not in self._gain_cache:
            per = [self._gain_codes(key, code) for key in ("log_inv_gain", "log_scale_gain")]
            out, start = [], 0
            for c in LATENT_CHANNELS:
                ig, sg = (torch.from_numpy(p[start : start + c].astype(np.float64)).view(1, c, 1, 1) for p in per)
                out.append((ig.to(self.device), sg.to(self.device)))
                start += c
            self._gain_cache[code] = out
        return self._gain_cache[code]

    def largest_gains(self) -> tuple[int, int]:
        """Upper bounds of the inverse-gain and scale-gain codes of every rate parameter (the proof's).

        An interpolated log2 lies between two anchors' and the table lookup
        between two table entries, so the largest table entry shifted by the
        largest whole part bounds them all, whatever the table holds.
        """
        top = int(self.tensors["exp2"].max())
        out = []
        for key in ("log_inv_gain", "log_scale_gain"):
            s = EXP2_ONE - GAIN_FRAC - (int(self.tensors[key].max()) >> QP_FRAC)
            out.append((top + (1 << (s - 1))) >> s if s > 0 else top << -s)
        return out[0], out[1]

    # ------------------------------------------------------------------ entropy coder tables
    def tables(self) -> RansTables:
        if self._tables is None:
            lengths = self.tensors["cdf_length"].tolist()
            cdf = self.tensors["cdf"]
            self._tables = RansTables(
                cdfs=[cdf[i, : lengths[i]].tolist() for i in range(cdf.shape[0])],
                cdf_lengths=lengths,
                offsets=self.tensors["cdf_offset"].tolist(),
            )
        return self._tables

    def thresholds(self, level: int, device: torch.device) -> torch.Tensor:
        """The scale table (but its last entry) in the units of ``scale code * gain code``, floored."""
        key = (level, str(device))
        if key not in self._thresholds:
            table = self.tensors["scale_table"].double()[:-1]
            k = self.scale_fracs[level] + GAIN_FRAC
            self._thresholds[key] = torch.floor(table * pow2(k)).to(device)
        return self._thresholds[key]

    def index(self, o: Any, level: int, scale: Any, sg: Any) -> Any:
        """Scale-table index of each element: the number of table entries (but the last) below its scale."""
        return o.index(lambda device: self.thresholds(level, device), scale, self.scale_fracs[level], sg)

    # ------------------------------------------------------------------ blocks
    def chain(self, o: Any, prefix: str, x: Any) -> Any:
        """conv, GELU table, conv, ..., conv: float32 codes in, float32 codes out."""
        n = self.spec["chains"][prefix]
        for j in range(n):
            x = self.run(o, f"{prefix}.conv{j}", x)
            if j < n - 1:
                x = self.run(o, f"{prefix}.act{j}", x)
        return x

    def from_main(self, o: Any, x: Any, name: str) -> Any:
        return o.from_main(x, name, self.layers[name])

    def params(self, o: Any, level: int, cc: Any, sc: Any) -> tuple[Any, Any]:
        """(scale codes, mean codes) from channel and spatial context codes (both in ep's input format)."""
        p = f"ep{level}"
        h = o.cat(cc, sc)
        h = self.run(o, f"{p}.act0", self.run(o, f"{p}.conv0", h))
        h = self.run(o, f"{p}.act1", self.run(o, f"{p}.conv1", h))
        return self.run(o, f"{p}.scale", o.copy(h)), self.run(o, f"{p}.mean", h)  # layers may consume their input

    def channel_context(self, o: Any, level: Level, support: Any, h: int, w: int) -> Any:
        if level.index == 0:
            frac = self.layers["ep0.conv0"].frac_in
            codes = o.constant(self.tensors["initial_scale_codes"], frac, h, w, self.device)
            return o.cat(codes, o.zeros_like(codes))
        p = f"cc{level.index}"
        return self.chain(o, p, self.from_main(o, support, f"{p}.conv0"))

    def spatial_context(self, o: Any, level: Level, half: Any, anchor: Any) -> Any:
        p = f"sc{level.index}"
        return o.zero_where(self.chain(o, p, self.from_main(o, half, f"{p}.conv0")), anchor)

    def y_hat(self, o: Any, level: int, q: Any, ig: Any, mean_codes: Any) -> Any:
        """q * inverse gain + mean, in main codes (GAIN_FRAC == MAIN_FRAC)."""
        y = o.add(o.mul(o.to_f64(q), ig), o.to_main(mean_codes, self.mean_fracs[level]))
        return o.clamp(y, MAIN_BOUND)

    def lrp(self, o: Any, level: Level, y_hat: Any, support: Any, ig: Any) -> Any:
        """y_hat + 0.5 * tanh(residual prediction) * inverse gain."""
        if not self.config.lrp:
            return y_hat
        p = f"lrp{level.index}"
        inp = y_hat if level.index == 0 else o.cat(y_hat, support)
        t = o.to_f64(self.run(o, f"{p}.tanh", self.chain(o, p, self.from_main(o, inp, f"{p}.conv0"))))
        corr = o.rescale(o.mul(t, ig), TANH_FRAC + GAIN_FRAC, MAIN_FRAC, MAIN_BOUND, log2_gain=-1)
        return o.clamp(o.add(y_hat, corr), MAIN_BOUND)

    def unit_reverse(self, o: Any, name: str, z: Any) -> Any:
        """One invertible unit backwards: the coupling undone, then the channel mixing (act-norm folded in)."""
        z1, z2 = o.halves(z)
        L = self.layers
        h = self.run(o, f"{name}.conv2", self.run(o, f"{name}.conv1", self.from_main(o, z1, f"{name}.conv1")))
        if f"{name}.skip" in L:
            h = o.add(h, self.run(o, f"{name}.skip", self.from_main(o, z1, f"{name}.skip")))
        else:
            h = o.add(h, self.from_main(o, z1, f"{name}.shift"))
        h = o.clamp(h, L[f"{name}.shift"].in_bound)
        if self.config.flow_coupling == "affine":
            mul = o.to_f64(self.run(o, f"{name}.exp", self.run(o, f"{name}.scale", o.copy(h))))  # MUL_FRAC
            z2 = o.rescale(o.mul(z2, mul), MAIN_FRAC + MUL_FRAC, MAIN_FRAC, MAIN_BOUND)
        shift = o.to_main(self.run(o, f"{name}.shift", h), L[f"{name}.shift"].frac_out)
        z2 = o.clamp(o.sub(z2, shift), MAIN_BOUND)
        return self.run(o, f"{name}.mix", o.cat(z1, z2))

    def grow_support(self, o: Any, level: Level, y_hat: Any, support: Any) -> Any:
        if level.stage is None:
            return y_hat
        h = o.cat(y_hat, support)
        for u in reversed(range(self.config.depths[level.stage])):
            h = self.unit_reverse(o, f"g{level.stage}.{u}", h)
        return o.rearrange(depth_to_space, h)

    def finish(self, o: Any, support: Any) -> Any:
        return post_process(self, o, support) if self.config.post_process else support

    def pixels(self, o: Any, x: Any) -> Any:
        """Main-path image codes -> 8-bit values: clamp(floor(x * 255 + 1/2), 0, 255)."""
        return o.clamp(o.rescale(o.times(x, 255), MAIN_FRAC, 0, 1 << 40), 1 << 40)

    # ------------------------------------------------------------------ decoding, for any arithmetic
    def reconstruct(self, o: Any, source: Any, gains: Gains) -> Any:
        """Every level from its symbols (``source``), coarsest first, then the image codes."""
        support = None
        for level in LEVELS:
            ig, sg = gains[level.index]
            h, w = source.size(level)
            anchor, other = source.masks(level)
            cc = self.channel_context(o, level, support, h, w)
            s1, m1 = self.params(o, level.index, cc, o.zeros_like(cc))
            y_hat1 = self.y_hat(o, level.index, source.anchors(level, self.index(o, level.index, s1, sg)), ig, m1)
            half = o.zero_where(o.copy(y_hat1), other)
            s2, m2 = self.params(o, level.index, cc, self.spatial_context(o, level, half, anchor))
            qn = source.non_anchors(level, self.index(o, level.index, s2, sg))
            y_hat = o.where(anchor, y_hat1, self.y_hat(o, level.index, qn, ig, m2))
            y_hat = self.lrp(o, level, y_hat, support, ig)
            support = self.grow_support(o, level, y_hat, support)
        return self.finish(o, support)

    def decode_latents(
        self, data: bytes, latent_shape: Sequence[int], qp: int | float, level_check: LevelCheck | None = None
    ) -> torch.Tensor:
        """Decode a rANS stream to main-path image codes (see :meth:`to_uint8`)."""
        h0, w0, decoder = open_stream(self.tables(), data, latent_shape)
        return self.reconstruct(OPS, _RansSymbols(decoder, h0, w0, self.device, level_check), self.gains(qp))

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Main-path image codes -> HxWx3 uint8."""
        px = self.pixels(OPS, x[0]).clamp_(0, 255)
        return px.to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    # ------------------------------------------------------------------ encoding
    def encode_latents(
        self,
        latents: list[torch.Tensor],
        qp: int | float,
        float_gains: Sequence[tuple[torch.Tensor, ...]],
        keep_state: bool = False,
        code: bool = True,
    ) -> EncodedLatents:
        """Quantise the analysis' latents with integer contexts; ``float_gains`` are the float model's."""
        if latents[0].shape[0] != 1:
            raise ValueError("coding works on one image at a time (batch size 1)")
        o = OPS
        gains = self.gains(qp)
        tables = self.tables()
        support = y_hat = None
        level_symbols: list[np.ndarray] = []  # each level's symbols, anchors then the rest
        indexes: list[np.ndarray] = []
        for level, y in zip(LEVELS, latents):
            ig, sg = gains[level.index]
            g = float_gains[level.index][0].double()
            y = y.double()
            h, w = y.shape[2], y.shape[3]
            cc = self.channel_context(o, level, support, h, w)
            anchor = anchor_mask(h, w, level.phase, y.device)
            s1, m1 = self.params(o, level.index, cc, o.zeros_like(cc))
            q1 = _quantise(y, m1, self.mean_fracs[level.index], g)
            y_hat1 = self.y_hat(o, level.index, q1, ig, m1)
            idx1 = self.index(o, level.index, s1, sg)
            half = y_hat1.masked_fill(~anchor, 0.0)
            s2, m2 = self.params(o, level.index, cc, self.spatial_context(o, level, half, anchor))
            q2 = _quantise(y, m2, self.mean_fracs[level.index], g)
            idx2 = self.index(o, level.index, s2, sg)
            sym_a, sym_n = split_phases(q1, level.phase)[0], split_phases(q2, level.phase)[1]
            lvl = torch.cat((sym_a.reshape(-1), sym_n.reshape(-1))).to(torch.int32).cpu().numpy()
            level_symbols.append(lvl)
            indexes.append(split_phases(idx1, level.phase)[0].reshape(-1).cpu().numpy())
            indexes.append(split_phases(idx2, level.phase)[1].reshape(-1).cpu().numpy())
            y_hat = torch.where(anchor, y_hat1, self.y_hat(o, level.index, q2, ig, m2))
            if level.index == len(LEVELS) - 1:
                break  # the finest level's reconstruction is not needed to encode
            y_hat = self.lrp(o, level, y_hat, support, ig)
            support = self.grow_support(o, level, y_hat, support)
        finish = None
        if keep_state:
            last, last_support, last_ig = LEVELS[-1], support, gains[-1][0]

            def finish() -> torch.Tensor:
                with torch.inference_mode():
                    y = self.lrp(o, last, y_hat, last_support, last_ig)
                    return self.finish(o, self.grow_support(o, last, y, last_support))

        hw = (int(latents[0].shape[2]), int(latents[0].shape[3]))
        enc = EncodedLatents(hw, level_symbols, np.concatenate(level_symbols), np.concatenate(indexes), tables, finish)
        if code:
            enc.data  # noqa: B018 -- code now, on the caller's thread
        return enc


def _quantise(y: torch.Tensor, mean_codes: torch.Tensor, frac: int, g: torch.Tensor) -> torch.Tensor:
    """Encoder only: round((y - mean) * gain), clamped to the symbol range (float is fine here)."""
    mean = mean_codes.double() * pow2(-frac)
    return torch.round((y - mean) * g).clamp_(-SYMBOL_BOUND, SYMBOL_BOUND)


class _RansSymbols:
    """The symbols of a stream, level by level, as full-level float64 tensors (zeros at the other phase)."""

    def __init__(self, decoder: Any, h0: int, w0: int, device: torch.device, level_check: LevelCheck | None):
        self.decoder, self.h0, self.w0, self.device, self.level_check = decoder, h0, w0, device, level_check
        self._anchor_symbols: np.ndarray | None = None

    def size(self, level: Level) -> tuple[int, int]:
        scale = 2 ** max(level.index - 1, 0)
        return self.h0 * scale, self.w0 * scale

    def masks(self, level: Level) -> tuple[torch.Tensor, torch.Tensor]:
        anchor = anchor_mask(*self.size(level), level.phase, self.device)
        return anchor, ~anchor

    def _decode(self, idx: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        sym = self.decoder.decode(idx.reshape(-1).cpu().numpy())
        t = torch.from_numpy(sym.astype(np.float64)).to(self.device).view(idx.shape)
        return sym, t.clamp_(-SYMBOL_BOUND, SYMBOL_BOUND)  # a corrupt stream cannot overflow

    def anchors(self, level: Level, idx: torch.Tensor) -> torch.Tensor:
        self._anchor_symbols, q = self._decode(split_phases(idx, level.phase)[0])
        return merge_phases(q, torch.zeros_like(q), level.phase)

    def non_anchors(self, level: Level, idx: torch.Tensor) -> torch.Tensor:
        sym, q = self._decode(split_phases(idx, level.phase)[1])
        if self.level_check is not None:
            assert self._anchor_symbols is not None
            self.level_check(level.index, np.concatenate((self._anchor_symbols, sym)))
        return merge_phases(torch.zeros_like(q), q, level.phase)


def snap_qp(qp: int | float) -> int | float:
    """The nearest rate parameter the profile can code (a multiple of 2**-16)."""
    code = math.floor(float(qp) * (1 << QP_FRAC) + 0.5)
    return code >> QP_FRAC if code % (1 << QP_FRAC) == 0 else code / (1 << QP_FRAC)

