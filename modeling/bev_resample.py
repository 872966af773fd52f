"""Resampling a BEV map from one frame's grid onto another's: both LiDAR teachers run in the LiDAR
frame, while the student predicts its target on the ego-frame grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .grids import BevGrid


def resample_bev(bev_source: torch.Tensor, target_from_source: torch.Tensor, source_grid: BevGrid,
                 target_grid: BevGrid) -> torch.Tensor:
    """A BEV map laid out in one frame, sampled bilinearly at the cell centres of a grid in another.

    bev_source: (B, C, Y_s, X_s) on ``source_grid`` (rows along the source frame's y);
    target_from_source: (B, 4, 4); ``target_grid`` is laid out in the target frame. Target cell centres
    are taken at the height of the source frame's origin (a level sensor's horizontal plane) and mapped
    into the source frame; outside the source map the value is zero, as an empty cell of the map.
    Returns (B, C, Y_t, X_t).
    """
    if tuple(bev_source.shape[-2:]) != source_grid.size:
        raise ValueError(f"bev_source has {tuple(bev_source.shape[-2:])} (Y, X) cells, its grid {source_grid.size}")
    B = bev_source.shape[0]
    rows, columns = target_grid.size
    x_target, y_target = target_grid.cell_centers(bev_source.device, torch.float64)
    transform = target_from_source.to(torch.float64)
    height = transform[:, None, None, 2, 3].expand(B, rows, columns)  # the source origin's z in the target frame
    points_target = torch.stack([x_target[None, None, :].expand(B, rows, columns),
                                 y_target[None, :, None].expand(B, rows, columns), height], -1)  # (B, Y_t, X_t, 3)
    source_from_target = torch.linalg.inv(transform)
    points_source = (points_target @ source_from_target[:, None, :3, :3].transpose(-1, -2)
                     + source_from_target[:, None, None, :3, 3])  # (B, Y_t, X_t, 3)
    # grid_sample's (-1, 1) spans the outer edges of the map (align_corners=False).
    (x_min, x_max), (y_min, y_max) = source_grid.x_range, source_grid.y_range
    u = (points_source[..., 0] - x_min) / (x_max - x_min) * 2 - 1
    v = (points_source[..., 1] - y_min) / (y_max - y_min) * 2 - 1
    grid = torch.stack([u, v], -1).to(bev_source.dtype)  # (B, Y_t, X_t, 2)
    return F.grid_sample(bev_source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
