"""Rigid-body geometry in NumPy: 4x4 transforms, quaternions, boxes.

Conventions (design.md): right-handed, metres, radians. A transform is named for what it maps:
``ego_from_camera`` takes camera-frame points to the ego frame. Quaternions are ``(w, x, y, z)``
as nuScenes stores them. Boxes are ``(x, y, z, l, w, h, yaw)`` with ``z`` at the box centre and
``l`` along the heading.
"""

from __future__ import annotations

import numpy as np


def rotation_z(yaw: float | np.ndarray) -> np.ndarray:
    """Rotation about +z by ``yaw``. Returns (..., 3, 3)."""
    yaw = np.asarray(yaw, dtype=np.float64)
    cos, sin = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack(
        [np.stack([cos, -sin, zero], -1), np.stack([sin, cos, zero], -1), np.stack([zero, zero, one], -1)], -2
    )


def rotation_from_euler(roll: float, pitch: float, yaw: float) -> np.ndarray:
    """Intrinsic z-y'-x'' rotation, i.e. ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``. Returns (3, 3)."""
    cr, sr, cp, sp = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch)
    rot_x = np.array([[1.0, 0.0, 0.0], [0.0, cr, -sr], [0.0, sr, cr]])
    rot_y = np.array([[cp, 0.0, sp], [0.0, 1.0, 0.0], [-sp, 0.0, cp]])
    return rotation_z(yaw) @ rot_y @ rot_x


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """Stack (..., 3, 3) rotations and (..., 3) translations into (..., 4, 4) transforms."""
    rotation, translation = np.asarray(rotation, np.float64), np.asarray(translation, np.float64)
    transform = np.zeros(rotation.shape[:-2] + (4, 4))
    transform[..., :3, :3] = rotation
    transform[..., :3, 3] = translation
    transform[..., 3, 3] = 1.0
    return transform


def invert_rigid(target_from_source: np.ndarray) -> np.ndarray:
    """Inverse of (..., 4, 4) rigid transforms, by transpose (no general matrix inverse)."""
    rotation_t = np.swapaxes(target_from_source[..., :3, :3], -1, -2)
    translation = target_from_source[..., :3, 3]
    return make_transform(rotation_t, -np.einsum("...ij,...j->...i", rotation_t, translation))


def transform_points(target_from_source: np.ndarray, points_source: np.ndarray) -> np.ndarray:
    """Apply a (4, 4) rigid transform to (..., 3) points."""
    rotation, translation = target_from_source[:3, :3], target_from_source[:3, 3]
    return points_source @ rotation.T + translation


def quaternion_to_matrix(quaternion) -> np.ndarray:
    """(w, x, y, z) quaternion, normalised here, to a (3, 3) rotation matrix."""
    w, x, y, z = np.asarray(quaternion, dtype=np.float64) / np.linalg.norm(quaternion)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
            [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
            [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quaternion(rotation: np.ndarray) -> np.ndarray:
    """(3, 3) rotation matrix to a unit (w, x, y, z) quaternion with ``w >= 0``.

    Shepperd's method: branch on the largest diagonal term so no square root is taken of a
    number near zero.
    """
    m = np.asarray(rotation, dtype=np.float64)
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0:
        s = 2.0 * np.sqrt(1.0 + trace)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    elif m[0, 0] > m[1, 1] and m[0, 0] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[0, 0] - m[1, 1] - m[2, 2])
        q = [(m[2, 1] - m[1, 2]) / s, 0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s]
    elif m[1, 1] > m[2, 2]:
        s = 2.0 * np.sqrt(1.0 + m[1, 1] - m[0, 0] - m[2, 2])
        q = [(m[0, 2] - m[2, 0]) / s, (m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s]
    else:
        s = 2.0 * np.sqrt(1.0 + m[2, 2] - m[0, 0] - m[1, 1])
        q = [(m[1, 0] - m[0, 1]) / s, (m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s]
    q = np.asarray(q) / np.linalg.norm(q)
    return -q if q[0] < 0 else q


def yaw_of(rotation: np.ndarray) -> np.ndarray:
    """Heading of the x axis of (..., 3, 3) rotations, projected on the ground plane."""
    return np.arctan2(rotation[..., 1, 0], rotation[..., 0, 0])


def wrap_angle(angle: np.ndarray | float) -> np.ndarray:
    """Wrap to [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


# A box's seven numbers by name, as the pipelines report them: metres, the yaw in radians from x towards y.
BOX_FIELDS = ("x", "y", "z", "length", "width", "height", "yaw")
# The 12 edges of a box as pairs of :func:`box_corners` indices: the bottom face, the top face, the uprights.
BOX_EDGES = ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7))


def camera_rotation(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """ego_from_camera rotation of a camera looking along ``yaw`` (camera x right, y down, z forward)."""
    ego_from_forward = rotation_from_euler(roll, pitch, yaw)  # forward frame: x ahead, y left, z up
    forward_from_camera = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
    return ego_from_forward @ forward_from_camera


def clip_edges(points_camera: np.ndarray, near: float) -> list[tuple[np.ndarray, np.ndarray]]:
    """The parts of a box's edges in front of the plane ``z = near`` in the camera frame: (8, 3) corners in, a
    list of (start, end) points out, an edge crossing the plane cut where it crosses."""
    segments = []
    for a, b in BOX_EDGES:
        start, end = points_camera[a], points_camera[b]
        if start[2] < near and end[2] < near:
            continue
        if start[2] < near or end[2] < near:
            alpha = (near - start[2]) / (end[2] - start[2])
            crossing = start + alpha * (end - start)
            start, end = (crossing, end) if start[2] < near else (start, crossing)
        segments.append((start, end))
    return segments


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of (K, 7) boxes ``(x, y, z, l, w, h, yaw)``. Returns (K, 8, 3).

    Corner order: the bottom face counter-clockwise from (+l/2, +w/2), then the top face in the
    same order.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    signs = np.array(
        [[1, 1, -1], [-1, 1, -1], [-1, -1, -1], [1, -1, -1], [1, 1, 1], [-1, 1, 1], [-1, -1, 1], [1, -1, 1]],
        dtype=np.float64,
    )
    corners_box = 0.5 * signs[None] * boxes[:, None, 3:6]  # (K, 8, 3)
    rotation = rotation_z(boxes[:, 6])  # (K, 3, 3)
    return np.einsum("kij,kpj->kpi", rotation, corners_box) + boxes[:, None, :3]


def points_in_boxes(points: np.ndarray, boxes: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Whether (P, 3) points lie inside (K, 7) boxes shrunk by ``margin`` metres on every face
    (grown where ``margin`` is negative). Returns (P, K) bool."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    offset = points[:, None, :] - boxes[None, :, :3]  # (P, K, 3)
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    local_x = offset[..., 0] * cos + offset[..., 1] * sin
    local_y = -offset[..., 0] * sin + offset[..., 1] * cos
    half = 0.5 * boxes[:, 3:6] - margin
    return (
        (np.abs(local_x) <= half[:, 0]) & (np.abs(local_y) <= half[:, 1]) & (np.abs(offset[..., 2]) <= half[:, 2])
    )


def ego_from_camera_of(sample: dict) -> np.ndarray:
    """A sample's (N, 4, 4) camera poses in the ego frame: its ``ego_from_camera``, or its
    ``ego_from_camera_rotation`` ((N, 3, 3) matrices or (N, 4) quaternions, as nuScenes' calibrated_sensor) and
    ``ego_from_camera_translation`` (N, 3) stacked."""
    if "ego_from_camera" in sample:
        if "ego_from_camera_rotation" in sample or "ego_from_camera_translation" in sample:
            raise ValueError("a sample gives its camera poses once: ego_from_camera, or ego_from_camera_rotation and "
                             "ego_from_camera_translation, not both")
        return np.asarray(sample["ego_from_camera"], np.float64)
    if "ego_from_camera_rotation" not in sample or "ego_from_camera_translation" not in sample:
        raise ValueError("a sample needs ego_from_camera (N, 4, 4), or ego_from_camera_rotation ((N, 3, 3) or (N, 4) "
                         "quaternions w, x, y, z) and ego_from_camera_translation (N, 3)")
    rotation = np.asarray(sample["ego_from_camera_rotation"], np.float64)
    translation = np.asarray(sample["ego_from_camera_translation"], np.float64)
    if rotation.ndim == 2 and rotation.shape[1] == 4:
        rotation = np.stack([quaternion_to_matrix(q) for q in rotation])
    if rotation.ndim != 3 or rotation.shape[1:] != (3, 3) or translation.shape != (len(rotation), 3):
        raise ValueError(f"ego_from_camera_rotation: expected (N, 3, 3) or (N, 4) and ego_from_camera_translation "
                         f"(N, 3), got {rotation.shape} and {translation.shape}")
    return make_transform(rotation, translation)
