"""The synthetic Waymo v2 world read back with pyarrow and Waymo's documented conventions."""

import colorsys
import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geomim_hf.data.waymo_schema import CAMERA_NAMES
from geomim_hf.synthetic.sensors import waymo_rig
from geomim_hf.synthetic.world import CLASS_SPECS, location_grid, simulate_scene
from geomim_hf.synthetic.waymo_writer import FRAME_INTERVAL, LOCATION, segment_name

from ..conftest import WAYMO_WORLD

# Column names as the Waymo v2 release spells them (the v2 tutorial and the waymo-open-dataset code).
EXPECTED_COLUMNS = {
    "camera_image": ["key.segment_context_name", "key.frame_timestamp_micros", "key.camera_name",
                     "[CameraImageComponent].image", "[CameraImageComponent].pose.transform",
                     "[CameraImageComponent].velocity.linear_velocity.x", "[CameraImageComponent].pose_timestamp"],
    "camera_calibration": ["key.segment_context_name", "key.camera_name",
                           "[CameraCalibrationComponent].intrinsic.f_u", "[CameraCalibrationComponent].intrinsic.c_v",
                           "[CameraCalibrationComponent].intrinsic.k3", "[CameraCalibrationComponent].extrinsic.transform",
                           "[CameraCalibrationComponent].width", "[CameraCalibrationComponent].height"],
    "lidar": ["key.laser_name", "[LiDARComponent].range_image_return1.values",
              "[LiDARComponent].range_image_return1.shape", "[LiDARComponent].range_image_return2.values"],
    "lidar_calibration": ["key.laser_name", "[LiDARCalibrationComponent].extrinsic.transform",
                          "[LiDARCalibrationComponent].beam_inclination.values"],
    "lidar_box": ["key.laser_object_id", "[LiDARBoxComponent].box.center.x", "[LiDARBoxComponent].box.size.z",
                  "[LiDARBoxComponent].box.heading", "[LiDARBoxComponent].type",
                  "[LiDARBoxComponent].num_lidar_points_in_box", "[LiDARBoxComponent].speed.x"],
    "vehicle_pose": ["key.frame_timestamp_micros", "[VehiclePoseComponent].world_from_vehicle.transform"],
    "lidar_camera_synced_box": ["key.frame_timestamp_micros", "key.laser_object_id",
                                "[LiDARCameraSyncedBoxComponent].most_visible_camera_name",
                                "[LiDARCameraSyncedBoxComponent].camera_synced_box.center.x",
                                "[LiDARCameraSyncedBoxComponent].camera_synced_box.size.z",
                                "[LiDARCameraSyncedBoxComponent].camera_synced_box.heading"],
}
SEGMENT = segment_name(WAYMO_WORLD["seed"], 0)  # the first segment goes to validation


def read(root, component, segment=SEGMENT, split="validation"):
    return pq.read_table(root / split / component / f"{segment}.parquet").to_pylist()


def matrix(values):
    return np.asarray(values, dtype=np.float64).reshape(4, 4)  # row-major


@pytest.mark.parametrize("component", sorted(EXPECTED_COLUMNS))
def test_components_have_the_release_columns(waymo_root, component):
    names = pq.read_schema(waymo_root / "validation" / component / f"{SEGMENT}.parquet").names
    assert set(EXPECTED_COLUMNS[component]) <= set(names)


def test_splits(waymo_root):
    # The first two segments are validation, the rest training; this world has two.
    assert sorted(p.name for p in (waymo_root / "validation" / "lidar_box").iterdir()) == sorted(
        f"{segment_name(WAYMO_WORLD['seed'], i)}.parquet" for i in range(2))
    assert not (waymo_root / "training").exists()


@pytest.fixture(scope="module")
def simulated():
    """The same segment, simulated again: what the files must describe."""
    seed, frames = WAYMO_WORLD["seed"], WAYMO_WORLD["frames_per_segment"]
    rig = waymo_rig(np.random.default_rng([seed, 0, 13]))
    scene = simulate_scene(0, seed, location_grid(seed, LOCATION), np.arange(frames) * FRAME_INTERVAL, 0.0,
                           visibility_rig=rig)
    return scene, rig


def _frames(waymo_root):
    poses = read(waymo_root, "vehicle_pose")
    stamps = sorted(r["key.frame_timestamp_micros"] for r in poses)
    return stamps, {r["key.frame_timestamp_micros"]: matrix(r["[VehiclePoseComponent].world_from_vehicle.transform"])
                    for r in poses}


def test_poses_and_boxes_agree_with_the_simulator(waymo_root, simulated):
    scene, _ = simulated
    stamps, world_from_vehicle = _frames(waymo_root)
    boxes = read(waymo_root, "lidar_box")
    assert boxes
    for index, stamp in enumerate(stamps):
        t = scene.keyframe_times[index]
        np.testing.assert_allclose(world_from_vehicle[stamp], scene.global_from_ego(t), atol=1e-9)
        truth, velocities = scene.actor_boxes(t)
        for row in (r for r in boxes if r["key.frame_timestamp_micros"] == stamp):
            center_vehicle = np.array([row[f"[LiDARBoxComponent].box.center.{a}"] for a in "xyz"] + [1.0])
            center_world = (world_from_vehicle[stamp] @ center_vehicle)[:3]
            match = np.flatnonzero(np.linalg.norm(truth[:, :3] - center_world, axis=1) < 1e-6)
            assert len(match) == 1
            actor = truth[match[0]]
            size = [row[f"[LiDARBoxComponent].box.size.{a}"] for a in "xyz"]
            np.testing.assert_allclose(size, actor[3:6])  # x = length, y = width, z = height
            vehicle_yaw = np.arctan2(world_from_vehicle[stamp][1, 0], world_from_vehicle[stamp][0, 0])
            heading = row["[LiDARBoxComponent].box.heading"]
            assert -np.pi <= heading < np.pi
            assert np.cos(heading + vehicle_yaw - actor[6]) == pytest.approx(1.0, abs=1e-9)
            speed_vehicle = np.array([row[f"[LiDARBoxComponent].speed.{a}"] for a in "xy"])
            speed_world = world_from_vehicle[stamp][:2, :2] @ speed_vehicle
            np.testing.assert_allclose(speed_world, velocities[match[0]], atol=1e-9)


def _range_image_points(waymo_root):
    """Vehicle-frame points per frame, by the formulas of Waymo's range_image_utils."""
    calibration = read(waymo_root, "lidar_calibration")[0]
    extrinsic = matrix(calibration["[LiDARCalibrationComponent].extrinsic.transform"])
    inclination = np.asarray(calibration["[LiDARCalibrationComponent].beam_inclination.values"])[::-1]  # row 0: top
    points = {}
    for row in read(waymo_root, "lidar"):
        image = np.asarray(row["[LiDARComponent].range_image_return1.values"], np.float32).reshape(
            row["[LiDARComponent].range_image_return1.shape"])
        height, width, _ = image.shape
        azimuth = np.pi - 2 * np.pi * (np.arange(width) + 0.5) / width - np.arctan2(extrinsic[1, 0], extrinsic[0, 0])
        rng = image[..., 0]
        valid = rng > 0
        el, az = np.meshgrid(inclination, azimuth, indexing="ij")
        xyz = np.stack([np.cos(az) * np.cos(el), np.sin(az) * np.cos(el), np.sin(el)], -1)[valid] * rng[valid, None]
        points[row["key.frame_timestamp_micros"]] = xyz @ extrinsic[:3, :3].T + extrinsic[:3, 3]
        assert image.shape == (64, 2650, 4) and np.all(image[~valid, 0] == -1)
    return points


def test_range_image_points_fill_the_boxes_they_are_counted_in(waymo_root):
    points = _range_image_points(waymo_root)
    boxes = read(waymo_root, "lidar_box")
    for row in boxes:
        cloud = points[row["key.frame_timestamp_micros"]]
        center = np.array([row[f"[LiDARBoxComponent].box.center.{a}"] for a in "xyz"])
        size = np.array([row[f"[LiDARBoxComponent].box.size.{a}"] for a in "xyz"])
        heading = row["[LiDARBoxComponent].box.heading"]
        offset = cloud - center
        local = np.stack([np.cos(heading) * offset[:, 0] + np.sin(heading) * offset[:, 1],
                          -np.sin(heading) * offset[:, 0] + np.cos(heading) * offset[:, 1], offset[:, 2]], -1)
        count = int(np.all(np.abs(local) <= size / 2, axis=1).sum())
        assert count == row["[LiDARBoxComponent].num_lidar_points_in_box"] > 0


def test_box_centres_project_onto_their_objects(waymo_root, simulated):
    scene, _ = simulated
    stamps, world_from_vehicle = _frames(waymo_root)
    calibrations = {r["key.camera_name"]: r for r in read(waymo_root, "camera_calibration")}
    boxes = read(waymo_root, "lidar_box")
    hits = total = 0
    for image_row in read(waymo_root, "camera_image"):
        stamp, calibration = image_row["key.frame_timestamp_micros"], calibrations[image_row["key.camera_name"]]
        image = np.asarray(Image.open(io.BytesIO(image_row["[CameraImageComponent].image"])), np.float32) / 255
        assert image.shape[:2] == (calibration["[CameraCalibrationComponent].height"],
                                   calibration["[CameraCalibrationComponent].width"])
        world_from_camera = matrix(image_row["[CameraImageComponent].pose.transform"]) @ matrix(
            calibration["[CameraCalibrationComponent].extrinsic.transform"])
        camera_from_world = np.linalg.inv(world_from_camera)
        for row in (r for r in boxes if r["key.frame_timestamp_micros"] == stamp):
            if row["[LiDARBoxComponent].num_lidar_points_in_box"] < 30:
                continue
            center = np.array([row[f"[LiDARBoxComponent].box.center.{a}"] for a in "xyz"] + [1.0])
            x, y, z = (camera_from_world @ world_from_vehicle[stamp] @ center)[:3]  # x forward, y left, z up
            if x < 1.0:
                continue
            f_u, f_v = (calibration[f"[CameraCalibrationComponent].intrinsic.{k}"] for k in ("f_u", "f_v"))
            c_u, c_v = (calibration[f"[CameraCalibrationComponent].intrinsic.{k}"] for k in ("c_u", "c_v"))
            u, v = int(round(f_u * -y / x + c_u)), int(round(f_v * -z / x + c_v))
            if not (1 <= u < image.shape[1] - 1 and 1 <= v < image.shape[0] - 1):
                continue
            if f_u * row["[LiDARBoxComponent].box.size.y"] / x < 15:
                continue
            total += 1
            centre_world = (world_from_vehicle[stamp] @ center)[:3]
            truth, _ = scene.actor_boxes(scene.keyframe_times[stamps.index(stamp)])
            actor = scene.actors[int(np.argmin(np.linalg.norm(truth[:, :3] - centre_world, axis=1)))]
            hue, saturation, _ = colorsys.rgb_to_hsv(*image[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3).mean(0))
            hits += abs((hue * 360 - CLASS_SPECS[actor.class_name].hue + 180) % 360 - 180) < 15 and saturation > 0.35
    print(f"{hits}/{total} projected centres on their objects")
    assert total >= 10 and hits / total >= 0.85


def test_camera_synced_boxes_are_where_their_most_visible_camera_saw_them(waymo_root, simulated):
    """Each camera-synced box is its actor's box at the time its named camera fired (the frame time plus that
    camera's offset), in the frame's vehicle frame, and its centre projects into that camera's image; boxes seen
    by no camera have none."""
    scene, rig = simulated
    stamps, world_from_vehicle = _frames(waymo_root)
    offsets = {CAMERA_NAMES[c.name]: c.time_offset for c in rig.cameras}
    cameras = {CAMERA_NAMES[c.name]: c for c in rig.cameras}
    schema = pq.read_schema(waymo_root / "validation" / "lidar_camera_synced_box" / f"{SEGMENT}.parquet")
    assert schema.field("[LiDARCameraSyncedBoxComponent].most_visible_camera_name").type == pa.int8()
    assert schema.field("[LiDARCameraSyncedBoxComponent].camera_synced_box.heading").type == pa.float64()
    synced = read(waymo_root, "lidar_camera_synced_box")
    lidar_boxes = {(r["key.frame_timestamp_micros"], r["key.laser_object_id"]) for r in read(waymo_root, "lidar_box")}
    assert synced and {(r["key.frame_timestamp_micros"], r["key.laser_object_id"]) for r in synced} <= lidar_boxes
    moved = 0
    for row in synced:
        stamp = row["key.frame_timestamp_micros"]
        camera = row["[LiDARCameraSyncedBoxComponent].most_visible_camera_name"]
        t = scene.keyframe_times[stamps.index(stamp)]
        center_vehicle = np.array([row[f"[LiDARCameraSyncedBoxComponent].camera_synced_box.center.{a}"]
                                   for a in "xyz"] + [1.0])
        center_world = (world_from_vehicle[stamp] @ center_vehicle)[:3]
        then, _ = scene.actor_boxes(t + offsets[camera])
        match = np.flatnonzero(np.linalg.norm(then[:, :3] - center_world, axis=1) < 1e-6)
        assert len(match) == 1
        now, _ = scene.actor_boxes(t)
        moved += np.linalg.norm(now[match[0], :3] - center_world) > 0.05
        spec = cameras[camera]  # the centre, seen from that camera at that time
        global_from_camera = scene.global_from_ego(t + offsets[camera]) @ spec.ego_from_camera
        point = np.linalg.inv(global_from_camera) @ np.append(center_world, 1.0)
        u, v = (spec.intrinsics @ point[:3])[:2] / point[2]
        assert point[2] > 0 and -0.5 * spec.width < u < 1.5 * spec.width and -0.5 * spec.height < v < 1.5 * spec.height
    assert moved > 0  # moving objects: the synced box is not the LiDAR box
