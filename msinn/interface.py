"""What the codec asks of a model: the interface both coding profiles implement.

:class:`msinn.model.MSINN` (``float32``) and
:class:`msinn.portable.model.PortableMSINN` (``portable-1``) are unrelated
classes (one a torch module, the other an integer decoder beside a float twin);
the codec, the per-image choice, refinement, rate control, evaluation and the
pipeline use a model only through the names declared here, so one code path
serves both. ``isinstance(m, CodecModel)`` checks that every name is present.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from .entropy import RansTables
    from .model import MSINN, EncodedLatents, LevelCheck


@runtime_checkable
class CodecModel(Protocol):
    """A model the codec can code with (see the module docstring)."""

    profile: str  # the coding profile files record: "float32" or "portable-1"
    anchor_num: int  # rate anchors: qp runs over [0, anchor_num - 1]
    model_name: str | None  # registry or file name, set by the loader; None for a model built in code

    @property
    def device(self) -> torch.device:
        """Where the model runs."""

    @property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights: every file records its prefix, and a decoder must hold the same weights."""

    @property
    def float_model(self) -> MSINN:
        """The float model gradients flow through (refinement): the model itself, or a portable model's twin."""

    def analyze(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The analysis transform: a padded 1x3xHxW image in [0, 1] to five latents, coarsest first."""

    def estimate_bits(
        self, latents: list[torch.Tensor], qp: int | float, reconstruct: bool = False
    ) -> tuple[float, torch.Tensor | None]:
        """Estimated bits of coding ``latents`` at ``qp`` (rate control's cheap probe), and the reconstruction."""

    def check_qp(self, qp: int | float) -> None:
        """Raise ValueError (TypeError for a bool) unless ``qp`` is a rate this model codes."""

    def snap_qp(self, qp: int | float) -> int | float:
        """``qp`` as it will be coded (the portable profile codes multiples of 2**-16)."""

    def update(self, scale_table: torch.Tensor | None = None, force: bool = True) -> bool:
        """Build the entropy tables if the model needs them (a portable model ships with its own)."""

    def tables(self) -> RansTables:
        """The entropy coder's CDF tables."""

    def encode_latents(
        self, latents: list[torch.Tensor], qp: int | float, keep_state: bool = False, code: bool = True
    ) -> EncodedLatents:
        """Quantise and entropy-code the latents at ``qp`` (the stream lazily when ``code`` is false)."""

    def decode_latents(
        self, data: bytes, latent_shape: Sequence[int], qp: int | float, level_check: LevelCheck | None = None
    ) -> torch.Tensor:
        """A stream back to the decoder's image (``to_uint8`` makes it pixels); ``level_check`` may veto a level."""

    def to_uint8(self, x: torch.Tensor) -> np.ndarray:
        """A decoded image to HxWx3 uint8, rounded the profile's way."""
