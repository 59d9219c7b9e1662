"""The portable MS-INN codec: decoding as a function of integers alone.

:class:`PortableMSINN` codes exactly like :class:`msinn.model.MSINN` (same
levels, contexts, checkerboard passes, latent residual prediction, inverse
transform), but everything a decoder recomputes runs on integer codes through
:mod:`msinn.portable.exact`: the channel context (coarser levels pushed back
through the inverse transform), the spatial context, the entropy parameters,
the scale-table index, the means, the gains of a fractional rate parameter,
the residual prediction, the synthesis and the post-processing network. The
encoder runs the same integer path for its contexts and reconstruction, so
encoder and decoder agree bit for bit on any device.

Only the analysis transform (encoder side: its output is quantised and sent)
and the rate-control estimates run in float, on a float model whose weights
are the integer weights dequantised (``float_model``).

Fixed-point formats (all values are ``code * 2**-frac``):

* main path (latents, support, coupling halves, image): float64 codes,
  ``MAIN_FRAC`` fractional bits, clamped to ``+-MAIN_BOUND``;
* per-channel gains: ``GAIN_FRAC``; coupling multipliers: ``MUL_FRAC``;
  residual-prediction tanh: ``TANH_FRAC``; rate parameter: multiples of
  2**-16;
* convolution layers: formats chosen per layer at conversion
  (:mod:`msinn.portable.convert`) and proved exact by :meth:`check_bounds`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import LATENT_CHANNELS, MSINNConfig
from ..entropy import RansTables
from ..layers import depth_to_space
from ..model import (
    LEVELS,
    MSINN,
    EncodedLatents,
    Level,
    LevelCheck,
    _anchor_mask,
    _merge_phases,
    _split_phases,
    open_stream,
)
from .exact import F32_EXACT, F64_EXACT, BoundError, Lut, QConv, QMix, pow2, rescale
from .tables import LOG_FRAC, derive_lut, exp2_fixed

PROFILE = "portable-1"
FORMAT = "msinn-portable"
FORMAT_VERSION = 1

MAIN_FRAC = 16
MAIN_BOUND = (1 << 36) - 1
GAIN_FRAC = 16
MUL_FRAC = 14
TANH_FRAC = 14
SYMBOL_BOUND = (1 << 15) - 1
QP_FRAC = LOG_FRAC  # the rate parameter is a multiple of 2**-16
def to_main(codes: torch.Tensor, frac: int) -> torch.Tensor:
    """float32 codes in format ``frac`` -> float64 main-path codes."""
    return rescale(codes.double(), frac - MAIN_FRAC, MAIN_BOUND)


def from_main(x: torch.Tensor, layer: QConv) -> torch.Tensor:
    """Main-path codes -> the float32 input codes of ``layer``."""
    return rescale(x, MAIN_FRAC - layer.frac_in, layer.in_bound).float()


class PortableMSINN:
    """MS-INN with an integer decoder path; same coding interface as :class:`MSINN`.

    Built by :func:`msinn.portable.convert.convert` from a float model, or
    loaded from a ``msinn-portable`` file by :meth:`from_state`.
    """

    profile = PROFILE

    def __init__(
        self,
        config: MSINNConfig,
        spec: dict[str, Any],
        tensors: dict[str, torch.Tensor],
        float_tensors: dict[str, torch.Tensor],
        meta: dict[str, Any] | None = None,
    ):
        self.config = config
        self.anchor_num = config.anchor_num
        self.spec = spec
        self.tensors = tensors
        self.float_tensors = float_tensors
        self.meta = dict(meta or {})
        self.layers: dict[str, QConv | Lut | QMix] = {}
        for name, s in spec["layers"].items():
            kind = s["kind"]
            if kind == "conv":
                self.layers[name] = QConv(
                    tensors[f"{name}.w"], tensors[f"{name}.b"], list(s["wexp"]),
                    s["frac_in"], s["frac_out"], s["in_bound"], s["out_bound"], s.get("split", 0), s.get("act", "none"),
                )
            elif kind == "mix":
                self.layers[name] = QMix(
                    tensors[f"{name}.w"], tensors[f"{name}.b"], list(s["wexp"]),
                    s["frac_in"], s["frac_out"], s["in_bound"], s["out_bound"],
                )
            elif kind == "lut":
                canon = tensors[f"canon.{s['fn']}"].numpy().astype(np.int64)
                table = derive_lut(s["fn"], canon, s["in_bound"], s["frac_in"], s["frac_out"], s["out_bound"])
                self.layers[name] = Lut(torch.from_numpy(table).to(torch.int32), s["in_bound"])
            else:
                raise BoundError(f"{name}: unknown layer kind {kind!r}")
        self.scale_fracs: list[int] = [self.layers[f"ep{i}.scale"].frac_out for i in range(len(LEVELS))]
        self.mean_fracs: list[int] = [self.layers[f"ep{i}.mean"].frac_out for i in range(len(LEVELS))]
        self._tables: RansTables | None = None
        self._thresholds: dict[tuple[int, str], torch.Tensor] = {}
        self._gain_cache: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.device = torch.device("cpu")
        self.float_model = self._build_float_model()
        self.weights_sha256 = portable_hash(config, spec, tensors, float_tensors)
        self.model_name: str | None = None
        self.check_bounds()

    # ------------------------------------------------------------------ identity and state
    def state(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "profile": PROFILE,
            "config": self.config.to_dict(),
            "spec": self.spec,
            "tensors": self.tensors,
            "float_tensors": self.float_tensors,
            "meta": self.meta,
        }

    def to(self, device: str | torch.device) -> PortableMSINN:
        self.device = torch.device(device)
        self.float_model.to(self.device)
        self._thresholds.clear()
        self._gain_cache.clear()
        return self

    def eval(self) -> PortableMSINN:
        return self

    # ------------------------------------------------------------------ float side (encoder only)
    def _build_float_model(self) -> MSINN:
        """The float model the integer one stands for: analysis transform and rate estimates."""
        from .convert import dequantized_state_dict

        model = MSINN(self.config)
        model.load_state_dict(dequantized_state_dict(self), strict=True)
        if self.config.post_process:
            model.post_net.scale = 1.0  # the integer post-net's last convolution carries the 0.3
        scale_table = self.tensors["scale_table"].double()
        model.update(scale_table.float())
        model.eval()
        return model

    def analyze(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.float_model.analyze(x)

    def estimate_bits(self, latents: list[torch.Tensor], qp: int | float, reconstruct: bool = False):
        return self.float_model.estimate_bits(latents, qp, reconstruct)

    # ------------------------------------------------------------------ rate parameter
    def check_qp(self, qp: int | float) -> None:
        self.float_model.check_qp(qp)

    def snap_qp(self, qp: int | float) -> int | float:
        """The nearest rate parameter this profile can code (a multiple of 2**-16)."""
        self.check_qp(qp)
        code = math.floor(float(qp) * (1 << QP_FRAC) + 0.5)
        return code >> QP_FRAC if code % (1 << QP_FRAC) == 0 else code / (1 << QP_FRAC)

    def _qp_code(self, qp: int | float) -> int:
        self.check_qp(qp)
        code = float(qp) * (1 << QP_FRAC)
        if not code.is_integer():
            raise ValueError(f"qp {qp!r} is not a multiple of 2**-{QP_FRAC} (the portable profile's rate grid)")
        return int(code)

    def _gains(self, qp: int | float) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(inverse gain, scale gain) codes per level, in GAIN_FRAC, as float64 tensors 1xCx1x1.

        A fractional qp interpolates the anchors' log2 gains linearly (the
        float model's geometric interpolation) and exponentiates by table.
        """
        code = self._qp_code(qp)
        if code not in self._gain_cache:
            lo, t = code >> QP_FRAC, code & ((1 << QP_FRAC) - 1)
            out = []
            per = []
            for key in ("log_inv_gain", "log_scale_gain"):
                logs = self.tensors[key].numpy().astype(np.int64)
                a = logs[lo]
                if t:
                    a = a + (((logs[lo + 1] - a) * t) >> QP_FRAC)
                per.append(exp2_fixed(a, self.tensors["exp2"].numpy().astype(np.int64), GAIN_FRAC))
            start = 0
            for c in LATENT_CHANNELS:
                ig = torch.from_numpy(per[0][start : start + c].astype(np.float64)).view(1, c, 1, 1)
                sg = torch.from_numpy(per[1][start : start + c].astype(np.float64)).view(1, c, 1, 1)
                out.append((ig.to(self.device), sg.to(self.device)))
                start += c
            self._gain_cache[code] = out
        return self._gain_cache[code]

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

    def update(self, *args: Any, **kwargs: Any) -> bool:
        """Entropy tables ship with the model; nothing to rebuild."""
        return True

    def _index(self, level: int, scale_codes: torch.Tensor, sg: torch.Tensor) -> torch.Tensor:
        """Scale-table index of each element: the number of table entries (but the last) below its scale."""
        key = (level, str(scale_codes.device))
        if key not in self._thresholds:
            table = self.tensors["scale_table"].double()[:-1]
            k = self.scale_fracs[level] + GAIN_FRAC
            self._thresholds[key] = torch.floor(table * pow2(k)).to(scale_codes.device)
        v = scale_codes.double() * sg
        return torch.searchsorted(self._thresholds[key], v.contiguous(), right=False).to(torch.int32)

    # ------------------------------------------------------------------ integer blocks
    def _chain(self, prefix: str, x: torch.Tensor, n: int) -> torch.Tensor:
        """conv, GELU table, conv, ..., conv: float32 codes in, float32 codes out."""
        for j in range(n):
            x = self.layers[f"{prefix}.conv{j}"](x)
            if j < n - 1:
                x = self.layers[f"{prefix}.act{j}"](x)
        return x

    def _n_convs(self, prefix: str) -> int:
        return self.spec["chains"][prefix]

    def _params(self, level: int, cc: torch.Tensor, sc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale codes, mean codes) from channel and spatial context codes (both in ep's input format)."""
        p = f"ep{level}"
        h = torch.cat((cc, sc), dim=1)
        h = self.layers[f"{p}.act0"](self.layers[f"{p}.conv0"](h))
        h = self.layers[f"{p}.act1"](self.layers[f"{p}.conv1"](h))
        return self.layers[f"{p}.scale"](h.clone()), self.layers[f"{p}.mean"](h)  # layers may reuse their input

    def _channel_context(self, level: Level, support: torch.Tensor | None, h: int, w: int) -> torch.Tensor:
        if level.index == 0:
            codes = self.tensors["initial_scale_codes"].to(self.device, torch.float32)
            c = codes.numel()
            zeros = torch.zeros(1, c, h, w, device=self.device)
            return torch.cat((codes.view(1, c, 1, 1).expand(1, c, h, w), zeros), 1)
        p = f"cc{level.index}"
        return self._chain(p, from_main(support, self.layers[f"{p}.conv0"]), self._n_convs(p))

    def _spatial_context(self, level: Level, half: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
        p = f"sc{level.index}"
        sc = self._chain(p, from_main(half, self.layers[f"{p}.conv0"]), self._n_convs(p))
        return sc.masked_fill_(anchor, 0.0)

    def _y_hat(self, level: int, q: torch.Tensor, ig: torch.Tensor, mean_codes: torch.Tensor) -> torch.Tensor:
        """q * inverse gain + mean, in main codes (GAIN_FRAC == MAIN_FRAC)."""
        y = q.double() * ig + to_main(mean_codes, self.mean_fracs[level])
        return y.clamp_(-MAIN_BOUND, MAIN_BOUND)

    def _lrp(self, level: Level, y_hat: torch.Tensor, support: torch.Tensor | None, ig: torch.Tensor) -> torch.Tensor:
        if not self.config.lrp:
            return y_hat
        p = f"lrp{level.index}"
        inp = y_hat if level.index == 0 else torch.cat((y_hat, support), dim=1)
        r = self._chain(p, from_main(inp, self.layers[f"{p}.conv0"]), self._n_convs(p))
        t = self.layers[f"{p}.tanh"](r).double()  # TANH_FRAC
        # + 0.5 * tanh * inverse gain: TANH_FRAC + GAIN_FRAC + 1 fractional bits down to MAIN_FRAC
        corr = rescale(t * ig, TANH_FRAC + GAIN_FRAC + 1 - MAIN_FRAC, MAIN_BOUND)
        return (y_hat + corr).clamp_(-MAIN_BOUND, MAIN_BOUND)

    def _unit_reverse(self, name: str, z: torch.Tensor) -> torch.Tensor:
        c = z.shape[1] // 2
        z1, z2 = z[:, :c], z[:, c:]
        L = self.layers
        h = L[f"{name}.conv2"](L[f"{name}.conv1"](from_main(z1, L[f"{name}.conv1"])))
        zc = L[f"{name}.shift"]
        if f"{name}.skip" in L:
            h += L[f"{name}.skip"](from_main(z1, L[f"{name}.skip"]))
        else:
            h += from_main(z1, zc)
        h.clamp_(-zc.in_bound, zc.in_bound)
        if self.config.flow_coupling == "affine":
            mul = L[f"{name}.exp"](L[f"{name}.scale"](h.clone())).double()  # MUL_FRAC (layers may reuse their input)
            z2 = rescale(z2 * mul, MUL_FRAC, MAIN_BOUND)
        shift = to_main(zc(h), zc.frac_out)
        z2 = (z2 - shift).clamp_(-MAIN_BOUND, MAIN_BOUND)
        return L[f"{name}.mix"](torch.cat((z1, z2), dim=1))

    def _grow_support(self, level: Level, y_hat: torch.Tensor, support: torch.Tensor | None) -> torch.Tensor:
        if level.stage is None:
            return y_hat
        h = torch.cat((y_hat, support), dim=1)
        for u in reversed(range(self.config.depths[level.stage])):
            h = self._unit_reverse(f"g{level.stage}.{u}", h)
        return depth_to_space(h)

    def _finish(self, support: torch.Tensor) -> torch.Tensor:
        if self.config.post_process:
            from .postnet import post_process

            support = post_process(self, support)
        return support

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Main-path image codes -> HxWx3 uint8: clamp(floor(x * 255 + 1/2), 0, 255)."""
        px = rescale(x[0] * 255.0, MAIN_FRAC, 1 << 40).clamp_(0, 255)
        return px.to(torch.uint8).permute(1, 2, 0).cpu().numpy()

    # ------------------------------------------------------------------ coding
    @torch.inference_mode()
    def encode_latents(
        self, latents: list[torch.Tensor], qp: int | float, keep_state: bool = False, code: bool = True
    ) -> EncodedLatents:
        if latents[0].shape[0] != 1:
            raise ValueError("coding works on one image at a time (batch size 1)")
        gains = self._gains(qp)
        float_gains = self.float_model._gains(qp)
        tables = self.tables()
        support = None
        symbols: list[np.ndarray] = []
        indexes: list[np.ndarray] = []
        level_symbols: list[np.ndarray] = []
        y_hat = None
        for level, y in zip(LEVELS, latents):
            ig, sg = gains[level.index]
            g = float_gains[level.index][0].double()
            y = y.double()
            h, w = y.shape[2], y.shape[3]
            cc = self._channel_context(level, support, h, w)
            anchor = _anchor_mask(h, w, level.phase, y.device)
            s1, m1 = self._params(level.index, cc, torch.zeros_like(cc))
            q1 = self._quantise(y, m1, self.mean_fracs[level.index], g)
            y_hat1 = self._y_hat(level.index, q1, ig, m1)
            idx1 = self._index(level.index, s1, sg)
            half = y_hat1.masked_fill(~anchor, 0.0)
            s2, m2 = self._params(level.index, cc, self._spatial_context(level, half, anchor))
            q2 = self._quantise(y, m2, self.mean_fracs[level.index], g)
            idx2 = self._index(level.index, s2, sg)
            sym_a = _split_phases(q1, level.phase)[0]
            sym_n = _split_phases(q2, level.phase)[1]
            lvl = torch.cat((sym_a.reshape(-1), sym_n.reshape(-1))).to(torch.int32).cpu().numpy()
            level_symbols.append(lvl)
            symbols.append(lvl)
            indexes.append(_split_phases(idx1, level.phase)[0].reshape(-1).cpu().numpy())
            indexes.append(_split_phases(idx2, level.phase)[1].reshape(-1).cpu().numpy())
            y_hat = torch.where(anchor, y_hat1, self._y_hat(level.index, q2, ig, m2))
            if level.index == len(LEVELS) - 1:
                break  # the finest level's reconstruction is not needed to encode
            y_hat = self._lrp(level, y_hat, support, ig)
            support = self._grow_support(level, y_hat, support)
        finish = None
        if keep_state:
            last, last_support, last_ig = LEVELS[-1], support, gains[-1][0]

            def finish() -> torch.Tensor:
                with torch.inference_mode():
                    y = self._lrp(last, y_hat, last_support, last_ig)
                    return self._finish(self._grow_support(last, y, last_support))

        hw = (int(latents[0].shape[2]), int(latents[0].shape[3]))
        enc = EncodedLatents(hw, level_symbols, np.concatenate(symbols), np.concatenate(indexes), tables, finish)
        if code:
            enc.data  # noqa: B018 -- code now, on the caller's thread
        return enc

    @staticmethod
    def _quantise(y: torch.Tensor, mean_codes: torch.Tensor, frac: int, g: torch.Tensor) -> torch.Tensor:
        """Encoder only: round((y - mean) * gain), clamped to the symbol range (float is fine here)."""
        mean = mean_codes.double() * pow2(-frac)
        return torch.round((y - mean) * g).clamp_(-SYMBOL_BOUND, SYMBOL_BOUND)

    @torch.inference_mode()
    def decode_latents(
        self,
        data: bytes,
        latent_shape: Sequence[int],
        qp: int | float,
        level_check: LevelCheck | None = None,
    ) -> torch.Tensor:
        """Decode a rANS stream to main-path image codes (see :meth:`to_uint8`)."""
        h0, w0, decoder = open_stream(self.tables(), data, latent_shape)
        gains = self._gains(qp)
        device = self.device
        support = None
        for level in LEVELS:
            ig, sg = gains[level.index]
            scale = 2 ** max(level.index - 1, 0)
            h, w = h0 * scale, w0 * scale
            cc = self._channel_context(level, support, h, w)
            anchor = _anchor_mask(h, w, level.phase, device)
            s1, m1 = self._params(level.index, cc, torch.zeros_like(cc))
            idx_a = _split_phases(self._index(level.index, s1, sg), level.phase)[0]
            sym_a = decoder.decode(idx_a.reshape(-1).cpu().numpy())
            qa = _symbols(sym_a, idx_a.shape, device)
            y_hat1 = self._y_hat(level.index, _merge_phases(qa, torch.zeros_like(qa), level.phase), ig, m1)
            half = y_hat1.masked_fill(~anchor, 0.0)
            s2, m2 = self._params(level.index, cc, self._spatial_context(level, half, anchor))
            idx_n = _split_phases(self._index(level.index, s2, sg), level.phase)[1]
            sym_n = decoder.decode(idx_n.reshape(-1).cpu().numpy())
            if level_check is not None:
                level_check(level.index, np.concatenate((sym_a, sym_n)))
            qn = _symbols(sym_n, idx_n.shape, device)
            y_n = self._y_hat(level.index, _merge_phases(torch.zeros_like(qn), qn, level.phase), ig, m2)
            y_hat = torch.where(anchor, y_hat1, y_n)
            y_hat = self._lrp(level, y_hat, support, ig)
            support = self._grow_support(level, y_hat, support)
        return self._finish(support)

    # ------------------------------------------------------------------ proof of exactness
    def check_bounds(self) -> None:
        """Prove that no operation of the integer path can leave its carrier's exact range.

        Checks every layer's worst case, that each producer's output bound fits
        its consumer's input bound, and the elementwise steps' worst cases.
        Raises :class:`BoundError` naming the first violation.
        """
        L = self.layers
        for name, layer in L.items():
            layer.check(name)
        cfg = self.config

        def feeds(src_bound: int, dst: QConv | Lut, what: str) -> None:
            if src_bound > dst.in_bound:
                raise BoundError(f"{what}: output bound {src_bound} exceeds the consumer's input bound {dst.in_bound}")

        def same_format(a: QConv, frac: int, what: str) -> None:
            if a.frac_out != frac:
                raise BoundError(f"{what}: format mismatch ({a.frac_out} vs {frac})")

        def chain(prefix: str, final: QConv | Lut | None) -> None:
            n = self._n_convs(prefix)
            for j in range(n - 1):
                conv, act, nxt = L[f"{prefix}.conv{j}"], L[f"{prefix}.act{j}"], L[f"{prefix}.conv{j + 1}"]
                feeds(conv.out_bound, act, f"{prefix}.conv{j}")
                feeds(act.out_bound, nxt, f"{prefix}.act{j}")
                if self.spec["layers"][f"{prefix}.act{j}"]["frac_out"] != nxt.frac_in:
                    raise BoundError(f"{prefix}.act{j}: output format differs from the next layer's input")
                if self.spec["layers"][f"{prefix}.act{j}"]["frac_in"] != conv.frac_out:
                    raise BoundError(f"{prefix}.act{j}: input format differs from the previous layer's output")
            last = L[f"{prefix}.conv{n - 1}"]
            if isinstance(final, QConv):
                feeds(last.out_bound, final, f"{prefix}.conv{n - 1}")
                same_format(last, final.frac_in, f"{prefix}.conv{n - 1}")
            elif isinstance(final, Lut):
                feeds(last.out_bound, final, f"{prefix}.conv{n - 1}")

        max_ig = max_sg = 0
        for key, which in (("log_inv_gain", "ig"), ("log_scale_gain", "sg")):
            top = int(self.tensors[key].max())
            v = int(exp2_fixed(np.array([top]), self.tensors["exp2"].numpy().astype(np.int64), GAIN_FRAC)[0])
            if which == "ig":
                max_ig = v
            else:
                max_sg = v
        for i in range(len(LEVELS)):
            ep0 = L[f"ep{i}.conv0"]
            if i > 0:
                chain(f"cc{i}", ep0)
            chain(f"sc{i}", ep0)
            if cfg.lrp:
                chain(f"lrp{i}", L[f"lrp{i}.tanh"])
                if L[f"lrp{i}.tanh"].out_bound > 1 << TANH_FRAC:
                    raise BoundError(f"lrp{i}.tanh: values beyond 1")
            feeds(L[f"ep{i}.conv0"].out_bound, L[f"ep{i}.act0"], f"ep{i}.conv0")
            feeds(L[f"ep{i}.act0"].out_bound, L[f"ep{i}.conv1"], f"ep{i}.act0")
            feeds(L[f"ep{i}.conv1"].out_bound, L[f"ep{i}.act1"], f"ep{i}.conv1")
            feeds(L[f"ep{i}.act1"].out_bound, L[f"ep{i}.scale"], f"ep{i}.act1")
            feeds(L[f"ep{i}.act1"].out_bound, L[f"ep{i}.mean"], f"ep{i}.act1")
            if i == 0 and int(self.tensors["initial_scale_codes"].abs().max()) > ep0.in_bound:
                raise BoundError("initial scale codes exceed the entropy parameters' input bound")
            # scale index: codes * scale gain, and threshold scaling, in float64
            if L[f"ep{i}.scale"].out_bound * max_sg > F64_EXACT:
                raise BoundError(f"ep{i}.scale: scale times gain exceeds 2**53")
        # y_hat = q * ig + mean (both clamped to MAIN_BOUND first)
        if SYMBOL_BOUND * max_ig + MAIN_BOUND > F64_EXACT:
            raise BoundError("symbol times inverse gain exceeds 2**53")
        # 0.5 * tanh * ig, rounded
        if (1 << TANH_FRAC) * max_ig + (1 << (TANH_FRAC + GAIN_FRAC)) > F64_EXACT:
            raise BoundError("residual prediction product exceeds 2**53")
        # image to pixels
        if MAIN_BOUND * 255 + (1 << MAIN_FRAC) > F64_EXACT:
            raise BoundError("pixel conversion exceeds 2**53")
        for s in range(4):
            for u in range(cfg.depths[s]):
                n = f"g{s}.{u}"
                c1, c2, sh = L[f"{n}.conv1"], L[f"{n}.conv2"], L[f"{n}.shift"]
                feeds(c1.out_bound, c2, f"{n}.conv1")
                same_format(c1, c2.frac_in, f"{n}.conv1")
                same_format(c2, sh.frac_in, f"{n}.conv2")
                if c1.act != "leaky" or c2.act != "leaky":
                    raise BoundError(f"{n}: the residual block's convolutions end in LeakyReLU")
                skip = L.get(f"{n}.skip")
                other = skip.out_bound if skip is not None else sh.in_bound
                if skip is not None:
                    same_format(skip, sh.frac_in, f"{n}.skip")
                if c2.out_bound + other > F32_EXACT:
                    raise BoundError(f"{n}: residual sum exceeds 2**24")
                if cfg.flow_coupling == "affine":
                    sc, ex = L[f"{n}.scale"], L[f"{n}.exp"]
                    same_format(sc, self.spec["layers"][f"{n}.exp"]["frac_in"], f"{n}.scale")
                    feeds(sc.out_bound, ex, f"{n}.scale")
                    if MAIN_BOUND * ex.out_bound + (1 << MUL_FRAC) > F64_EXACT:
                        raise BoundError(f"{n}: coupling product exceeds 2**53")
                mix = L[f"{n}.mix"]
                if mix.in_bound < MAIN_BOUND or mix.out_bound > MAIN_BOUND:
                    raise BoundError(f"{n}.mix: must map the main range into itself")
        if cfg.post_process:
            from .postnet import check_post_bounds

            check_post_bounds(self)


def _symbols(sym: np.ndarray, shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Decoded symbols as float64, clamped like the encoder's (a corrupt stream cannot overflow)."""
    t = torch.from_numpy(sym.astype(np.float64)).to(device).view(shape)
    return t.clamp_(-SYMBOL_BOUND, SYMBOL_BOUND)


def portable_hash(
    config: MSINNConfig, spec: dict, tensors: dict[str, torch.Tensor], float_tensors: dict[str, torch.Tensor]
) -> str:
    """SHA-256 of everything that defines the model: config, formats, every tensor."""
    h = hashlib.sha256()
    h.update(PROFILE.encode())
    h.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    h.update(json.dumps(spec, sort_keys=True).encode())
    for group in (tensors, float_tensors):
        for k in sorted(group):
            t = group[k].detach().cpu().contiguous()
            h.update(k.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()

