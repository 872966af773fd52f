import numpy as np
import pytest

from geomim_hf.data.geometry import make_transform, points_in_boxes, rotation_from_euler, transform_points
from geomim_hf.data.targets import augment_boxes, augment_points, bev_augmentation_matrix, depth_maps


def _random_rig(rng, views=3):
    ego_from_camera = np.stack([
        make_transform(rotation_from_euler(-np.pi / 2 + rng.normal(0, 0.05), rng.normal(0, 0.05),
                                           -np.pi / 2 + yaw), rng.normal(0, 0.5, 3))
        for yaw in np.linspace(0, 2 * np.pi, views, endpoint=False)])
    intrinsics = np.stack([np.array([[300.0, 0, 160], [0, 300.0, 90], [0, 0, 1]])] * views)
    processed_from_original = np.stack([np.array([[0.9, 0.05, -3.0], [-0.05, 0.9, 4.0], [0, 0, 1.0]])] * views)
    return ego_from_camera, intrinsics, processed_from_original


def test_depth_maps_match_a_per_point_loop():
    rng = np.random.default_rng(0)
    ego_from_camera, intrinsics, processed_from_original = _random_rig(rng)
    ego_from_lidar = make_transform(rotation_from_euler(0.01, -0.02, 0.3), np.array([1.0, 0.0, 1.8]))
    points = rng.uniform(-40, 40, size=(20000, 4))
    points[:, 2] = rng.uniform(-2, 3, len(points))
    maps = depth_maps(points, ego_from_lidar, ego_from_camera, intrinsics, processed_from_original, (180, 320), 16)
    expected = np.zeros((3, 180 // 16, 320 // 16))
    for view in range(3):  # slow and obviously right
        camera_from_lidar = np.linalg.inv(ego_from_camera[view]) @ ego_from_lidar
        projection = processed_from_original[view] @ intrinsics[view]
        for point in points:
            x, y, z = (camera_from_lidar @ np.append(point[:3], 1.0))[:3]
            if z <= 1e-3:
                continue
            u, v, w = projection @ np.array([x, y, z])
            column, row = int(np.floor((u / w + 0.5) / 16)), int(np.floor((v / w + 0.5) / 16))
            if 0 <= row < expected.shape[1] and 0 <= column < expected.shape[2]:
                if expected[view, row, column] == 0 or z < expected[view, row, column]:
                    expected[view, row, column] = z
    np.testing.assert_allclose(maps, expected, rtol=1e-6)
    assert (maps > 0).sum() > 100


@pytest.mark.parametrize("flip_x, flip_y", [(False, False), (True, False), (False, True), (True, True)])
def test_bev_augmentation_keeps_points_inside_their_boxes(flip_x, flip_y):
    rng = np.random.default_rng(1)
    boxes = np.array([[10.0, 5.0, 0.9, 4.5, 1.9, 1.8, 0.4], [-8.0, -3.0, 1.0, 0.7, 0.7, 1.8, -2.0]])
    ego_from_lidar = make_transform(rotation_from_euler(0.0, 0.0, -np.pi / 2), np.array([1.0, 0.0, 1.8]))
    points_ego = np.concatenate([  # inside each box: uniform in its own frame, then turned by its yaw
        box[:3] + rng.uniform(-0.48, 0.48, (200, 3)) * box[3:6] @ rotation_from_euler(0, 0, box[6]).T
        for box in boxes])
    assert points_in_boxes(points_ego, boxes)[:200, 0].all()
    points_lidar = transform_points(np.linalg.inv(ego_from_lidar), points_ego)
    points_lidar = np.concatenate([points_lidar, rng.uniform(0, 255, (len(points_lidar), 2))], 1)
    matrix = bev_augmentation_matrix(np.deg2rad(17.0), 1.04, flip_x, flip_y)
    new_boxes, new_velocities = augment_boxes(boxes, np.array([[3.0, 1.0], [0.0, -1.0]]), matrix)
    new_points = augment_points(points_lidar, ego_from_lidar, matrix)
    inside = points_in_boxes(transform_points(ego_from_lidar, new_points[:, :3].astype(np.float64)),
                             new_boxes, margin=1e-4)
    assert inside[:200, 0].all() and inside[200:, 1].all() and not inside[:200, 1].any()
    np.testing.assert_array_equal(new_points[:, 3:], points_lidar[:, 3:].astype(np.float32))
    np.testing.assert_allclose(new_boxes[:, 3:6], boxes[:, 3:6] * 1.04, rtol=1e-6)
    speed = np.linalg.norm([[3.0, 1.0], [0.0, -1.0]], axis=1) * 1.04
    np.testing.assert_allclose(np.linalg.norm(new_velocities, axis=1), speed, rtol=1e-6)


def test_bev_mirror_hand_case():
    """Mirroring y (left/right) sends (x, y, yaw) to (x, -y, -yaw); mirroring x to (-x, y, pi - yaw)."""
    box = np.array([[4.0, 2.0, 1.0, 4.0, 2.0, 1.5, 0.3]])
    velocity = np.array([[1.0, 2.0]])
    mirrored_y, velocity_y = augment_boxes(box, velocity, bev_augmentation_matrix(0.0, 1.0, False, True))
    np.testing.assert_allclose(mirrored_y[0, [0, 1, 6]], [4.0, -2.0, -0.3], atol=1e-6)
    np.testing.assert_allclose(velocity_y, [[1.0, -2.0]], atol=1e-6)
    mirrored_x, velocity_x = augment_boxes(box, velocity, bev_augmentation_matrix(0.0, 1.0, True, False))
    np.testing.assert_allclose(mirrored_x[0, [0, 1]], [-4.0, 2.0], atol=1e-6)
    assert np.cos(mirrored_x[0, 6] - (np.pi - 0.3)) == pytest.approx(1.0)
    np.testing.assert_allclose(velocity_x, [[-1.0, 2.0]], atol=1e-6)
    turned, _ = augment_boxes(box, velocity, bev_augmentation_matrix(np.pi / 2, 1.0, False, False))
    np.testing.assert_allclose(turned[0, [0, 1]], [-2.0, 4.0], atol=1e-6)
    assert np.cos(turned[0, 6] - (0.3 + np.pi / 2)) == pytest.approx(1.0)
