"""A pillar-based LiDAR detector (PointPillars encoder, SECOND-style backbone and FPN neck,
CenterPoint head) in plain PyTorch: GeoMIM's teacher where sparse convolutions are not at hand.

Points are (P, >=5): x, y, z, intensity, time lag, in the frame the pillar grid is laid out in (the
ego frame for our teacher, the LiDAR frame for mmdetection3d's). The pillar grid covers
``x_range`` x ``y_range`` at ``pillar_size``; the backbone's stages downsample it by their strides.

Two options reproduce mmdetection3d's ``PillarFeatureNet`` (``legacy=False``) and hard voxelization
exactly (in eval mode): ``center_z`` decorates each point with its height above the pillar's vertical
centre too (11 features instead of 10), and ``max_points_per_pillar``/``max_pillars`` keep only the
first points of each pillar and the first pillars of each sample, in input order, with the unfilled
point slots of a pillar entering its max as zero points.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .grids import BevGrid

POINT_FEATURES = 10  # x, y, z, intensity, time lag, offsets to the pillar mean (3) and centre (2)
POINT_FEATURES_CENTER_Z = 11  # ... and the centre offset in z too (mmdetection3d, legacy=False)


def decorate_points(points: torch.Tensor, pillar: torch.Tensor, num_pillars: int, centers: torch.Tensor):
    """PointPillars' per-point input: (P, 5) x, y, z, intensity, lag; their offsets to the mean of the
    pillar's points (3); their offsets to the pillar centre, ``centers`` (P, 2) in x, y or (P, 3) in
    x, y, z. ``pillar``: (P,) flat pillar id. Returns (P, 8 + centers.shape[1]) and the per-pillar
    point counts (num_pillars,)."""
    counts = torch.zeros(num_pillars, device=points.device).index_add_(0, pillar, torch.ones_like(pillar,
                                                                                                 dtype=torch.float))
    sums = torch.zeros(num_pillars, 3, device=points.device).index_add_(0, pillar, points[:, :3])
    means = sums[pillar] / counts[pillar, None]
    features = torch.cat([points[:, :5], points[:, :3] - means, points[:, : centers.shape[1]] - centers], 1)
    return features, counts


class PillarFeatureNet(nn.Module):
    """PointNet over each pillar's points: Linear-BN-ReLU per point, max over the pillar.

    Args:
        channels: output channels.
        center_z: add the z offset to the pillar's vertical centre to the point features (11, not 10).
        max_points_per_pillar: the fixed point slots of hard voxelization; a pillar with fewer points
            has empty slots, zero vectors that pass through Linear-BN-ReLU and enter the max too, as in
            mmdetection3d (BN's shift makes them non-zero). None: only the points count.
        eps, momentum: the BatchNorm's.
    """

    def __init__(self, channels: int, center_z: bool = False, max_points_per_pillar: int | None = None,
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.max_points_per_pillar = max_points_per_pillar
        self.linear = nn.Linear(POINT_FEATURES_CENTER_Z if center_z else POINT_FEATURES, channels, bias=False)
        self.norm = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, points: torch.Tensor, pillar: torch.Tensor, num_pillars: int, centers: torch.Tensor):
        """points: (P, 5) x, y, z, intensity, lag; pillar: (P,) flat pillar id; centers: (P, 2) or (P, 3)
        the pillar centre of each point. Returns (num_pillars, C) features, 0 for empty pillars."""
        features, counts = decorate_points(points, pillar, num_pillars, centers)
        if self.max_points_per_pillar is not None:
            # One zero row per pillar with a free slot stands for all its empty slots (the max is the same).
            unfilled = torch.nonzero((counts > 0) & (counts < self.max_points_per_pillar)).squeeze(1)
            features = torch.cat([features, features.new_zeros(len(unfilled), features.shape[1])])
            pillar = torch.cat([pillar, unfilled])
        features = F.relu(self.norm(self.linear(features)))  # (P, C)
        pooled = torch.zeros(num_pillars, features.shape[1], device=points.device, dtype=features.dtype)
        return pooled.scatter_reduce(0, pillar[:, None].expand_as(features), features, "amax", include_self=False)


def rank_within_groups(groups: torch.Tensor) -> torch.Tensor:
    """(N,) group ids -> (N,) each element's rank among the elements of its group, in input order."""
    order = torch.argsort(groups, stable=True)
    position = torch.arange(len(groups), device=groups.device)
    ordered = groups[order]
    starts = torch.ones(len(groups), dtype=torch.bool, device=groups.device)
    starts[1:] = ordered[1:] != ordered[:-1]
    first = torch.cummax(torch.where(starts, position, torch.zeros_like(position)), 0).values
    rank = torch.empty_like(position)
    rank[order] = position - first
    return rank


def hard_voxelization_keep(pillar: torch.Tensor, sample: torch.Tensor, num_pillars: int,
                           max_points_per_pillar: int | None, max_pillars: int | None) -> torch.Tensor:
    """Which points hard voxelization (mmcv's, in point order) keeps: a pillar is opened by its first
    point while the sample has fewer than ``max_pillars`` pillars, and takes its first
    ``max_points_per_pillar`` points. pillar, sample: (P,) in input order. Returns a (P,) bool mask."""
    keep = torch.ones_like(pillar, dtype=torch.bool)
    point_rank = rank_within_groups(pillar)
    if max_pillars is not None:
        opening = point_rank == 0  # each pillar's first point, in the order the pillars open
        opened = torch.zeros(num_pillars, dtype=torch.bool, device=pillar.device)
        opened[pillar[opening]] = rank_within_groups(sample[opening]) < max_pillars
        keep &= opened[pillar]
    if max_points_per_pillar is not None:
        keep &= point_rank < max_points_per_pillar
    return keep


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1, eps: float = 1e-5,
                 momentum: float = 0.1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum), nn.ReLU(True)]


class PillarBackbone(nn.Module):
    """SECOND-style stages: a strided conv then ``layers`` 3x3 convs, each conv-BN-ReLU."""

    def __init__(self, in_channels: int, channels: Sequence[int], layers: Sequence[int], strides: Sequence[int],
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.stages = nn.ModuleList()
        for out_channels, depth, stride in zip(channels, layers, strides):
            modules = conv_bn_relu(in_channels, out_channels=out_channels, stride=stride, eps=eps, momentum=momentum)
            for _ in range(depth):
                modules += conv_bn_relu(out_channels, out_channels=out_channels, stride=1, eps=eps, momentum=momentum)
            self.stages.append(nn.Sequential(*modules))
            in_channels = out_channels

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = []
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs


class PillarNeck(nn.Module):
    """SECOND FPN: every stage brought to ``out_stride`` (transposed or strided convs) and concatenated.

    A stage already at ``out_stride`` goes through a 1x1 transposed conv (mmdetection3d's
    ``use_conv_for_no_stride=True`` uses a 1x1 conv: the same map with the weight's two channel axes
    swapped)."""

    def __init__(self, channels: Sequence[int], strides: Sequence[int], out_channels: int, out_stride: int,
                 eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.blocks = nn.ModuleList()
        for in_channels, stride in zip(channels, strides):
            if stride >= out_stride:
                factor = stride // out_stride
                layer = nn.ConvTranspose2d(in_channels, out_channels, factor, stride=factor, bias=False)
            else:
                factor = out_stride // stride
                layer = nn.Conv2d(in_channels, out_channels, factor, stride=factor, bias=False)
            self.blocks.append(nn.Sequential(layer, nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum),
                                             nn.ReLU(True)))

    def forward(self, stages: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([block(x) for block, x in zip(self.blocks, stages)], 1)


class PillarEncoder(nn.Module):
    """Points to pillar BEV features, the backbone stages and the neck.

    Args:
        grid: the pillars (cell size ``grid.resolution``) and the heights kept (``grid.z_range``).
        pillar_channels, backbone_channels, backbone_layers, backbone_strides: the network widths.
        neck_channels, neck_stride: per-stage channels in the neck and its stride over the pillars.
        center_z, max_points_per_pillar: see :class:`PillarFeatureNet`.
        max_pillars: at most this many non-empty pillars per sample, the first opened in point order
            (hard voxelization's ``max_voxels``); None keeps all.
        norm_eps, norm_momentum: every BatchNorm's (mmdetection3d's pillar nets: 1e-3, 0.01).
    """

    def __init__(self, grid: BevGrid, pillar_channels: int = 64,
                 backbone_channels: Sequence[int] = (64, 128, 256), backbone_layers: Sequence[int] = (3, 5, 5),
                 backbone_strides: Sequence[int] = (2, 2, 2), neck_channels: int = 128, neck_stride: int = 2,
                 center_z: bool = False, max_points_per_pillar: int | None = None, max_pillars: int | None = None,
                 norm_eps: float = 1e-5, norm_momentum: float = 0.1):
        super().__init__()
        self.grid = grid
        self.center_z = center_z
        self.max_points_per_pillar, self.max_pillars = max_points_per_pillar, max_pillars
        self.pfn = PillarFeatureNet(pillar_channels, center_z=center_z, max_points_per_pillar=max_points_per_pillar,
                                    eps=norm_eps, momentum=norm_momentum)
        self.backbone = PillarBackbone(pillar_channels, channels=backbone_channels, layers=backbone_layers,
                                       strides=backbone_strides, eps=norm_eps, momentum=norm_momentum)
        self.stage_strides = [math.prod(backbone_strides[: i + 1]) for i in range(len(backbone_strides))]
        self.neck = PillarNeck(backbone_channels, strides=self.stage_strides, out_channels=neck_channels,
                               out_stride=neck_stride, eps=norm_eps, momentum=norm_momentum)
        self.out_channels = neck_channels * len(backbone_channels)

    def scatter(self, points: torch.Tensor, point_mask: torch.Tensor | None) -> torch.Tensor:
        """points: (B, P, 5) in the frame the grid is laid out in; point_mask: (B, P) or None. Returns
        pillar features (B, C, Y, X)."""
        batch, count = points.shape[:2]
        grid = self.grid
        height, width = grid.size
        column, row, valid = grid.cell_coordinates(points)
        if point_mask is not None:
            valid &= point_mask.bool()
        sample = torch.arange(batch, device=points.device)[:, None].expand(-1, count)
        pillar = (sample * height + row) * width + column  # flat over the batch
        centers = [(column + 0.5) * grid.resolution + grid.x_range[0], (row + 0.5) * grid.resolution + grid.y_range[0]]
        if self.center_z:  # one pillar spans the whole z range
            centers.append(torch.full_like(centers[0], (grid.z_range[0] + grid.z_range[1]) / 2))
        centers = torch.stack(centers, -1)
        if self.max_points_per_pillar is not None or self.max_pillars is not None:
            valid[valid.clone()] = hard_voxelization_keep(pillar[valid], sample[valid], batch * height * width,
                                                          self.max_points_per_pillar, self.max_pillars)
        features = self.pfn(points[valid][:, :5].float(), pillar=pillar[valid], num_pillars=batch * height * width,
                            centers=centers[valid])
        return features.view(batch, height, width, -1).permute(0, 3, 1, 2).contiguous()

    def forward(self, points: torch.Tensor, point_mask: torch.Tensor | None = None):
        """points: (B, P, 5) in the grid's frame. Returns the pillar map, the backbone stages and the neck
        output (all (B, C, Y_s, X_s))."""
        pillars = self.scatter(points, point_mask)
        stages = self.backbone(pillars)
        return pillars, stages, self.neck(stages)
