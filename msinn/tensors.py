"""8-bit HxWx3 arrays to the network's 1x3xHxW float tensors and back, written once.

The conversions decide what the decoder reconstructs (rounding) and what
padding costs (replicated edges), so the codec, ``msinn eval``, the model and
the portable converter must all use the same ones.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

PAD_MULTIPLE = 64  # the transform codes image sides that are multiples of 64


def to_padded_tensor(rgb: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xH'xW' float in [0, 1], H' and W' the next multiples of 64.

    The last row and column are replicated: cheaper to code than zeros, and
    cropped away on decode.
    """
    h, w = rgb.shape[:2]
    x = torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).to(device).permute(2, 0, 1).float().div(255)[None]
    ph, pw = (-h) % PAD_MULTIPLE, (-w) % PAD_MULTIPLE
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """A decoded 1x3xHxW float image -> HxWx3 uint8 (clamped to [0, 1], times 255, rounded), as the decoder does."""
    return (x[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
