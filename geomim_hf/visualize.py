"""Pictures: 3D boxes in BEV and projected into every camera, BEV map masks, and a nuScenes sample as the
nuscenes-devkit draws it.

:func:`plot_detections` takes a sample as the pipelines do (``images``, ``intrinsics``, ``ego_from_camera``; a
dataset row of the sample contract is one) and detections as ``pipeline("bev-object-detection")`` returns them
(or as the model's ``post_process``), coloured by class; it returns a PIL image, or writes a file.
"""

from __future__ import annotations

import zlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from .data.classes import NUSCENES_DETECTION_CLASSES  # noqa: E402
from .data.geometry import (  # noqa: E402
    BOX_FIELDS,
    box_corners,
    clip_edges,
    ego_from_camera_of,
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


def class_color(name: str) -> tuple:
    """A class's colour, the same in every picture: nuScenes' ten classes keep theirs, another name takes one of
    tab20's by a hash of the name."""
    if name in CLASS_COLORS:
        return CLASS_COLORS[name]
    return plt.get_cmap("tab20")(zlib.crc32(name.encode()) % 20)


def project_box_edges(box, camera_from_ego: np.ndarray, intrinsics: np.ndarray, width: int, height: int,
                      near: float = 0.5) -> np.ndarray | None:
    """The edges of an ego-frame box ``(x, y, z, l, w, h, yaw)`` in an image's pixels, (E, 2, 2) as ``[edge, end,
    (u, v)]``, cut at ``near`` metres in front of the camera (an edge reaching behind it is drawn up to there), or
    None when nothing of the box is in front of the camera or it falls outside the image."""
    corners = transform_points(camera_from_ego, box_corners(np.asarray(box, np.float64)[None])[0])
    segments = clip_edges(corners, near)
    if not segments:
        return None
    pixels = np.stack([np.stack(segment) for segment in segments]) @ np.asarray(intrinsics, np.float64).T
    uv = pixels[..., :2] / pixels[..., 2:3]  # (E, 2, 2)
    if uv[..., 0].max() < 0 or uv[..., 0].min() > width or uv[..., 1].max() < 0 or uv[..., 1].min() > height:
        return None
    return uv


def _draw_box_bev(axes, box, color, linewidth=1.2, linestyle="-"):
    corners = box_corners(np.asarray(box, np.float64)[None])[0, :4, :2]
    closed = np.concatenate([corners, corners[:1]])
    axes.plot(closed[:, 0], closed[:, 1], color=color, linewidth=linewidth, linestyle=linestyle)
    front = corners[[0, 3]].mean(0)  # the face ahead of the heading
    axes.plot([box[0], front[0]], [box[1], front[1]], color=color, linewidth=linewidth, linestyle=linestyle)


def _detection_list(detections, class_names) -> list[tuple[np.ndarray, float, str]]:
    """(box (7,), score, class name) from a pipeline's list of dicts or a ``post_process`` dict."""
    if isinstance(detections, dict):
        if class_names is None:
            raise ValueError("detections from post_process hold class ids: pass class_names (the config's)")
        return [(np.asarray(box, np.float64), float(score), class_names[int(label)]) for box, score, label in
                zip(np.asarray(detections["boxes"]), np.asarray(detections["scores"]), np.asarray(detections["labels"]))]
    return [(np.array([d["box"][k] for k in BOX_FIELDS], np.float64), float(d["score"]), d["label"])
            for d in detections]


def _figure_image(figure, path: str | None):
    if path is not None:
        figure.savefig(path, dpi=70)
        plt.close(figure)
        return path
    figure.set_dpi(70)
    figure.canvas.draw()
    image = Image.fromarray(np.asarray(figure.canvas.buffer_rgba())[..., :3].copy())
    plt.close(figure)
    return image


def plot_detections(sample: dict, detections, path: str | None = None, class_names=None,
                    score_threshold: float = 0.3, bev_range: float = 50.0):
    """Detections drawn in every camera and in BEV, coloured by class, with their scores in BEV.

    Args:
        sample: ``images`` (PIL images, paths or arrays), ``intrinsics`` (N, 3, 3) and ``ego_from_camera`` (N, 4, 4)
            (or ``ego_from_camera_rotation`` and ``_translation``), as the pipelines take; optional
            ``camera_names``, ground truth ``boxes`` (K, 7) (drawn dashed black), ``lidar_points`` with
            ``ego_from_lidar`` (grey dots in BEV) and ``sample_token``: a dataset row has them all.
        detections: a pipeline's output for the sample (a list of dicts), or ``post_process``'s dict for it (ego
            ``boxes``, ``scores``, ``labels``; then ``class_names`` says what the labels are).
        path: write the figure there and return the path; None returns a PIL image.
        score_threshold: draw the detections at or above it.
    """
    from .image_processing_geomim import check_cameras, open_view  # transformers' image utilities: when drawing

    found = [d for d in _detection_list(detections, class_names) if d[1] >= score_threshold]
    images = [open_view(view, f"images[{n}]") for n, view in enumerate(sample["images"])]
    intrinsics, ego_from_camera = check_cameras(sample["intrinsics"], ego_from_camera_of(sample), len(images))
    camera_from_ego = invert_rigid(ego_from_camera)
    truth = np.asarray(sample.get("boxes", np.zeros((0, 7))), np.float64).reshape(-1, 7)
    views = len(images)
    columns = (views + 1) // 2
    figure = plt.figure(figsize=(5 * columns + 7, 7.5))
    grid = figure.add_gridspec(2, columns + 1, width_ratios=[1] * columns + [1.3])
    for view, image in enumerate(images):
        axes = figure.add_subplot(grid[view // columns, view % columns])
        axes.imshow(image)
        boxes = [(box, "black", "--", 0.7) for box in truth] + \
            [(box, class_color(name), "-", 1.0) for box, _, name in found]
        for box, color, style, width in boxes:
            edges = project_box_edges(box, camera_from_ego[view], intrinsics[view], image.width, image.height)
            for edge in [] if edges is None else edges:
                axes.plot(edge[:, 0], edge[:, 1], color=color, linestyle=style, linewidth=width)
        axes.set_xlim(0, image.width)
        axes.set_ylim(image.height, 0)
        axes.set_title(sample.get("camera_names", [f"view {n}" for n in range(views)])[view], fontsize=9)
        axes.axis("off")
    axes = figure.add_subplot(grid[:, columns])
    if "lidar_points" in sample:
        points = transform_points(np.asarray(sample["ego_from_lidar"], np.float64),
                                  np.asarray(sample["lidar_points"])[:, :3].astype(np.float64))
        near = (np.abs(points[:, 0]) < bev_range) & (np.abs(points[:, 1]) < bev_range)
        axes.scatter(points[near, 0], points[near, 1], s=0.2, c="0.6")
    for box in truth:
        _draw_box_bev(axes, box, "black", linewidth=0.9, linestyle="--")
    for box, score, name in found:
        _draw_box_bev(axes, box, class_color(name))
        axes.text(box[0], box[1], f"{score:.2f}", fontsize=6, color=class_color(name))
    for view in range(views):  # the cameras, looking along their z axis
        position, forward = ego_from_camera[view, :2, 3], ego_from_camera[view, :2, 2]
        axes.annotate("", position + 3.0 * forward / max(np.linalg.norm(forward), 1e-9), position,
                      arrowprops={"arrowstyle": "->", "color": "0.3", "linewidth": 0.8})
    axes.plot(0, 0, "k^", markersize=8)
    axes.set_xlim(-bev_range, bev_range)
    axes.set_ylim(-bev_range, bev_range)
    axes.set_aspect("equal")
    shown = dict.fromkeys(name for _, _, name in found)  # in the order of their first detection
    handles = [plt.Line2D([], [], color=class_color(name), label=name) for name in shown]
    if len(truth):
        handles.append(plt.Line2D([], [], color="black", linestyle="--", label="ground truth"))
    if handles:
        axes.legend(handles=handles, loc="lower right", fontsize=7)
    axes.set_title(f"BEV, ego frame (x forward, y left): detections with score >= {score_threshold}", fontsize=9)
    if "sample_token" in sample:
        figure.suptitle(f"sample {sample['sample_token'][:16]}")
    figure.tight_layout()
    return _figure_image(figure, path)


def plot_map_segmentation(row: dict, probabilities, path: str | None, class_names, bev_range: float = 50.0):
    """A BEV segmenter's per-class probabilities (colour) against the ground-truth masks (green outline) for
    one sample-contract row with ``map_masks`` (``load_nuscenes(..., map_masks=True)``), beside its cameras.
    ``probabilities``: (C, Y, X) on the masks' grid (x and y in [-bev_range, bev_range], rows along y). Writes
    ``path`` and returns it, or returns a PIL image when ``path`` is None."""
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
    return _figure_image(figure, path)
