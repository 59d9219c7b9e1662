"""The portable MS-INN model: what ``msinn.load`` returns for a ``msinn-portable`` file.

:class:`PortableMSINN` puts together the pieces of the profile: the integer
decoder (:mod:`msinn.portable.decoder`), which everything a decoder recomputes
runs on; the exactness proof (:mod:`msinn.portable.proof`), run before any
other use so that a file that fails it is refused; the float twin
(:mod:`msinn.portable.twin`), on which the encoder's analysis and rate
estimates run; and the weights hash (:mod:`msinn.portable.identity`). It has
the coding interface of :class:`msinn.model.MSINN`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..config import MSINNConfig
from ..entropy import RansTables
from ..model import MSINN, EncodedLatents, LevelCheck
from .decoder import IntegerDecoder, snap_qp
from .exact import Layer
from .formats import FORMAT, FORMAT_VERSION, PROFILE
from .identity import portable_hash
from .proof import check_tables, prove
from .twin import float_twin


class PortableMSINN:
    """MS-INN with an integer decoder path; same coding interface as :class:`MSINN`.

    Built by :func:`msinn.portable.convert.convert` from a float model, or by
    :func:`msinn.checkpoint.load_portable` from a ``msinn-portable`` file. The
    constructor proves exactness first and raises
    :class:`~msinn.portable.exact.BoundError` if the proof fails.

    ``float_model`` is the float twin: a float :class:`MSINN` (eval mode)
    whose weights are this model's integer weights dequantised. The encoder's
    analysis runs on it; use it for anything that needs gradients.
    """

    profile = PROFILE
    model_name: str | None = None  # the registry or file name a loader gives it
    weights_sha256: str  # portable_hash of profile, config, formats and tensors: fixed, the model never changes

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
        check_tables(config, tensors)
        self.decoder = IntegerDecoder(config, spec, tensors)
        prove(self.decoder)
        self.device = torch.device("cpu")
        self._float_model: MSINN | None = None  # built on first use: decoding never needs it
        self._twin_lock = threading.Lock()
        self.weights_sha256 = portable_hash(config, spec, tensors, float_tensors)

    @property
    def layers(self) -> dict[str, Layer]:
        """The integer layers by name (formats, bounds, weights)."""
        return self.decoder.layers

    # ------------------------------------------------------------------ identity and state
    def state(self) -> dict[str, Any]:
        """What a model file holds (:func:`msinn.checkpoint.save_portable` writes it)."""
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
        if self._float_model is not None:
            self._float_model.to(self.device)
        self.decoder.to(self.device)
        return self

    def eval(self) -> PortableMSINN:
        return self

    def check_bounds(self) -> None:
        """Prove again that decoding is exact (the constructor already did; raises ``BoundError``)."""
        check_tables(self.config, self.tensors)
        prove(self.decoder)

    # ------------------------------------------------------------------ float side (encoder only)
    @property
    def float_model(self) -> MSINN:
        """The encoder's float twin, built the first time the encoder needs it (a decoder never does)."""
        with self._twin_lock:  # a read-ahead thread and the encoder may ask at once: one twin
            if self._float_model is None:
                self._float_model = self.float_twin()
            return self._float_model

    def float_twin(self) -> MSINN:
        """A new float twin on this model's device: the same weights as ``float_model``, yours to change
        (``float_model`` is the encoder's own; leave its weights and mode alone)."""
        with torch.inference_mode(False):  # asked for inside a coding call, it must still be an ordinary model
            twin = float_twin(self.config, self.spec, self.layers, self.float_tensors, self.tensors["scale_table"])
            return twin.to(self.device)

    def analyze(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.float_model.analyze(x)

    def estimate_bits(self, latents: list[torch.Tensor], qp: int | float, reconstruct: bool = False):
        return self.float_model.estimate_bits(latents, qp, reconstruct)

    # ------------------------------------------------------------------ rate parameter
    def check_qp(self, qp: int | float) -> None:
        MSINN.check_qp(self, qp)  # the float model's rule: it reads only anchor_num, so no twin is built for it

    def snap_qp(self, qp: int | float) -> int | float:
        """The nearest rate parameter this profile can code (a multiple of 2**-16)."""
        self.check_qp(qp)
        return snap_qp(qp)

    # ------------------------------------------------------------------ coding
    def tables(self) -> RansTables:
        return self.decoder.tables()

    def update(self, *args: Any, **kwargs: Any) -> bool:
        """Entropy tables ship with the model; nothing to rebuild."""
        return True

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """Main-path image codes -> HxWx3 uint8: clamp(floor(x * 255 + 1/2), 0, 255)."""
        return self.decoder.to_uint8(x)

    @torch.inference_mode()
    def encode_latents(
        self, latents: list[torch.Tensor], qp: int | float, keep_state: bool = False, code: bool = True
    ) -> EncodedLatents:
        self.check_qp(qp)
        return self.decoder.encode_latents(latents, qp, self.float_model.gains(qp), keep_state, code)

    # Same signature as MSINN.decode_latents on purpose: both implement CodecModel's (msinn/interface.py).
    @torch.inference_mode()
    def decode_latents(
        self,
        data: bytes,
        latent_shape: Sequence[int],
        qp: int | float,
        level_check: LevelCheck | None = None,
    ) -> torch.Tensor:
        """Decode a rANS stream to main-path image codes (see :meth:`to_uint8`)."""
        self.check_qp(qp)
        return self.decoder.decode_latents(data, latent_shape, qp, level_check)
