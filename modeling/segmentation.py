"""BEV map segmentation head (BEVFusion's): the BEV features resampled onto the map grid, two 3 x 3
convolutions, one sigmoid logit per class; trained with the sigmoid focal loss."""

from __future__ import annotations

import math

import torch
from torch import nn
from torchvision.ops import sigmoid_focal_loss

from .bev_resample import resample_bev
from .centerpoint import OutputConv2d
from .grids import BevGrid

PRIOR_PROBABILITY = 0.01  # RetinaNet's start for a focal-loss logit: rare positives, calm first steps


class MapSegmentationHead(nn.Module):
    """(B, C, Y_s, X_s) BEV features on ``source_grid`` -> (B, K, Y, X) logits on ``target_grid`` (same frame).

    The resampling is bilinear at the target cells' centres (BEVFusion's BEVGridTransform); outside the
    source grid the features are zero."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, source_grid: BevGrid, target_grid: BevGrid):
        super().__init__()
        self.source_grid, self.target_grid = source_grid, target_grid
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(True))
        self.classifier = OutputConv2d(channels, num_classes,
                                       bias_init=-math.log((1 - PRIOR_PROBABILITY) / PRIOR_PROBABILITY))

    def forward(self, bev_features: torch.Tensor) -> torch.Tensor:
        same_frame = torch.eye(4, device=bev_features.device).expand(bev_features.shape[0], 4, 4)
        bev = resample_bev(bev_features, same_frame, self.source_grid, self.target_grid)  # (B, C, Y, X)
        return self.classifier(self.convs(bev))


def map_focal_loss(logits: torch.Tensor, map_masks: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Sigmoid focal loss averaged over classes and cells (BEVFusion's, per class then the mean).
    logits: (B, K, Y, X); map_masks: (B, K, Y, X) bool."""
    if logits.shape != map_masks.shape:
        raise ValueError(f"map_masks must be (B, K, Y, X) = {tuple(logits.shape)} like the logits, "
                         f"got {tuple(map_masks.shape)}")
    return sigmoid_focal_loss(logits.float(), map_masks.float(), alpha=alpha, gamma=gamma, reduction="mean")
