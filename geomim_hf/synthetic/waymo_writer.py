"""Write simulated segments in the Waymo Open Dataset v2 (perception) parquet format
(:mod:`geomim_hf.data.waymo_schema` holds the layout, columns and type ids)."""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from tqdm.auto import tqdm

from ..data.geometry import invert_rigid, wrap_angle
from ..data.waymo_schema import (
    CAMERA_NAMES,
    GLOBAL_SHUTTER,
    KEY_CAMERA,
    KEY_LASER,
    KEY_OBJECT,
    KEY_SEGMENT,
    KEY_TIMESTAMP,
    LASER_NAMES,
    OPENCV_FROM_WAYMO_CAMERA,
    SCHEMAS,
    TYPE_CYCLIST,
    TYPE_PEDESTRIAN,
    TYPE_VEHICLE,
)
from .raycast import render_camera
from .sensors import SensorRig, cast_lidar_settled, waymo_rig
from .world import Scene, location_grid, simulate_scene

FRAME_INTERVAL = 0.1  # seconds: Waymo frames come at 10 Hz
LABEL_RANGE = 75.0  # metres from the ego within which objects are labelled
LOCATION = "phoenix"  # the simulator's road grid for Waymo segments (right-hand traffic)


def waymo_type(class_name: str, attribute: str) -> int | None:
    """Waymo's label type for one of our actors, or None where Waymo labels nothing (cones,
    barriers, bicycles without a rider)."""
    if class_name in ("car", "truck", "bus", "trailer", "construction_vehicle", "motorcycle"):
        return TYPE_VEHICLE
    if class_name == "pedestrian":
        return TYPE_PEDESTRIAN
    if class_name == "bicycle" and attribute == "cycle.with_rider":
        return TYPE_CYCLIST
    return None


def segment_name(seed: int, index: int) -> str:
    digits = str(int(hashlib.md5(f"{seed}/segment/{index}".encode()).hexdigest(), 16))[:20]
    start = 100 + 20 * index
    return f"{digits}_{start:04d}_000_{start + 20:04d}_000"


def _flat(transform: np.ndarray) -> list[float]:
    return np.asarray(transform, np.float64).reshape(16).tolist()


def _render_frame(args):
    """Simulate one frame (5 cameras and the TOP LiDAR). Runs in a worker."""
    scene, rig, frame_index, seed = args
    t = scene.keyframe_times[frame_index]
    cameras = []
    for camera in rig.cameras:
        camera_time = t + camera.time_offset
        global_from_ego = scene.global_from_ego(camera_time)
        image, visible, _ = render_camera(scene.world_at(camera_time), global_from_ego @ camera.ego_from_camera,
                                          camera.intrinsics, camera.width, camera.height)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        cameras.append((camera.name, camera_time, buffer.getvalue(), visible[:len(scene.actors)]))
    rng = np.random.default_rng([seed, scene.index, frame_index, 11])
    scan, inside = cast_lidar_settled(scene, rig.lidar, t, rng)
    return cameras, scan.range, scan.intensity, inside


def _ego_motion(scene: Scene, t: float, dt: float = 0.01):
    """World-frame linear (3,) and angular (3,) velocity of the ego."""
    xy, yaw, velocity = scene.ego.state(np.array([t - dt, t + dt]))
    yaw_rate = wrap_angle(yaw[1] - yaw[0]) / (2 * dt)
    return np.array([*velocity.mean(0), 0.0]), np.array([0.0, 0.0, yaw_rate])


def write_waymo(
    root: str,
    num_segments: int = 4,
    frames_per_segment: int = 20,
    seed: int = 0,
    workers: int = 1,
    progress: bool = True,
    validation_segments: int | None = None,
) -> dict:
    """Simulate ``num_segments`` segments of ``frames_per_segment`` frames (10 Hz) and write them
    under ``root`` as Waymo v2 parquet. The first ``validation_segments`` segments (default: two, or all if
    fewer) go to ``validation``, the rest to ``training``. Returns a summary of what was written."""
    if validation_segments is None:
        validation_segments = min(2, num_segments)
    if not 0 <= validation_segments <= num_segments:
        raise ValueError(f"validation_segments={validation_segments}: expected 0 to num_segments={num_segments}")
    segments = []
    for index in range(num_segments):
        rig = waymo_rig(np.random.default_rng([seed, index, 13]))
        keyframe_times = np.arange(frames_per_segment) * FRAME_INTERVAL
        scene = simulate_scene(index, seed, location_grid(seed, LOCATION), keyframe_times, 0.0, visibility_rig=rig)
        split = "validation" if index < validation_segments else "training"
        segments.append((scene, rig, split, segment_name(seed, index)))

    jobs = [(scene, rig, k, seed) for scene, rig, _, _ in segments for k in range(frames_per_segment)]
    if workers > 1:
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"))
        frames = pool.map(_render_frame, jobs)
    else:
        pool, frames = None, map(_render_frame, jobs)
    frames = iter(tqdm(frames, total=len(jobs), desc="rendering segments", disable=not progress))
    num_boxes = 0
    try:
        for scene, rig, split, name in segments:
            segment_frames = [next(frames) for _ in range(frames_per_segment)]
            num_boxes += _write_segment(root, split, name, scene, rig, segment_frames)
    finally:
        if pool is not None:
            pool.shutdown()
    return {
        "segments": num_segments,
        "frames": num_segments * frames_per_segment,
        "splits": {s: sum(1 for seg in segments if seg[2] == s) for s in ("training", "validation")},
        "boxes": num_boxes,
    }


def _write_segment(root, split, name, scene: Scene, rig: SensorRig, frames) -> int:
    start_us = 1_550_083_467_346_370 + scene.index * 100_000_000
    stamps = [start_us + int(round(t * 1e6)) for t in scene.keyframe_times]
    rows: dict[str, list[dict]] = {component: [] for component in SCHEMAS}

    ego_from_waymo = {c.name: c.ego_from_camera @ OPENCV_FROM_WAYMO_CAMERA for c in rig.cameras}
    for camera in rig.cameras:
        k = camera.intrinsics
        rows["camera_calibration"].append({
            KEY_SEGMENT: name, KEY_CAMERA: CAMERA_NAMES[camera.name],
            **{f"[CameraCalibrationComponent].intrinsic.{key}": float(value) for key, value in
               zip(("f_u", "f_v", "c_u", "c_v"), (k[0, 0], k[1, 1], k[0, 2], k[1, 2]))},
            **{f"[CameraCalibrationComponent].intrinsic.{key}": 0.0 for key in ("k1", "k2", "p1", "p2", "k3")},
            "[CameraCalibrationComponent].extrinsic.transform": _flat(ego_from_waymo[camera.name]),
            "[CameraCalibrationComponent].width": camera.width, "[CameraCalibrationComponent].height": camera.height,
            "[CameraCalibrationComponent].rolling_shutter_direction": GLOBAL_SHUTTER,
        })
    inclinations = rig.lidar.elevations[::-1]  # stored ascending
    rows["lidar_calibration"].append({
        KEY_SEGMENT: name, KEY_LASER: LASER_NAMES[rig.lidar.name],
        "[LiDARCalibrationComponent].extrinsic.transform": _flat(rig.lidar.ego_from_lidar),
        "[LiDARCalibrationComponent].beam_inclination.min": float(inclinations[0]),
        "[LiDARCalibrationComponent].beam_inclination.max": float(inclinations[-1]),
        "[LiDARCalibrationComponent].beam_inclination.values": inclinations.tolist(),
    })

    object_ids = {a.instance: hashlib.md5(f"{name}/{a.instance}".encode()).hexdigest()[:22] for a in scene.actors}
    lidar_counts: dict[int, set] = {}
    for t, stamp, (cameras, ranges, intensity, inside) in zip(scene.keyframe_times, stamps, frames):
        global_from_ego = scene.global_from_ego(t)
        rows["vehicle_pose"].append({KEY_SEGMENT: name, KEY_TIMESTAMP: stamp,
                                     "[VehiclePoseComponent].world_from_vehicle.transform": _flat(global_from_ego)})
        for camera_name, camera_time, jpeg, _ in cameras:
            linear, angular = _ego_motion(scene, camera_time)
            pose_seconds = stamp * 1e-6 + (camera_time - t)
            rows["camera_image"].append({
                KEY_SEGMENT: name, KEY_TIMESTAMP: stamp, KEY_CAMERA: CAMERA_NAMES[camera_name],
                "[CameraImageComponent].image": jpeg,
                "[CameraImageComponent].pose.transform": _flat(scene.global_from_ego(camera_time)),
                **{f"[CameraImageComponent].velocity.linear_velocity.{a}": float(v) for a, v in zip("xyz", linear)},
                **{f"[CameraImageComponent].velocity.angular_velocity.{a}": float(v) for a, v in zip("xyz", angular)},
                "[CameraImageComponent].pose_timestamp": pose_seconds,
                "[CameraImageComponent].rolling_shutter_params.shutter": 0.0,
                "[CameraImageComponent].rolling_shutter_params.camera_trigger_time": pose_seconds,
                "[CameraImageComponent].rolling_shutter_params.camera_readout_done_time": pose_seconds,
            })
        image = np.stack([np.where(ranges > 0, ranges, -1.0), intensity / 255.0, np.zeros_like(ranges),
                          np.full_like(ranges, -1.0)], axis=-1).astype(np.float32)
        empty = np.full_like(image, -1.0)
        rows["lidar"].append({
            KEY_SEGMENT: name, KEY_TIMESTAMP: stamp, KEY_LASER: LASER_NAMES[rig.lidar.name],
            "[LiDARComponent].range_image_return1.values": image.ravel(),
            "[LiDARComponent].range_image_return1.shape": list(image.shape),
            "[LiDARComponent].range_image_return2.values": empty.ravel(),
            "[LiDARComponent].range_image_return2.shape": list(empty.shape),
        })

        ego_from_global = invert_rigid(global_from_ego)
        ego_yaw = np.arctan2(global_from_ego[1, 0], global_from_ego[0, 0])
        boxes, velocities = scene.actor_boxes(t)
        _, before = scene.actor_boxes(t - 0.05)
        _, after = scene.actor_boxes(t + 0.05)
        counts = np.bincount(inside[inside >= 0], minlength=len(scene.actors))
        boxes_at_camera = {camera_name: scene.actor_boxes(camera_time)[0] for camera_name, camera_time, _, _ in cameras}
        for actor_index, actor in enumerate(scene.actors):
            label = waymo_type(actor.class_name, actor.attribute)
            box = boxes[actor_index]
            if label is None or counts[actor_index] == 0:
                continue
            if np.linalg.norm(box[:2] - global_from_ego[:2, 3]) > LABEL_RANGE:
                continue
            center = ego_from_global[:3, :3] @ box[:3] + ego_from_global[:3, 3]
            speed = ego_from_global[:3, :2] @ velocities[actor_index]
            acceleration = ego_from_global[:3, :2] @ ((after[actor_index] - before[actor_index]) / 0.1)
            level = 2 if counts[actor_index] <= 5 else 1
            rows["lidar_box"].append({
                KEY_SEGMENT: name, KEY_TIMESTAMP: stamp, KEY_OBJECT: object_ids[actor.instance],
                **{f"[LiDARBoxComponent].box.center.{a}": float(v) for a, v in zip("xyz", center)},
                **{f"[LiDARBoxComponent].box.size.{a}": float(v) for a, v in zip("xyz", box[3:6])},
                "[LiDARBoxComponent].box.heading": float(wrap_angle(box[6] - ego_yaw)),
                "[LiDARBoxComponent].type": label,
                "[LiDARBoxComponent].num_lidar_points_in_box": int(counts[actor_index]),
                "[LiDARBoxComponent].num_top_lidar_points_in_box": int(counts[actor_index]),
                **{f"[LiDARBoxComponent].speed.{a}": float(v) for a, v in zip("xyz", speed)},
                **{f"[LiDARBoxComponent].acceleration.{a}": float(v) for a, v in zip("xyz", acceleration)},
                "[LiDARBoxComponent].difficulty_level.detection": level,
                "[LiDARBoxComponent].difficulty_level.tracking": level,
            })
            lidar_counts.setdefault(label, set()).add(actor.instance)
            # The camera-synced box: where the object was when its most visible camera fired, in this frame's
            # vehicle frame (the release shifts each box to that camera's capture of its centre).
            visible = np.array([pixels[actor_index] for _, _, _, pixels in cameras])
            if visible.max() == 0:
                continue  # in no camera: no camera-synced box, as in the release
            camera_name, camera_time = cameras[int(np.argmax(visible))][:2]
            synced = boxes_at_camera[camera_name]
            synced_center = ego_from_global[:3, :3] @ synced[actor_index, :3] + ego_from_global[:3, 3]
            rows["lidar_camera_synced_box"].append({
                KEY_SEGMENT: name, KEY_TIMESTAMP: stamp, KEY_OBJECT: object_ids[actor.instance],
                "[LiDARCameraSyncedBoxComponent].most_visible_camera_name": CAMERA_NAMES[camera_name],
                **{f"[LiDARCameraSyncedBoxComponent].camera_synced_box.center.{a}": float(v)
                   for a, v in zip("xyz", synced_center)},
                **{f"[LiDARCameraSyncedBoxComponent].camera_synced_box.size.{a}": float(v)
                   for a, v in zip("xyz", synced[actor_index, 3:6])},
                "[LiDARCameraSyncedBoxComponent].camera_synced_box.heading":
                    float(wrap_angle(synced[actor_index, 6] - ego_yaw)),
            })

    types = sorted(lidar_counts)
    for stamp in stamps:
        rows["stats"].append({
            KEY_SEGMENT: name, KEY_TIMESTAMP: stamp, "[StatsComponent].time_of_day": "Day",
            "[StatsComponent].location": "location_other", "[StatsComponent].weather": "sunny",
            "[StatsComponent].lidar_object_counts.types": types or None,
            "[StatsComponent].lidar_object_counts.counts": [len(lidar_counts[t]) for t in types] or None,
            "[StatsComponent].camera_object_counts.types": None,
            "[StatsComponent].camera_object_counts.counts": None,
        })

    for component, records in rows.items():
        schema = SCHEMAS[component]
        table = pa.Table.from_pydict({f.name: [r[f.name] for r in records] for f in schema}, schema=schema)
        folder = os.path.join(root, split, component)
        os.makedirs(folder, exist_ok=True)
        pq.write_table(table, os.path.join(folder, f"{name}.parquet"), compression="brotli",
                       use_compliant_nested_type=False)
    return len(rows["lidar_box"])
