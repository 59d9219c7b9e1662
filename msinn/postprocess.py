"""Post-processing network: a small U-Net that adds a scaled residual to the
reconstruction. Module names match the published checkpoints."""

from __future__ import annotations

import torch
from torch import nn


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(channels, channels // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(channels // reduction, channels, bias=False),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.fc(x.mean(dim=(-1, -2)))
        return x * w[:, :, None, None]


class ResidualConvBlock(nn.Module):
    def __init__(self, ch_in: int, ch_out: int):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(ch_in, ch_out, 3, padding=1),
            nn.LeakyReLU(0.01),
            nn.Conv2d(ch_out, ch_out, 3, padding=1),
            SqueezeExcite(ch_out),
        )
        self.up_dim = nn.Conv2d(ch_in, ch_out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up_dim(x) + self.conv(x)


class ReluResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.relu = nn.ReLU()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(self.relu(x))))


def _upsample(ch_in: int, ch_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch_in, ch_out * 4, 1), nn.PixelShuffle(2))


class UNet(nn.Module):
    def __init__(self, in_ch: int = 16, out_ch: int = 16):
        super().__init__()
        self.max_pool = nn.MaxPool2d(2, 2)
        self.conv1 = ResidualConvBlock(in_ch, 32)
        self.conv2 = ResidualConvBlock(32, 64)
        self.conv3 = ResidualConvBlock(64, 128)
        self.context_refine = nn.Sequential(*(ReluResBlock(128) for _ in range(4)))
        self.up3 = _upsample(128, 64)
        self.up_conv3 = ResidualConvBlock(128, 64)
        self.up2 = _upsample(64, 32)
        self.up_conv2 = ResidualConvBlock(64, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.conv1(x)
        x2 = self.conv2(self.max_pool(x1))
        x3 = self.context_refine(self.conv3(self.max_pool(x2)))
        d3 = self.up_conv3(torch.cat((x2, self.up3(x3)), dim=1))
        return self.up_conv2(torch.cat((x1, self.up2(d3)), dim=1))


class PostProcessNet(nn.Module):
    """Image-domain refinement applied after the inverse transform."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 3, 3, padding=1)
        self.unet = UNet(16, 16)
        self.scale = 0.3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.unet(self.conv1(x))) * self.scale + x
