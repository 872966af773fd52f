"""The two discretisations every BEV model here shares: the ego-frame BEV grid and the depth bins.

A BEV map is (B, C, Y, X): rows along y, columns along x, cell ``[iy, ix]`` covering
``x_min + ix * resolution <= x < x_min + (ix + 1) * resolution`` and likewise for y. The camera
models, the CenterPoint head and its targets, the LiDAR teachers and the teacher-feature cache all
take their grid as a :class:`BevGrid`, and every depth discretisation is a :class:`DepthBins`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def _pair(name: str, value) -> tuple[float, float]:
    low, high = (float(v) for v in value)
    if not low < high:
        raise ValueError(f"{name} must be (min, max) with min < max, got {tuple(value)}")
    return low, high


@dataclass(frozen=True)
class BevGrid:
    """An ego-frame BEV grid: ``x_range`` and ``y_range`` (min, max) metres, square cells of ``resolution``
    metres, and the height slab ``z_range`` that counts as inside (one z bin; unbounded by default)."""

    x_range: tuple[float, float]
    y_range: tuple[float, float]
    resolution: float
    z_range: tuple[float, float] = (-math.inf, math.inf)

    def __post_init__(self):
        for name in ("x_range", "y_range", "z_range"):
            object.__setattr__(self, name, _pair(name, getattr(self, name)))
        if not self.resolution > 0:
            raise ValueError(f"resolution must be positive metres per cell, got {self.resolution}")
        object.__setattr__(self, "resolution", float(self.resolution))

    @property
    def size(self) -> tuple[int, int]:
        """(Y, X) cells."""
        return (int(round((self.y_range[1] - self.y_range[0]) / self.resolution)),
                int(round((self.x_range[1] - self.x_range[0]) / self.resolution)))

    @property
    def num_cells(self) -> int:
        return self.size[0] * self.size[1]

    def coarsened(self, factor: int) -> "BevGrid":
        """The same extent at ``factor`` times the cell size (a strided map of this grid)."""
        return BevGrid(self.x_range, self.y_range, self.resolution * factor, self.z_range)

    def cell_coordinates(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """points: (..., >=3) metres in the grid's frame. Returns the column ``ix`` and row ``iy`` (both
        (...), long) and whether the point lies inside the grid and the z slab (..., bool)."""
        columns = torch.floor((points[..., 0] - self.x_range[0]) / self.resolution).long()
        rows = torch.floor((points[..., 1] - self.y_range[0]) / self.resolution).long()
        height, width = self.size
        inside = (columns >= 0) & (columns < width) & (rows >= 0) & (rows < height)
        inside &= (points[..., 2] >= self.z_range[0]) & (points[..., 2] < self.z_range[1])
        return columns, rows, inside

    def cell_of(self, points: torch.Tensor) -> torch.Tensor:
        """(...) flat cell ``iy * X + ix`` of each point (..., >=3), -1 outside the grid or the z slab."""
        columns, rows, inside = self.cell_coordinates(points)
        return torch.where(inside, rows * self.size[1] + columns, torch.full_like(columns, -1))

    def cell_centers(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """x of each column's centre (X,) and y of each row's centre (Y,), metres."""
        height, width = self.size
        x = self.x_range[0] + (torch.arange(width, device=device, dtype=dtype) + 0.5) * self.resolution
        y = self.y_range[0] + (torch.arange(height, device=device, dtype=dtype) + 0.5) * self.resolution
        return x, y


@dataclass(frozen=True)
class DepthBins:
    """Depth bins ``[start, stop)`` metres of width ``step``: bin ``k`` covers
    ``start + k * step <= depth < start + (k + 1) * step`` and stands for its centre."""

    start: float
    stop: float
    step: float

    def __post_init__(self):
        if not (0 < self.start < self.stop and self.step > 0):
            raise ValueError(f"depth bins (start, stop, step) must satisfy 0 < start < stop and step > 0, "
                             f"got {(self.start, self.stop, self.step)}")
        for name in ("start", "stop", "step"):
            object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def count(self) -> int:
        return int(round((self.stop - self.start) / self.step))

    @property
    def centers(self) -> list[float]:
        """Each bin's centre, metres (``count`` values)."""
        return [self.start + (k + 0.5) * self.step for k in range(self.count)]

    def index_of(self, depth: torch.Tensor) -> torch.Tensor:
        """Bin of each depth (metres), -1 where there is no depth (<= 0) or it falls outside the bins."""
        bins = torch.floor((depth - self.start) / self.step).long()
        inside = (depth > 0) & (bins >= 0) & (bins < self.count)
        return torch.where(inside, bins, torch.full_like(bins, -1))
