import numpy as np
import pytest
from PIL import Image

from geomim_hf.data.geometry import camera_rotation, make_transform
from geomim_hf.visualize import CLASS_COLORS, class_color, plot_detections, project_box_edges


def test_box_edges_project_where_a_pinhole_puts_them():
    """A 2 m cube 10 m ahead of a camera at the ego origin: its near face spans u = 50 +- 100 / 9."""
    intrinsics = np.array([[100.0, 0.0, 50.0], [0.0, 100.0, 50.0], [0.0, 0.0, 1.0]])
    camera_from_ego = np.linalg.inv(make_transform(camera_rotation(0.0), [0.0, 0.0, 0.0]))
    edges = project_box_edges([10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0], camera_from_ego, intrinsics, 100, 100)
    corners = edges.reshape(-1, 2)
    near = np.isclose(np.abs(corners[:, 0] - 50.0), 100.0 / 9.0)
    far = np.isclose(np.abs(corners[:, 0] - 50.0), 100.0 / 11.0)
    assert len(edges) == 12 and near.sum() + far.sum() == 24 and near.any() and far.any()
    assert np.allclose(np.abs(corners[:, 1] - 50.0)[near], 100.0 / 9.0)
    assert project_box_edges([-10.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0], camera_from_ego, intrinsics, 100, 100) is None
    assert project_box_edges([10.0, 30.0, 0.0, 2.0, 2.0, 2.0, 0.0], camera_from_ego, intrinsics, 100, 100) is None
    # A 10 m truck from 2 m behind the camera to 8 m ahead, 1 m up: drawn from the near plane on, at u = 50 + 100 / z
    edges = project_box_edges([3.0, 0.0, 0.0, 10.0, 2.0, 2.0, 0.0], camera_from_ego, intrinsics, 100, 100, near=0.5)
    depth = 100.0 / np.abs(edges[..., 1] - 50.0)  # every corner is 1 m above or below the camera
    assert len(edges) == 8 and np.isclose(depth.min(), 0.5) and np.isclose(depth.max(), 8.0)  # the back face: behind


def _sample():
    views = [np.full((90, 160, 3), 200, np.uint8), np.full((120, 160, 3), 200, np.uint8)]
    ego_from_camera = np.stack([make_transform(camera_rotation(0.0), [1.0, 0.0, 1.5]),
                                make_transform(camera_rotation(np.pi / 2), [1.0, 0.5, 1.5])])
    intrinsics = np.array([[[80.0, 0, 80], [0, 80.0, 45], [0, 0, 1]], [[80.0, 0, 80], [0, 80.0, 60], [0, 0, 1]]])
    return {"images": views, "intrinsics": intrinsics, "ego_from_camera": ego_from_camera}


def _has_color(image: Image.Image, color) -> bool:
    target = np.array(color[:3]) * 255
    return bool((np.abs(np.asarray(image, np.float64) - target).max(-1) < 12).sum() > 20)


def test_detections_are_drawn_in_their_class_colours(tmp_path):
    sample = _sample()
    detections = [{"score": 0.9, "label": "car", "velocity": {"x": 0.0, "y": 0.0}, "attribute": "vehicle.parked",
                   "box": {"x": 12.0, "y": 0.0, "z": 0.8, "length": 4.5, "width": 1.9, "height": 1.6, "yaw": 0.0}},
                  {"score": 0.2, "label": "pedestrian", "velocity": {"x": 0.0, "y": 0.0}, "attribute": None,
                   "box": {"x": 2.0, "y": 8.0, "z": 0.9, "length": 0.7, "width": 0.7, "height": 1.8, "yaw": 0.0}}]
    image = plot_detections(sample, detections, score_threshold=0.5)
    assert isinstance(image, Image.Image)
    assert _has_color(image, CLASS_COLORS["car"]) and not _has_color(image, CLASS_COLORS["pedestrian"])
    assert _has_color(plot_detections(sample, detections, score_threshold=0.1), CLASS_COLORS["pedestrian"])
    # post_process's dict gives the same picture, and a path is written
    as_model = {"boxes": np.array([[12.0, 0.0, 0.8, 4.5, 1.9, 1.6, 0.0]]), "scores": np.array([0.9]),
                "labels": np.array([0])}
    path = plot_detections(sample, as_model, str(tmp_path / "picture.png"), class_names=("car", "pedestrian"),
                           score_threshold=0.5)
    assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), np.asarray(image))
    with pytest.raises(ValueError, match="pass class_names"):
        plot_detections(sample, as_model)


def test_class_colours_are_the_same_in_every_picture():
    assert class_color("car") == CLASS_COLORS["car"]
    assert class_color("Vehicle") == class_color("Vehicle") != class_color("Cyclist")
