"""The integer decoder's arithmetic on tensors: one method per kind of step.

The decoder's code (:mod:`msinn.portable.decoder`, :mod:`msinn.portable.postnet`)
is written once against this small vocabulary and runs with two arithmetics:
:class:`TensorOps` here computes, :class:`msinn.portable.proof.BoundOps`
follows the same calls with each value's bound, format and carrier and
refuses any step that could leave its carrier's exact range. So the proof is
of the code that runs, not of a description of it.

Formats are passed where the code relies on them (``frac_in`` of a rescale,
the format a layer's output is read in); :class:`TensorOps` needs only the
shift, the proof checks that the value really is in that format.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .exact import Layer, rescale
from .formats import LEAKY_NUM, LEAKY_SHIFT, MAIN_BOUND, MAIN_FRAC


class TensorOps:
    """Steps on integer-valued tensors (float32 codes for convolutions, float64 on the main path)."""

    @staticmethod
    def layer(name: str, layer: Layer, x: torch.Tensor) -> torch.Tensor:
        """Run one integer layer (it may reuse ``x``'s memory)."""
        return layer(x)

    @staticmethod
    def from_main(x: torch.Tensor, name: str, layer: Layer) -> torch.Tensor:
        """Main-path codes -> the float32 input codes of ``layer``, clamped to its input bound."""
        return rescale(x, MAIN_FRAC - layer.frac_in, layer.in_bound).float()

    @staticmethod
    def to_main(x: torch.Tensor, frac: int) -> torch.Tensor:
        """float32 codes in format ``frac`` -> float64 main-path codes."""
        return rescale(x.double(), frac - MAIN_FRAC, MAIN_BOUND)

    @staticmethod
    def rescale(x: torch.Tensor, frac_in: int, frac_out: int, bound: int, log2_gain: int = 0) -> torch.Tensor:
        """``x * 2**log2_gain`` from format ``frac_in`` to ``frac_out``, rounded half up and clamped."""
        return rescale(x, frac_in - frac_out - log2_gain, bound)

    @staticmethod
    def to_f64(x: torch.Tensor) -> torch.Tensor:
        return x.double()

    @staticmethod
    def to_f32(x: torch.Tensor) -> torch.Tensor:
        return x.float()

    @staticmethod
    def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b

    @staticmethod
    def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b

    @staticmethod
    def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a * b

    @staticmethod
    def times(x: torch.Tensor, k: int) -> torch.Tensor:
        """``x`` times the integer ``k``."""
        return x * float(k)

    @staticmethod
    def clamp(x: torch.Tensor, bound: int) -> torch.Tensor:
        """Clamp to ``+-bound`` in place (``x`` is a temporary)."""
        return x.clamp_(-bound, bound)

    @staticmethod
    def relu(x: torch.Tensor) -> torch.Tensor:
        return x.clamp_min(0)

    @staticmethod
    def leaky(x: torch.Tensor) -> torch.Tensor:
        """LeakyReLU with slope 41/4096: ``max(x, floor(x * 41 / 4096))``."""
        return torch.maximum(x, (x * (LEAKY_NUM * 2.0**-LEAKY_SHIFT)).floor_())

    @staticmethod
    def copy(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def cat(*xs: torch.Tensor) -> torch.Tensor:
        return torch.cat(xs, dim=1)

    @staticmethod
    def halves(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = x.shape[1] // 2
        return x[:, :c], x[:, c:]

    @staticmethod
    def rearrange(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        """A step that only moves or selects values (pooling by max, pixel shuffle, depth to space)."""
        return fn(x)

    @staticmethod
    def where(mask: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(mask, a, b)

    @staticmethod
    def zero_where(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``x`` with zeros where ``mask`` holds (in place)."""
        return x.masked_fill_(mask, 0.0)

    @staticmethod
    def zeros_like(x: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)

    @staticmethod
    def spatial_mean(x: torch.Tensor) -> torch.Tensor:
        """Mean over the image, rounded half up, of float64 main codes.

        Summed in int64, whose wrap-around (only reachable by a hostile file)
        is the same in any order; the clamp keeps what follows within bounds.
        """
        n = x.shape[2] * x.shape[3]
        total = x.to(torch.int64).sum(dim=(2, 3), keepdim=True)
        mean = torch.div(2 * total + n, 2 * n, rounding_mode="floor")
        return mean.clamp_(-MAIN_BOUND, MAIN_BOUND).double()

    @staticmethod
    def constant(codes: torch.Tensor, frac: int, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Per-channel constant codes (format ``frac``) spread over h x w, float32."""
        c = codes.numel()
        return codes.to(device, torch.float32).view(1, c, 1, 1).expand(1, c, h, w)

    @staticmethod
    def index(
        thresholds: Callable[[torch.device], torch.Tensor], scale: torch.Tensor, frac: int, gain: torch.Tensor
    ) -> torch.Tensor:
        """Scale-table index: how many thresholds lie below ``scale * gain`` (float64; ``scale`` in ``frac``)."""
        v = scale.double() * gain
        return torch.searchsorted(thresholds(scale.device), v.contiguous(), right=False).to(torch.int32)
