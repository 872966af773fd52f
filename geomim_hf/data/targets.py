"""Training targets computed from the sample contract: per-view LiDAR depth maps and BEV
augmentation of boxes, velocities and points."""

from __future__ import annotations

import numpy as np

from .geometry import invert_rigid, transform_points


def project_points(points_lidar: np.ndarray, camera_from_lidar: np.ndarray, image_from_camera: np.ndarray):
    """Pixel coordinates (P, 2) and camera depths (P,) of (P, 3) LiDAR points; ``image_from_camera``
    is any 3x3 projection, e.g. ``processed_from_original @ intrinsics``. Pixel (i, j) is centred at (i, j)."""
    points_camera = transform_points(camera_from_lidar, points_lidar)
    depth = points_camera[:, 2]
    pixels = points_camera @ image_from_camera.T
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = pixels[:, :2] / pixels[:, 2:3]
    return uv, depth


def depth_maps(
    points_lidar: np.ndarray,
    ego_from_lidar: np.ndarray,
    ego_from_camera: np.ndarray,
    intrinsics: np.ndarray,
    processed_from_original: np.ndarray,
    image_size: tuple[int, int],
    stride: int,
    min_depth: float = 1e-3,
) -> np.ndarray:
    """Nearest LiDAR depth per ``stride`` x ``stride`` block of each (augmented) view.

    points_lidar: (P, >=3); ego_from_lidar: (4, 4); ego_from_camera: (N, 4, 4); intrinsics and
    processed_from_original: (N, 3, 3); image_size: (H, W) of the augmented images. Returns (N, H // stride,
    W // stride) camera-z depths in metres, 0 where no point falls (min-pooled as the official
    GeoMIM and BEVDepth targets)."""
    height, width = image_size
    rows, columns = height // stride, width // stride
    maps = np.zeros((len(ego_from_camera), rows, columns), dtype=np.float32)
    xyz = np.asarray(points_lidar, np.float64)[:, :3]
    for view in range(len(ego_from_camera)):
        camera_from_lidar = invert_rigid(ego_from_camera[view]) @ ego_from_lidar
        uv, depth = project_points(xyz, camera_from_lidar, processed_from_original[view] @ intrinsics[view])
        column = np.floor((uv[:, 0] + 0.5) / stride)
        row = np.floor((uv[:, 1] + 0.5) / stride)
        keep = (depth > min_depth) & (column >= 0) & (column < columns) & (row >= 0) & (row < rows)
        cells = (row[keep] * columns + column[keep]).astype(np.int64)
        nearest = np.full(rows * columns, np.inf)
        np.minimum.at(nearest, cells, depth[keep])
        maps[view] = np.where(np.isfinite(nearest), nearest, 0.0).reshape(rows, columns)
    return maps


def bev_augmentation_matrix(rotation: float, scale: float, flip_x: bool, flip_y: bool) -> np.ndarray:
    """(4, 4) map from the ego frame to the augmented ego frame: rotate about z by ``rotation``
    radians and scale, then mirror x (front/back) and/or y (left/right)."""
    cos, sin = np.cos(rotation), np.sin(rotation)
    linear = np.diag([-1.0 if flip_x else 1.0, -1.0 if flip_y else 1.0, 1.0]) @ (
        scale * np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]]))
    augmented_from_ego = np.eye(4)
    augmented_from_ego[:3, :3] = linear
    return augmented_from_ego


def augment_boxes(boxes: np.ndarray, velocities: np.ndarray, augmented_from_ego: np.ndarray):
    """Boxes (K, 7) and velocities (K, 2) mapped by a BEV augmentation (rotation, uniform scale,
    mirrors): centres and velocities by the matrix, sizes by the scale, yaw by where the heading
    points afterwards."""
    linear = augmented_from_ego[:3, :3]
    scale = np.cbrt(abs(np.linalg.det(linear)))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 7).copy()
    heading = np.stack([np.cos(boxes[:, 6]), np.sin(boxes[:, 6]), np.zeros(len(boxes))], 1) @ linear.T
    boxes[:, :3] = transform_points(augmented_from_ego, boxes[:, :3])
    boxes[:, 3:6] *= scale
    boxes[:, 6] = np.arctan2(heading[:, 1], heading[:, 0])
    velocities = np.asarray(velocities, np.float64).reshape(-1, 2)
    velocities = (np.concatenate([velocities, np.zeros((len(velocities), 1))], 1) @ linear.T)[:, :2]
    return boxes.astype(np.float32), velocities.astype(np.float32)


def augment_points(points_lidar: np.ndarray, ego_from_lidar: np.ndarray, augmented_from_ego: np.ndarray):
    """LiDAR points (P, C) moved so that ``ego_from_lidar`` sends them into the augmented ego frame;
    channels after xyz are kept."""
    lidar_from_lidar = invert_rigid(ego_from_lidar) @ augmented_from_ego @ ego_from_lidar
    points = np.array(points_lidar, dtype=np.float32, copy=True)
    points[:, :3] = transform_points(lidar_from_lidar, points[:, :3].astype(np.float64))
    return points
