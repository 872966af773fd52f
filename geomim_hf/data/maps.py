"""BEV map masks from the nuScenes map expansion, BEVFusion's six classes, rasterised by the devkit.

BEVFusion's labels: ``drivable_area`` (the ``road_segment`` and ``lane`` layers), ``ped_crossing``,
``walkway``, ``stop_line``, ``carpark_area`` and ``divider`` (the ``road_divider`` and ``lane_divider``
lines), multi-label, x and y in [-50, 50) m at 0.5 m around the ego. The devkit's ``get_map_mask``
draws a patch centred on a pose and turned by its yaw; its pixel ``i`` sits at ``-size / 2 + i * res``
from the patch centre. Here the patch centre is moved by half a cell so that pixel centres fall on
:class:`BevGrid` cell centres (BEVFusion's labels are half a cell off their own grid), and a frame
that is mirrored or scaled (a BEV augmentation) is drawn exactly: a scaled patch, flipped rows.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..modeling.grids import BevGrid
from .classes import MAP_CLASSES

# The map expansion layers that make each class; a class not listed is its own layer.
CLASS_LAYERS = {"drivable_area": ("road_segment", "lane"), "divider": ("road_divider", "lane_divider")}
MAP_GRID = BevGrid(x_range=(-50.0, 50.0), y_range=(-50.0, 50.0), resolution=0.5)
EXPANSION_DOWNLOAD = ("the nuScenes map expansion v1.3 (nuScenes-map-expansion-v1.3.zip from "
                      "https://www.nuscenes.org/nuscenes#download), unzipped into the dataroot's maps/ folder")


def expansion_path(dataroot: str, location: str) -> str:
    return os.path.join(dataroot, "maps", "expansion", f"{location}.json")


class MapRasterizer:
    """Boolean BEV masks ``(C, Y, X)`` of map classes in any frame placed in a location's global frame.

    Args:
        dataroot: the nuScenes root whose ``maps/expansion/<location>.json`` are read (each on first use,
            so every DataLoader worker loads its own).
        grid: the BEV grid of the masks (rows along y, columns along x); BEVFusion's 200 x 200 by default.
        classes: names of :data:`MAP_CLASSES`, or single map-expansion polygon/line layers.
    """

    def __init__(self, dataroot: str, grid: BevGrid = MAP_GRID, classes=MAP_CLASSES):
        self.dataroot, self.grid, self.classes = os.path.abspath(dataroot), grid, tuple(classes)
        self.layers = [CLASS_LAYERS.get(name, (name,)) for name in self.classes]
        self._maps: dict = {}

    def map(self, location: str):
        """The devkit's ``NuScenesMap`` of a location."""
        if location not in self._maps:
            from nuscenes.map_expansion.map_api import NuScenesMap

            path = expansion_path(self.dataroot, location)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"map masks need {path}, which is missing: it comes with "
                                        f"{EXPANSION_DOWNLOAD}")
            self._maps[location] = NuScenesMap(dataroot=self.dataroot, map_name=location)
        return self._maps[location]

    def __call__(self, location: str, global_from_frame: np.ndarray) -> np.ndarray:
        """Masks (C, Y, X), bool, of the grid laid out in a frame; ``global_from_frame`` (4, 4) may carry a
        uniform scale and a mirror (``global_from_ego @ inv(augmented_ego_from_ego)``)."""
        transform = np.asarray(global_from_frame, np.float64)
        if transform.shape != (4, 4) or not np.isfinite(transform).all():
            raise ValueError(f"global_from_frame must be a finite (4, 4) matrix, got shape {transform.shape}")
        linear = transform[:3, :3]
        determinant = np.linalg.det(linear)
        scale = abs(determinant) ** (1 / 3)
        similar = scale > 1e-9 and np.allclose(linear @ linear.T, scale ** 2 * np.eye(3), atol=1e-6 * scale ** 2)
        if not similar or np.linalg.det(linear[:2, :2]) * determinant <= 0:  # a mirror must be one of x, y
            raise ValueError(f"global_from_frame must be a rotation times a uniform scale (maybe mirrored), got "
                             f"its linear part {linear.tolist()}")
        # The map is flat: the patch turns by the frame's yaw (the nearest rotation of the (x, y) block,
        # which a real ego pose's degree of pitch and roll leaves slightly off one).
        mirrored = determinant < 0
        turned = linear[:2, :2] @ np.diag([1.0, -1.0]) if mirrored else linear[:2, :2]
        angle = math.atan2(turned[1, 0] - turned[0, 1], turned[0, 0] + turned[1, 1])
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        x_min, (y_min, y_max) = self.grid.x_range[0], self.grid.y_range
        rows, columns = self.grid.size
        # Patch coordinates q = scale * flip @ p of a frame point p; pixel (r, c) must sit at cell centre
        # (c, r) (for a mirror, at row Y - 1 - r, whose y runs the other way).
        step, half_cell = self.grid.resolution * scale, 0.5 * self.grid.resolution
        first_x = scale * (x_min + half_cell)  # patch coordinates of pixel 0's centre
        first_y = -scale * (y_max - half_cell) if mirrored else scale * (y_min + half_cell)
        width, height = columns * step, rows * step
        center_patch = np.array([first_x + width / 2, first_y + height / 2])
        center = transform[:2, 3] + rotation @ center_patch
        layer_names = sorted({layer for layers in self.layers for layer in layers})
        masks = self.map(location).get_map_mask(
            (float(center[0]), float(center[1]), height, width), math.degrees(angle), layer_names, (rows, columns))
        masks = masks.astype(bool)  # (layers, Y, X)
        if mirrored:
            masks = np.ascontiguousarray(masks[:, ::-1])
        by_layer = dict(zip(layer_names, masks))
        return np.stack([np.logical_or.reduce([by_layer[layer] for layer in layers]) for layers in self.layers])
