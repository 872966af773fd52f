"""Necks of the BEV detector: the image FPN (strides 16 and 32 to one stride-16 map) and the
ResNet-style BEV encoder with its FPN (BEVDet's CustomResNet and FPN_LSS)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ImageFPN(nn.Module):
    """Lateral 1x1 convs, top-down addition, a 3x3 output conv at the finest input stride."""

    def __init__(self, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        """features: finest first, (B, C_i, H_i, W_i). Returns (B, out, H_0, W_0)."""
        x = self.lateral[-1](features[-1])
        for lateral, feature in zip(self.lateral[-2::-1], features[-2::-1]):
            x = lateral(feature) + F.interpolate(x, size=feature.shape[-2:], mode="nearest")
        return self.output(x)


class BasicBlock(nn.Module):
    """ResNet's basic block, with a projection shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class BevEncoder(nn.Module):
    """Three stages of two basic blocks at strides 2, 4, 8, then the last stage upsampled x4, joined
    with the first and brought back to the input grid (BEVDet's FPN_LSS). (B, C_in, Y, X) in and out."""

    def __init__(self, in_channels: int, channels: Sequence[int] = (160, 320, 640), out_channels: int = 256):
        super().__init__()
        stages, previous = [], in_channels
        for width in channels:
            stages.append(nn.Sequential(BasicBlock(previous, width, stride=2), BasicBlock(width, width)))
            previous = width
        self.stages = nn.ModuleList(stages)
        joined = channels[0] + channels[-1]
        self.fuse = nn.Sequential(nn.Conv2d(joined, out_channels * 2, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels * 2), nn.ReLU(True),
                                  nn.Conv2d(out_channels * 2, out_channels * 2, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(out_channels * 2), nn.ReLU(True))
        self.output = nn.Sequential(nn.Conv2d(out_channels * 2, out_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(out_channels), nn.ReLU(True))

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        stages = []
        x = bev
        for stage in self.stages:
            x = stage(x)
            stages.append(x)
        top = F.interpolate(stages[-1], size=stages[0].shape[-2:], mode="bilinear", align_corners=True)
        x = self.fuse(torch.cat([stages[0], top], 1))
        x = F.interpolate(x, size=bev.shape[-2:], mode="bilinear", align_corners=True)
        return self.output(x)
