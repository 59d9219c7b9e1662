"""Thin layer over CompressAI's rANS coder.

The CDF tables are converted to Python lists once per model (the reference
converts them on every call), and symbols travel as NumPy arrays until the
single conversion that the C++ binding needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compressai_parts import GaussianConditional, RansDecoder, RansEncoder


class EntropyDecodeError(ValueError):
    """The rANS stream could not be decoded (truncated or corrupt)."""


@dataclass(frozen=True)
class RansTables:
    cdfs: list[list[int]]
    cdf_lengths: list[int]
    offsets: list[int]

    @classmethod
    def from_gaussian_conditional(cls, gc: GaussianConditional) -> RansTables:
        return cls(
            cdfs=gc.quantized_cdf.tolist(),
            cdf_lengths=gc.cdf_length.reshape(-1).int().tolist(),
            offsets=gc.offset.reshape(-1).int().tolist(),
        )

    def encode(self, symbols: np.ndarray, indexes: np.ndarray) -> bytes:
        """One rANS stream for all symbols, each coded with the CDF its index names."""
        if symbols.shape != indexes.shape:
            raise ValueError("symbols and indexes differ in length")
        return RansEncoder().encode_with_indexes(
            symbols.astype(np.int32, copy=False).tolist(),
            indexes.astype(np.int32, copy=False).tolist(),
            self.cdfs,
            self.cdf_lengths,
            self.offsets,
        )

    def code_length(self, symbols: np.ndarray, indexes: np.ndarray) -> int:
        """Bytes that :meth:`encode` will produce, from the quantised CDFs, without coding.

        The rANS coder spends -log2(freq / 2^16) bits per symbol, 4 bits per
        escape (bypass) symbol, and flushes a 32-bit state; its stream is whole
        32-bit words. This sum ignores only renormalisation slack, a few bytes
        at most, which is why callers that must not exceed a size confirm the
        final size with the real coder.
        """
        cdf, lengths, offsets = self._arrays()
        idx = indexes.astype(np.int64, copy=False)
        max_value = lengths[idx] - 2
        value = symbols.astype(np.int64, copy=False) - offsets[idx]
        escaped = (value < 0) | (value >= max_value)
        coded = np.where(escaped, max_value, value)  # an escape codes the last symbol, then bypass bits
        freq = cdf[idx, coded + 1] - cdf[idx, coded]
        bits = 16.0 * len(idx) - float(np.log2(freq).sum())
        if escaped.any():
            v, m = value[escaped], max_value[escaped]
            raw = np.where(v < 0, -2 * v - 1, 2 * (v - m))
            n_bypass = (np.floor(np.log2(np.maximum(raw, 1))).astype(np.int64) // 4 + 1) * (raw > 0)
            bits += 4.0 * float((n_bypass // 15 + 1 + n_bypass).sum())
        return 4 * (int(np.ceil(bits / 32)) + 1)

    def _arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not hasattr(self, "_np"):
            width = max(self.cdf_lengths)
            cdf = np.zeros((len(self.cdfs), width), dtype=np.int64)
            for i, row in enumerate(self.cdfs):
                cdf[i, : len(row)] = row
            lengths = np.asarray(self.cdf_lengths, dtype=np.int64)
            object.__setattr__(self, "_np", (cdf, lengths, np.asarray(self.offsets, dtype=np.int64)))
        return self._np

    def min_bits_per_symbol(self) -> float:
        """The fewest bits any symbol can cost: -log2 of the largest frequency in any table."""
        if not hasattr(self, "_min_bits"):
            cdf, lengths, _ = self._arrays()
            top = max(int(np.diff(cdf[i, : lengths[i]]).max()) for i in range(len(lengths)))
            object.__setattr__(self, "_min_bits", float(-np.log2(top / 65536.0)))
        return self._min_bits

    def decoder(self, data: bytes, max_symbols: int = 0) -> StreamDecoder:
        return StreamDecoder(self, data, max_symbols)


class StreamDecoder:
    """Decodes a rANS stream piece by piece, as the context model supplies indexes."""

    def __init__(self, tables: RansTables, data: bytes, max_symbols: int = 0):
        if len(data) < 4 or len(data) % 4:
            raise EntropyDecodeError(f"rANS stream of {len(data)} bytes is not a whole number of 32-bit words")
        self._tables = tables
        # CompressAI's decoder does not check the end of its buffer. A stream decoded
        # with the wrong probabilities (drifted decoder, undetected corruption) would
        # read past it, so zeros follow the data: at most one word per symbol for the
        # rANS state, two for the escape code, and the escape lengths that the data
        # itself can announce (15 per 4 bits read).
        pad = 12 * max_symbols + 16 * len(data) + 64
        self._data = bytes(data) + bytes(pad)  # kept alive for the C++ decoder
        self._dec = RansDecoder()
        self._dec.set_stream(self._data)

    def decode(self, indexes: np.ndarray) -> np.ndarray:
        t = self._tables
        out = self._dec.decode_stream(indexes.astype(np.int32, copy=False).tolist(), t.cdfs, t.cdf_lengths, t.offsets)
        return np.asarray(out, dtype=np.int32)
