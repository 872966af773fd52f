"""The simulated sensor rigs (nuScenes' six cameras and LIDAR_TOP, Waymo's five cameras and TOP
LiDAR) and the LiDAR sweep as it is stored. Sensors are exact ray casts (:mod:`.raycast`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.geometry import camera_rotation, make_transform, points_in_boxes, rotation_from_euler, transform_points
from .raycast import cast_lidar
from .world import Scene

# --------------------------------------------------------------------------------------------------
# Sensor rigs


@dataclass
class CameraSpec:
    """A pinhole camera. ``ego_from_camera`` uses the camera frame x right, y down, z forward;
    ``time_offset``: seconds after the LiDAR sweep time at which this camera fires."""

    name: str
    width: int
    height: int
    intrinsics: np.ndarray
    ego_from_camera: np.ndarray
    time_offset: float = 0.0


@dataclass
class LidarSpec:
    """A spinning LiDAR. ``elevations`` (B,) and ``azimuths`` (A,) in radians in the sensor frame,
    in the row and column order its writer stores."""

    name: str
    elevations: np.ndarray
    azimuths: np.ndarray
    max_range: float
    ego_from_lidar: np.ndarray
    range_noise: float = 0.02


@dataclass
class SensorRig:
    cameras: list[CameraSpec]
    lidar: LidarSpec


def _intrinsics(focal: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[focal, 0.0, cx], [0.0, focal, cy], [0.0, 0.0, 1.0]])


# name, position in the ego frame, yaw (deg), focal length, principal point: close to nuScenes' rig.
NUSCENES_CAMERAS = (
    ("CAM_FRONT", (1.70, 0.016, 1.51), 0.0, 1266.4, (816.3, 491.5)),
    ("CAM_FRONT_RIGHT", (1.55, -0.493, 1.50), -55.0, 1260.8, (807.9, 495.3)),
    ("CAM_FRONT_LEFT", (1.52, 0.495, 1.51), 55.0, 1272.6, (826.6, 479.8)),
    ("CAM_BACK", (0.03, 0.004, 1.58), 180.0, 809.2, (829.2, 481.8)),
    ("CAM_BACK_LEFT", (1.04, 0.485, 1.59), 110.0, 1256.7, (817.8, 451.9)),
    ("CAM_BACK_RIGHT", (1.01, -0.480, 1.56), -110.0, 1259.5, (807.3, 501.2)),
)


def nuscenes_rig(rng: np.random.Generator, azimuth_steps: int = 1084) -> SensorRig:
    """Six 1600x900 cameras and a 32-beam LIDAR_TOP (x right, y forward, z up), each mounting
    perturbed by a fraction of a degree per log as real calibrations are."""
    cameras = []
    for name, position, yaw_degrees, focal, (cx, cy) in NUSCENES_CAMERAS:
        yaw = np.deg2rad(yaw_degrees + rng.normal(0, 0.3))
        rotation = camera_rotation(yaw, np.deg2rad(rng.normal(0, 0.4)), np.deg2rad(rng.normal(0, 0.3)))
        translation = np.asarray(position) + rng.normal(0, 0.005, 3)
        # The LiDAR spins clockwise from straight ahead; each camera fires as it sweeps past.
        offset = 0.004 + ((-np.deg2rad(yaw_degrees)) % (2 * np.pi)) / (2 * np.pi) * 0.05
        cameras.append(CameraSpec(name, 1600, 900, _intrinsics(focal, cx, cy), make_transform(rotation, translation),
                                  offset))
    lidar_rotation = rotation_from_euler(np.deg2rad(rng.normal(0, 0.2)), np.deg2rad(rng.normal(0, 0.2)),
                                         np.deg2rad(-90.0 + rng.normal(0, 0.3)))
    lidar = LidarSpec(
        name="LIDAR_TOP",
        elevations=np.deg2rad(np.linspace(-30.67, 10.67, 32)),
        azimuths=np.linspace(-np.pi, np.pi, azimuth_steps, endpoint=False),
        max_range=70.0,
        ego_from_lidar=make_transform(lidar_rotation, np.array([0.986, 0.0, 1.84])),
    )
    return SensorRig(cameras, lidar)


# Waymo: camera name, position, yaw (deg), width, height; focal lengths near the real ~2060 px.
WAYMO_CAMERAS = (
    ("FRONT", (1.54, -0.02, 2.12), 0.0, 1920, 1280),
    ("FRONT_LEFT", (1.50, 0.09, 2.12), 45.5, 1920, 1280),
    ("FRONT_RIGHT", (1.50, -0.09, 2.12), -45.5, 1920, 1280),
    ("SIDE_LEFT", (1.43, 0.10, 2.12), 90.0, 1920, 886),
    ("SIDE_RIGHT", (1.43, -0.10, 2.12), -90.0, 1920, 886),
)
WAYMO_TOP_WIDTH, WAYMO_TOP_BEAMS = 2650, 64


def waymo_rig(rng: np.random.Generator) -> SensorRig:
    """Five cameras and the 64-beam TOP LiDAR. The LiDAR's rows run from the highest beam down and
    its columns follow Waymo's range-image azimuths, so a scan is the stored range image."""
    cameras = []
    for name, position, yaw_degrees, width, height in WAYMO_CAMERAS:
        rotation = camera_rotation(np.deg2rad(yaw_degrees + rng.normal(0, 0.3)), np.deg2rad(rng.normal(0, 0.4)),
                                   np.deg2rad(rng.normal(0, 0.3)))
        focal = 2060.0 + rng.normal(0, 8.0)
        cameras.append(CameraSpec(name, width, height, _intrinsics(focal, width / 2 + rng.normal(0, 4),
                                                                    height / 2 + rng.normal(0, 4)),
                                  make_transform(rotation, np.asarray(position)),
                                  time_offset=0.02 + 0.01 * len(cameras)))
    lidar_yaw = np.deg2rad(rng.normal(0.0, 0.8))
    ego_from_lidar = make_transform(rotation_from_euler(0.0, 0.0, lidar_yaw), np.array([1.43, 0.0, 2.184]))
    inclinations = np.sort(np.deg2rad(np.linspace(-17.6, 2.4, WAYMO_TOP_BEAMS) + rng.normal(0, 0.05, WAYMO_TOP_BEAMS)))
    columns = np.arange(WAYMO_TOP_WIDTH)
    azimuths = np.pi - 2 * np.pi * (columns + 0.5) / WAYMO_TOP_WIDTH - lidar_yaw
    lidar = LidarSpec("TOP", inclinations[::-1].copy(), azimuths, 75.0, ego_from_lidar)
    return SensorRig(cameras, lidar)


# A rig unlike both: four cameras at other mounting heights, focal lengths and image sizes, for running models on
# a rig they were not trained on. Name, position in the ego frame, yaw (deg), focal length, width, height.
FOUR_CAMERAS = (
    ("FRONT", (2.10, 0.0, 2.05), 0.0, 1050.0, 1280, 720),
    ("LEFT", (1.00, 0.92, 1.15), 90.0, 520.0, 960, 600),
    ("RIGHT", (1.00, -0.92, 1.15), -90.0, 520.0, 960, 600),
    ("BACK", (-0.60, 0.0, 1.85), 180.0, 1500.0, 1440, 1080),
)


def four_camera_rig() -> list[CameraSpec]:
    """The cameras of :data:`FOUR_CAMERAS`, principal points at the image centres."""
    return [CameraSpec(name, width, height, _intrinsics(focal, (width - 1) / 2, (height - 1) / 2),
                       make_transform(camera_rotation(np.deg2rad(yaw_degrees)), np.asarray(position)))
            for name, position, yaw_degrees, focal, width, height in FOUR_CAMERAS]


def render_views(scene: Scene, cameras: list[CameraSpec], t: float) -> dict:
    """What a user of the rig ``cameras`` has at time ``t``: ``images`` (N arrays (H, W, 3) uint8), ``intrinsics``
    (N, 3, 3), ``ego_from_camera`` (N, 4, 4) and ``camera_names``, the pipelines' sample."""
    from .raycast import render_camera

    world, global_from_ego = scene.world_at(t), scene.global_from_ego(t)
    images = [render_camera(world, global_from_ego @ camera.ego_from_camera, camera.intrinsics, camera.width,
                            camera.height)[0] for camera in cameras]
    return {"images": images, "intrinsics": np.stack([camera.intrinsics for camera in cameras]),
            "ego_from_camera": np.stack([camera.ego_from_camera for camera in cameras]),
            "camera_names": [camera.name for camera in cameras]}


# Returns closer than this to an annotation's surface are dropped, so that whether a return lies in
# a box never depends on float rounding (points are stored as float32).
BOX_SURFACE_TOLERANCE = 0.002


def cast_lidar_settled(scene: Scene, lidar: LidarSpec, t: float, rng: np.random.Generator):
    """One LiDAR sweep at time ``t``, as it is stored: returns the scan and ``inside`` (B, A), the
    actor whose box holds each return, or -1. Returns within ``BOX_SURFACE_TOLERANCE`` of a box
    surface are removed from the scan (range 0), so any exact points-in-box count over the stored
    points (the devkit's included) agrees with ``inside``."""
    world = scene.world_at(t)
    global_from_lidar = scene.global_from_ego(t) @ lidar.ego_from_lidar
    scan = cast_lidar(world, global_from_lidar, lidar.elevations, lidar.azimuths, lidar.max_range,
                      lidar.range_noise, rng)
    valid = scan.range > 0
    points_lidar = (scan.directions[valid] * scan.range[valid][:, None]).astype(np.float32)  # as stored
    points_global = transform_points(global_from_lidar, points_lidar.astype(np.float64))
    boxes = world.boxes[: len(scene.actors)]
    reach = np.flatnonzero(np.linalg.norm(boxes[:, :2] - global_from_lidar[:2, 3], axis=1) < lidar.max_range + 20.0)
    inside = np.full(len(points_global), -1)
    keep = np.ones(len(points_global), dtype=bool)
    for start in range(0, len(points_global), 8192):
        chunk = slice(start, start + 8192)
        strictly = points_in_boxes(points_global[chunk], boxes[reach], margin=BOX_SURFACE_TOLERANCE)
        loosely = points_in_boxes(points_global[chunk], boxes[reach], margin=-BOX_SURFACE_TOLERANCE)
        keep[chunk] = ~(loosely & ~strictly).any(1)
        inside[chunk] = np.where(strictly.any(1), reach[strictly.argmax(1)], -1)
    scan.range[valid] = np.where(keep, scan.range[valid], 0.0)
    scan.intensity[valid] = np.where(keep, scan.intensity[valid], 0.0)
    inside_grid = np.full(scan.range.shape, -1)
    inside_grid[valid] = np.where(keep, inside, -1)
    return scan, inside_grid
