"""Resampling a BEV map from one frame's grid onto another's: both LiDAR teachers run in the LiDAR
frame, while the student predicts its target on the ego-frame grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resample_bev(bev_source: torch.Tensor, target_from_source: torch.Tensor, source_x_range: Sequence[float],
                 source_y_range: Sequence[float], target_x_range: Sequence[float], target_y_range: Sequence[float],
                 target_cell: float) -> torch.Tensor:
    """A BEV map laid out in one frame, sampled bilinearly at the cell centres of a grid in another.

    bev_source: (B, C, Y_s, X_s), rows along the source frame's y, covering ``source_x_range`` x
    ``source_y_range``; target_from_source: (B, 4, 4). Target cell centres are taken at the height of the
    source frame's origin (a level sensor's horizontal plane) and mapped into the source frame; outside the
    source map the value is zero, as an empty cell of the map. Returns (B, C, Y_t, X_t).
    """
    B = bev_source.shape[0]
    device = bev_source.device
    columns = round((target_x_range[1] - target_x_range[0]) / target_cell)
    rows = round((target_y_range[1] - target_y_range[0]) / target_cell)
    x_target = target_x_range[0] + (torch.arange(columns, device=device, dtype=torch.float64) + 0.5) * target_cell
    y_target = target_y_range[0] + (torch.arange(rows, device=device, dtype=torch.float64) + 0.5) * target_cell
    transform = target_from_source.to(torch.float64)
    height = transform[:, None, None, 2, 3].expand(B, rows, columns)  # the source origin's z in the target frame
    points_target = torch.stack([x_target[None, None, :].expand(B, rows, columns),
                                 y_target[None, :, None].expand(B, rows, columns), height], -1)  # (B, Y_t, X_t, 3)
    source_from_target = torch.linalg.inv(transform)
    points_source = (points_target @ source_from_target[:, None, :3, :3].transpose(-1, -2)
                     + source_from_target[:, None, None, :3, 3])  # (B, Y_t, X_t, 3)
    # grid_sample's (-1, 1) spans the outer edges of the map (align_corners=False).
    u = (points_source[..., 0] - source_x_range[0]) / (source_x_range[1] - source_x_range[0]) * 2 - 1
    v = (points_source[..., 1] - source_y_range[0]) / (source_y_range[1] - source_y_range[0]) * 2 - 1
    grid = torch.stack([u, v], -1).to(bev_source.dtype)  # (B, Y_t, X_t, 2)
    return F.grid_sample(bev_source, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
