"""Image quality metrics, written once for the codec, training, ``msinn eval`` and the pipeline.

PSNR and MS-SSIM are taken on 8-bit images, as a user of the codec sees
them, so every number the project reports is comparable. Only NumPy is
imported here; MS-SSIM loads torch and pytorch_msssim when first called.
"""

from __future__ import annotations

import math

import numpy as np

MS_SSIM_MIN_SIDE = 161  # pytorch_msssim needs the smaller side > (win_size - 1) * 2**4 = 160


def psnr_from_mse(mse: float, peak: float = 1.0) -> float:
    """PSNR in dB of a mean squared error on a ``[0, peak]`` scale (inf when the MSE is 0)."""
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def psnr_uint8(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB between two 8-bit images (or stacks of them) of one shape, over all samples."""
    return psnr_from_mse(float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)), 255.0)


def ms_ssim_uint8(a: np.ndarray, b: np.ndarray) -> float | None:
    """MS-SSIM of two HxWxC (C >= 3) 8-bit images on their RGB channels, scaled to [0, 1].

    None when the smaller side is too short for the five scales of
    pytorch_msssim's default window. Symmetric in ``a`` and ``b``.
    """
    if min(a.shape[0], a.shape[1]) < MS_SSIM_MIN_SIDE:
        return None
    import torch
    from pytorch_msssim import ms_ssim

    def t(x: np.ndarray) -> torch.Tensor:  # a writable copy: torch refuses to share read-only arrays
        return torch.from_numpy(np.array(x[:, :, :3], dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).float() / 255.0

    with torch.inference_mode():
        return float(ms_ssim(t(a), t(b), data_range=1.0, size_average=True))
