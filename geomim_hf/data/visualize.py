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
