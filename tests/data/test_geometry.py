import numpy as np
import pytest
from nuscenes.utils.data_classes import Box
from nuscenes.utils.geometry_utils import points_in_box
from pyquaternion import Quaternion

from geomim_hf.data.geometry import (
    box_corners,
    invert_rigid,
    make_transform,
    matrix_to_quaternion,
    points_in_boxes,
    quaternion_to_matrix,
    rotation_from_euler,
    transform_points,
    wrap_angle,
)


def random_rotations(count, seed=0):
    rng = np.random.default_rng(seed)
    return [Quaternion(q / np.linalg.norm(q)) for q in rng.standard_normal((count, 4))]


@pytest.mark.parametrize("quaternion", random_rotations(50))
def test_quaternions_match_pyquaternion(quaternion):
    np.testing.assert_allclose(quaternion_to_matrix(quaternion.elements), quaternion.rotation_matrix, atol=1e-12)
    recovered = matrix_to_quaternion(quaternion.rotation_matrix)
    assert recovered[0] >= 0
    # q and -q are the same rotation.
    assert min(np.abs(recovered - quaternion.elements).max(), np.abs(recovered + quaternion.elements).max()) < 1e-9


def test_matrix_to_quaternion_near_half_turns():
    for axis in np.eye(3):
        rotation = Quaternion(axis=axis, angle=np.pi - 1e-9).rotation_matrix
        np.testing.assert_allclose(quaternion_to_matrix(matrix_to_quaternion(rotation)), rotation, atol=1e-9)


def test_rigid_inverse_and_transform_points():
    rng = np.random.default_rng(1)
    target_from_source = make_transform(rotation_from_euler(*rng.uniform(-3, 3, 3)), rng.normal(size=3) * 10)
    np.testing.assert_allclose(invert_rigid(target_from_source), np.linalg.inv(target_from_source), atol=1e-12)
    points = rng.normal(size=(7, 3))
    homogeneous = np.concatenate([points, np.ones((7, 1))], 1) @ target_from_source.T
    np.testing.assert_allclose(transform_points(target_from_source, points), homogeneous[:, :3], atol=1e-12)


def test_rotation_from_euler_is_z_y_x():
    roll, pitch, yaw = 0.1, -0.2, 0.7
    expected = (Quaternion(axis=[0, 0, 1], angle=yaw) * Quaternion(axis=[0, 1, 0], angle=pitch)
                * Quaternion(axis=[1, 0, 0], angle=roll)).rotation_matrix
    np.testing.assert_allclose(rotation_from_euler(roll, pitch, yaw), expected, atol=1e-12)


def _devkit_box(box):
    x, y, z, length, width, height, yaw = box
    return Box([x, y, z], [width, length, height], Quaternion(axis=[0, 0, 1], angle=yaw))


def test_box_corners_are_the_devkit_corners():
    box = np.array([3.0, -2.0, 0.9, 4.5, 1.9, 1.8, 0.6])
    ours = box_corners(box[None])[0]
    theirs = _devkit_box(box).corners().T
    # Same set of points (the corner order differs by convention).
    distances = np.linalg.norm(ours[:, None] - theirs[None], axis=-1)
    assert np.allclose(distances.min(1), 0, atol=1e-12) and np.allclose(distances.min(0), 0, atol=1e-12)


def test_points_in_boxes_matches_devkit():
    rng = np.random.default_rng(2)
    boxes = np.array([[0.0, 0.0, 1.0, 4.0, 2.0, 2.0, 0.3], [5.0, 3.0, 0.5, 1.0, 0.6, 1.0, -1.2]])
    points = rng.uniform(-3, 7, size=(4000, 3))
    ours = points_in_boxes(points, boxes)
    for k, box in enumerate(boxes):
        np.testing.assert_array_equal(ours[:, k], points_in_box(_devkit_box(box), points.T))
    assert ours.sum() > 50
    shrunk = points_in_boxes(points, boxes, margin=0.1)
    assert (shrunk <= ours).all() and shrunk.sum() < ours.sum()


def test_wrap_angle():
    np.testing.assert_allclose(wrap_angle(np.array([np.pi + 0.1, -np.pi - 0.1, 0.5])), [-np.pi + 0.1, np.pi - 0.1, 0.5])
