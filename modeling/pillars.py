"""A pillar-based LiDAR detector (PointPillars encoder, SECOND-style backbone and FPN neck,
CenterPoint head) in plain PyTorch: GeoMIM's teacher where sparse convolutions are not at hand.

Points are in the ego frame, (P, >=5): x, y, z, intensity, time lag. The pillar grid covers
``x_range`` x ``y_range`` at ``pillar_size``; the backbone's stages downsample it by their strides.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

POINT_FEATURES = 10  # x, y, z, intensity, time lag, offsets to the pillar mean (3) and centre (2)


class PillarFeatureNet(nn.Module):
    """PointNet over each pillar's points: Linear-BN-ReLU per point, max over the pillar."""

    def __init__(self, channels: int):
        super().__init__()
        self.linear = nn.Linear(POINT_FEATURES, channels, bias=False)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, points: torch.Tensor, pillar: torch.Tensor, num_pillars: int, centers: torch.Tensor):
        """points: (P, 5) x, y, z, intensity, lag; pillar: (P,) flat pillar id; centers: (P, 2) the
        pillar centre of each point. Returns (num_pillars, C) features, 0 for empty pillars."""
        counts = torch.zeros(num_pillars, device=points.device).index_add_(0, pillar, torch.ones_like(pillar,
                                                                                                     dtype=torch.float))
        sums = torch.zeros(num_pillars, 3, device=points.device).index_add_(0, pillar, points[:, :3])
        means = sums[pillar] / counts[pillar, None]
        features = torch.cat([points[:, :5], points[:, :3] - means, points[:, :2] - centers], 1)
        features = F.relu(self.norm(self.linear(features)))  # (P, C)
        pooled = torch.zeros(num_pillars, features.shape[1], device=points.device, dtype=features.dtype)
        return pooled.scatter_reduce(0, pillar[:, None].expand_as(features), features, "amax", include_self=False)


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(True)]


class PillarBackbone(nn.Module):
    """SECOND-style stages: a strided conv then ``layers`` 3x3 convs, each conv-BN-ReLU."""

    def __init__(self, in_channels: int, channels: Sequence[int], layers: Sequence[int], strides: Sequence[int]):
        super().__init__()
        self.stages = nn.ModuleList()
        for out_channels, depth, stride in zip(channels, layers, strides):
            modules = conv_bn_relu(in_channels, out_channels, stride)
            for _ in range(depth):
                modules += conv_bn_relu(out_channels, out_channels)
            self.stages.append(nn.Sequential(*modules))
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class PillarNeck(nn.Module):
    """SECOND FPN: every stage brought to ``out_stride`` (transposed or strided convs) and concatenated."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], out_channels: int, out_stride: int):
        super().__init__()
        self.blocks = nn.ModuleList()
        for in_channels, stride in zip(channels, strides):
            if stride >= out_stride:
                factor = stride // out_stride
                layer = nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor, bias=False)
            else:
                factor = out_stride // stride
                layer = nn.Conv2d(in_channels, out_channels, factor, stride=factor, bias=False)
            self.blocks.append(nn.Sequential(layer, nn.BatchNorm2d(out_channels), nn.ReLU(True)))

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([block(x) for block, x in zip(self.blocks, stages)], 1)


class PillarEncoder(nn.Module):
    """Points to pillar BEV features, the backbone stages and the neck.

    Args:
        x_range, y_range, z_range: (min, max) metres kept; pillar_size: metres per pillar.
        pillar_channels, backbone_channels, backbone_layers, backbone_strides: the network widths.
        neck_channels, neck_stride: per-stage channels in the neck and its stride over the pillars.
    """

    def __init__(self, x_range, y_range, z_range, pillar_size: float, pillar_channels: int = 64,
                 backbone_channels: Sequence[int] = (64, 128, 256), backbone_layers: Sequence[int] = (3, 5, 5),
                 backbone_strides: Sequence[int] = (2, 2, 2), neck_channels: int = 128, neck_stride: int = 2):
        super().__init__()
        self.x_range, self.y_range, self.z_range = tuple(x_range), tuple(y_range), tuple(z_range)
        self.pillar_size = pillar_size
        self.grid = (int(round((y_range[1] - y_range[0]) / pillar_size)),
                     int(round((x_range[1] - x_range[0]) / pillar_size)))
        self.pfn = PillarFeatureNet(pillar_channels)
        self.backbone = PillarBackbone(pillar_channels, backbone_channels, backbone_layers, backbone_strides)
        self.stage_strides = [math.prod(backbone_strides[: i + 1]) for i in range(len(backbone_strides))]
        self.neck = PillarNeck(backbone_channels, self.stage_strides, neck_channels, neck_stride)
        self.out_channels = neck_channels * len(backbone_channels)

    def scatter(self, points_ego: torch.Tensor, point_mask: torch.Tensor | None) -> torch.Tensor:
        """points_ego: (B, P, 5); point_mask: (B, P) or None. Returns pillar features (B, C, Y, X)."""
        batch, count = points_ego.shape[:2]
        height, width = self.grid
        valid = torch.ones(batch, count, dtype=torch.bool, device=points_ego.device) if point_mask is None \
            else point_mask.bool()
        column = torch.floor((points_ego[..., 0] - self.x_range[0]) / self.pillar_size).long()
        row = torch.floor((points_ego[..., 1] - self.y_range[0]) / self.pillar_size).long()
        valid &= (column >= 0) & (column < width) & (row >= 0) & (row < height)
        valid &= (points_ego[..., 2] >= self.z_range[0]) & (points_ego[..., 2] < self.z_range[1])
        sample = torch.arange(batch, device=points_ego.device)[:, None].expand(-1, count)
        pillar = (sample * height + row) * width + column  # flat over the batch
        centers = torch.stack([(column + 0.5) * self.pillar_size + self.x_range[0],
                               (row + 0.5) * self.pillar_size + self.y_range[0]], -1)
        features = self.pfn(points_ego[valid][:, :5].float(), pillar[valid], batch * height * width, centers[valid])
        return features.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, points_ego: torch.Tensor, point_mask: torch.Tensor | None = None):
        """Returns the pillar map, the backbone stages and the neck output (all (B, C, Y_s, X_s))."""
        pillars = self.scatter(points_ego, point_mask)
        stages = self.backbone(pillars)
        return pillars, stages, self.neck(stages)
