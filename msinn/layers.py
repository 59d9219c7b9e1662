"""Invertible building blocks of the MS-INN analysis/synthesis transform.

Parameter and buffer names follow the published checkpoints exactly, so a
state dict written by the reference implementation loads with no renaming.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .compressai_parts import ResidualBlock


def space_to_depth(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Fold r x r pixel blocks into channels, sub-position major: channel = (dy * r + dx) * C + c."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // r, r, w // r, r).permute(0, 3, 5, 1, 2, 4)
    return x.contiguous().view(b, c * r * r, h // r, w // r)


def depth_to_space(x: torch.Tensor, r: int = 2) -> torch.Tensor:
    """Exact inverse of :func:`space_to_depth`."""
    b, c, h, w = x.shape
    oc = c // (r * r)
    x = x.view(b, r, r, oc, h, w).permute(0, 3, 4, 1, 5, 2)
    return x.contiguous().view(b, oc, h * r, w * r)


class ActNorm2d(nn.Module):
    """Per-channel affine normalisation, initialised from the first training batch."""

    def __init__(self, num_features: int, scale: float = 1.0):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.logs = nn.Parameter(torch.zeros(1, num_features, 1, 1))
        self.scale = scale
        self.register_buffer("inited", torch.tensor(0, dtype=torch.uint8))

    @torch.no_grad()
    def _initialize(self, x: torch.Tensor) -> None:
        if not self.training:
            raise RuntimeError("ActNorm2d used in eval mode before initialisation (untrained weights?)")
        bias = -x.mean(dim=(0, 2, 3), keepdim=True)
        std = ((x + bias) ** 2).mean(dim=(0, 2, 3), keepdim=True).sqrt()
        self.bias.copy_(bias)
        self.logs.copy_(torch.log(self.scale / (std + 1e-6)))
        self.inited.fill_(1)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        if not self.inited:
            self._initialize(x)
        if reverse:
            return x * torch.exp(-self.logs) - self.bias
        return (x + self.bias) * torch.exp(self.logs)


class InvertibleConv1x1(nn.Module):
    """Glow's invertible 1x1 convolution.

    The reverse pass needs the matrix inverse; in eval mode it is computed once
    and reused until the weight changes (the reference inverts on every call).
    """

    def __init__(self, num_channels: int):
        super().__init__()
        w = torch.linalg.qr(torch.randn(num_channels, num_channels))[0]
        self.weight = nn.Parameter(w)
        self._inverse: torch.Tensor | None = None
        self._inverse_key: tuple | None = None

    def _inverse_weight(self) -> torch.Tensor:
        w = self.weight
        if self.training or torch.is_grad_enabled():
            return torch.inverse(w)
        key = (w.data_ptr(), w._version, w.device, w.dtype)
        if self._inverse is None or self._inverse_key != key:
            self._inverse = torch.inverse(w.detach())
            self._inverse_key = key
        return self._inverse

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        c = self.weight.shape[0]
        w = self._inverse_weight() if reverse else self.weight
        return F.conv2d(x, w.view(c, c, 1, 1))


class ChannelShuffle(nn.Module):
    """Fixed channel permutation ('shuffle', 'reverse' or 'cross' in the reference)."""

    def __init__(self, num_channels: int, kind: str):
        super().__init__()
        if kind == "shuffle":
            idx = torch.randperm(num_channels)
            self.register_buffer("indices", idx)
            self.register_buffer("indices_inverse", torch.argsort(idx))
            return
        if kind == "reverse":
            idx = torch.arange(num_channels - 1, -1, -1)
        elif kind == "cross":
            base = torch.arange(num_channels)
            idx = torch.empty_like(base)
            idx[0::2], idx[1::2] = base[: num_channels // 2], base[num_channels // 2 :]
        else:
            raise ValueError(f"unknown flow permutation {kind!r}")
        # not buffers: the reference keeps them out of the state dict
        self.indices = idx
        self.indices_inverse = torch.argsort(idx)

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        idx = self.indices_inverse if reverse else self.indices
        return x[:, idx.to(x.device)]


class ZeroConv2d(nn.Module):
    """1x1 convolution that starts at zero, so each coupling starts as the identity."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class InvUnit(nn.Module):
    """Act-norm, channel mixing and a coupling layer: one invertible step."""

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        permutation: str = "invconv",
        coupling: str = "affine",
        act_norm: bool = True,
    ):
        super().__init__()
        if in_channels % 2:
            raise ValueError("an invertible unit needs an even number of channels")
        if coupling not in ("affine", "additive"):
            raise ValueError(f"unknown flow coupling {coupling!r}")
        self.coupling = coupling
        self.use_act_norm = act_norm
        if act_norm:
            self.actnorm = ActNorm2d(in_channels)
        if permutation == "invconv":
            self.permute = InvertibleConv1x1(in_channels)
        else:
            self.permute = ChannelShuffle(in_channels, permutation)
        out = in_channels if coupling == "affine" else in_channels // 2
        self.block = nn.Sequential(
            ResidualBlock(in_ch=in_channels // 2, out_ch=hidden_channels),
            ZeroConv2d(hidden_channels, out),
        )

    def _scale_shift(self, z1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale, shift = torch.chunk(self.block(z1), 2, dim=1)
        return torch.exp(torch.sigmoid(scale) * 2 - 1), shift

    def forward(self, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        if reverse:
            return self._reverse(x)
        if self.use_act_norm:
            x = self.actnorm(x)
        z1, z2 = self.permute(x).chunk(2, dim=1)
        if self.coupling == "additive":
            z2 = z2 + self.block(z1)
        else:
            scale, shift = self._scale_shift(z1)
            z2 = (z2 + shift) * scale
        return torch.cat((z1, z2), dim=1)

    def _reverse(self, z: torch.Tensor) -> torch.Tensor:
        z1, z2 = z.chunk(2, dim=1)
        if self.coupling == "additive":
            z2 = z2 - self.block(z1)
        else:
            scale, shift = self._scale_shift(z1)
            z2 = z2 / scale - shift
        x = self.permute(torch.cat((z1, z2), dim=1), reverse=True)
        if self.use_act_norm:
            x = self.actnorm(x, reverse=True)
        return x


class CheckerboardContextConv(nn.Conv2d):
    """3x3 convolution masked for the two-pass checkerboard context.

    Type 'A' sees only the four direct neighbours (the already decoded half);
    type 'B' sees the diagonal neighbours and the centre, which keeps later
    layers on the same checkerboard phase.
    """

    def __init__(self, in_channels: int, out_channels: int, mask_type: str):
        super().__init__(in_channels, out_channels, kernel_size=3, padding=1)
        mask = torch.zeros_like(self.weight)
        if mask_type == "A":
            mask[:, :, 0::2, 1::2] = 1
            mask[:, :, 1::2, 0::2] = 1
        elif mask_type == "B":
            mask[:, :, 0::2, 0::2] = 1
            mask[:, :, 1::2, 1::2] = 1
            mask[:, :, 1, 1] = 1
        else:
            raise ValueError(f"unknown mask type {mask_type!r}")
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.mask, self.bias)
