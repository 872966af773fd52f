"""Pictures of a nuScenes-format sample: six camera views with projected boxes and a bird's-eye
view of the LiDAR sweep with the boxes, drawn through the nuscenes-devkit's own projections.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .classes import NUSCENES_DETECTION_CLASSES  # noqa: E402
from .geometry import (  # noqa: E402
    box_corners,
    invert_rigid,
    make_transform,
    quaternion_to_matrix,
    rotation_z,
    transform_points,
    yaw_of,
)

CAMERA_LAYOUT = ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT")
CLASS_COLORS = {name: plt.get_cmap("tab10")(i) for i, name in enumerate(NUSCENES_DETECTION_CLASSES)}


def plot_nuscenes_sample(nusc, sample_token: str, path: str, bev_range: float = 50.0) -> str:
    """Save a figure of one sample to ``path``: the cameras (top) and the BEV (right), boxes
    coloured by detection class. ``nusc`` is a ``nuscenes.NuScenes``. Returns ``path``."""
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.data_classes import LidarPointCloud
    from nuscenes.utils.geometry_utils import BoxVisibility

    sample = nusc.get("sample", sample_token)
    figure = plt.figure(figsize=(20, 7.5))
    grid = figure.add_gridspec(2, 4, width_ratios=[1, 1, 1, 1.1])
    for index, channel in enumerate(CAMERA_LAYOUT):
        axes = figure.add_subplot(grid[index // 3, index % 3])
        image_path, boxes, intrinsics = nusc.get_sample_data(sample["data"][channel], box_vis_level=BoxVisibility.ANY)
        image = Image.open(image_path)
        axes.imshow(image)
        for box in boxes:
            name = category_to_detection_name(box.name)
            if name is not None:
                box.render(axes, view=intrinsics, normalize=True, colors=(CLASS_COLORS[name],) * 3, linewidth=1)
        axes.set_xlim(0, image.width)
        axes.set_ylim(image.height, 0)
        axes.set_title(channel, fontsize=9)
        axes.axis("off")

    axes = figure.add_subplot(grid[:, 3])
    lidar_token = sample["data"]["LIDAR_TOP"]
    lidar_path, boxes, _ = nusc.get_sample_data(lidar_token, use_flat_vehicle_coordinates=True)
    cloud = LidarPointCloud.from_file(lidar_path)
    record = nusc.get("sample_data", lidar_token)
    calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", record["ego_pose_token"])
    # The devkit's flat vehicle frame: the ego pose's position and yaw, without pitch and roll.
    global_from_ego = make_transform(quaternion_to_matrix(pose["rotation"]), pose["translation"])
    ego_from_lidar = make_transform(quaternion_to_matrix(calibration["rotation"]), calibration["translation"])
    global_from_flat = make_transform(rotation_z(yaw_of(global_from_ego[:3, :3])), pose["translation"])
    flat_from_lidar = invert_rigid(global_from_flat) @ global_from_ego @ ego_from_lidar
    points = transform_points(flat_from_lidar, cloud.points[:3].T).T
    near = (np.abs(points[0]) < bev_range) & (np.abs(points[1]) < bev_range)
    axes.scatter(points[0, near], points[1, near], s=0.3, c=np.clip(points[2, near], -0.5, 4.0), cmap="Greys",
                 vmin=-2.0, vmax=4.0)
    for box in boxes:
        name = category_to_detection_name(box.name)
        if name is not None:
            box.render(axes, view=np.eye(4), colors=(CLASS_COLORS[name],) * 3, linewidth=1.2)
    axes.plot(0, 0, "k^", markersize=8)
    axes.set_xlim(-bev_range, bev_range)
    axes.set_ylim(-bev_range, bev_range)
    axes.set_aspect("equal")
    axes.set_title("LIDAR_TOP, ego frame (x forward)", fontsize=9)
    handles = [plt.Line2D([], [], color=c, label=n) for n, c in CLASS_COLORS.items()]
    axes.legend(handles=handles, loc="lower right", fontsize=7)
    figure.suptitle(f"{nusc.get('scene', sample['scene_token'])['name']}  sample {sample_token[:8]}")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path


def _draw_box_bev(axes, box, color, linewidth=1.2):
    corners = box_corners(np.asarray(box, np.float64)[None])[0, :4, :2]
    closed = np.concatenate([corners, corners[:1]])
    axes.plot(closed[:, 0], closed[:, 1], color=color, linewidth=linewidth)
    front = corners[[0, 3]].mean(0)  # the face ahead of the heading
    axes.plot([box[0], front[0]], [box[1], front[1]], color=color, linewidth=linewidth)


def _draw_box_camera(axes, box, camera_from_ego, intrinsics, width, height, color):
    corners = transform_points(camera_from_ego, box_corners(np.asarray(box, np.float64)[None])[0])
    if (corners[:, 2] < 0.5).any():
        return
    pixels = corners @ intrinsics.T
    uv = pixels[:, :2] / pixels[:, 2:3]
    if uv[:, 0].max() < 0 or uv[:, 0].min() > width or uv[:, 1].max() < 0 or uv[:, 1].min() > height:
        return
    for a, b in ((0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)):
        axes.plot(uv[[a, b], 0], uv[[a, b], 1], color=color, linewidth=0.8)


def plot_detections(row: dict, prediction: dict, path: str, class_names, score_threshold: float = 0.3,
                    bev_range: float = 50.0) -> str:
    """Predictions (red) against ground truth (green) for one sample-contract row: the camera views
    with projected boxes and the BEV with the LiDAR keyframe. ``prediction``: ego-frame ``boxes``,
    ``scores``, ``labels`` (NumPy or tensors)."""
    boxes = np.asarray(prediction["boxes"])
    keep = np.asarray(prediction["scores"]) >= score_threshold
    boxes, labels = boxes[keep], np.asarray(prediction["labels"])[keep]
    truth = np.asarray(row["boxes"]).reshape(-1, 7)
    views = len(row["images"])
    columns = (views + 1) // 2
    figure = plt.figure(figsize=(5 * columns + 7, 7.5))
    grid = figure.add_gridspec(2, columns + 1, width_ratios=[1] * columns + [1.3])
    for view in range(views):
        axes = figure.add_subplot(grid[view // columns, view % columns])
        image = row["images"][view]
        axes.imshow(image)
        camera_from_ego = invert_rigid(np.asarray(row["ego_from_camera"][view], np.float64))
        intrinsics = np.asarray(row["intrinsics"][view], np.float64)
        for box in truth:
            _draw_box_camera(axes, box, camera_from_ego, intrinsics, image.width, image.height, "limegreen")
        for box in boxes:
            _draw_box_camera(axes, box, camera_from_ego, intrinsics, image.width, image.height, "red")
        axes.set_xlim(0, image.width)
        axes.set_ylim(image.height, 0)
        axes.set_title(row["camera_names"][view], fontsize=9)
        axes.axis("off")
    axes = figure.add_subplot(grid[:, columns])
    if "lidar_points" in row:
        points = transform_points(np.asarray(row["ego_from_lidar"], np.float64),
                                  np.asarray(row["lidar_points"])[:, :3].astype(np.float64))
        near = (np.abs(points[:, 0]) < bev_range) & (np.abs(points[:, 1]) < bev_range)
        axes.scatter(points[near, 0], points[near, 1], s=0.2, c="0.6")
    for box in truth:
        _draw_box_bev(axes, box, "limegreen")
    for box, label in zip(boxes, labels):
        _draw_box_bev(axes, box, "red")
        axes.text(box[0], box[1], class_names[int(label)][:4], fontsize=6, color="red")
    axes.plot(0, 0, "k^", markersize=8)
    axes.set_xlim(-bev_range, bev_range)
    axes.set_ylim(-bev_range, bev_range)
    axes.set_aspect("equal")
    axes.set_title(f"BEV, ego frame: ground truth (green), predictions >= {score_threshold} (red)", fontsize=9)
    figure.suptitle(f"sample {row['sample_token'][:16]}")
    figure.tight_layout()
    figure.savefig(path, dpi=70)
    plt.close(figure)
    return path


def plot_map_segmentation(row: dict, probabilities, path: str, class_names, bev_range: float = 50.0) -> str:
    """A BEV segmenter's per-class probabilities (colour) against the ground-truth masks (green outline) for
    one sample-contract row with ``map_masks`` (``load_nuscenes(..., map_masks=True)``), beside its cameras.
    ``probabilities``: (C, Y, X) on the masks' grid (x and y in [-bev_range, bev_range], rows along y)."""
    probabilities = np.asarray(probabilities, np.float32)
    truth = np.asarray(row["map_masks"], bool)
    if probabilities.shape != truth.shape or len(class_names) != len(truth):
        raise ValueError(f"probabilities must be (C, Y, X) = {truth.shape} like the row's map_masks, one per "
                         f"class of {list(class_names)}; got {probabilities.shape}")
    views, classes = len(row["images"]), len(class_names)
    camera_columns, map_columns = (views + 1) // 2, (classes + 1) // 2
    figure = plt.figure(figsize=(4 * camera_columns + 3.6 * map_columns, 7.5))
    grid = figure.add_gridspec(2, camera_columns + map_columns)
    for view in range(views):
        axes = figure.add_subplot(grid[view // camera_columns, view % camera_columns])
        axes.imshow(row["images"][view])
        axes.set_title(row["camera_names"][view], fontsize=9)
        axes.axis("off")
    extent = (-bev_range, bev_range, -bev_range, bev_range)
    for index, name in enumerate(class_names):
        axes = figure.add_subplot(grid[index // map_columns, camera_columns + index % map_columns])
        axes.imshow(probabilities[index], origin="lower", extent=extent, cmap="magma", vmin=0.0, vmax=1.0)
        if truth[index].any():
            axes.contour(truth[index].astype(np.float32), levels=[0.5], origin="lower", extent=extent,
                         colors="limegreen", linewidths=0.8)
        axes.plot(0, 0, "w^", markersize=5)
        axes.set_title(name, fontsize=9)
        axes.tick_params(labelsize=6)
    figure.suptitle(f"sample {row['sample_token'][:16]}: BEV (x forward, to the right) probability, "
                    "ground truth outlined in green")
    figure.tight_layout()
    figure.savefig(path, dpi=70)
    plt.close(figure)
    return path
