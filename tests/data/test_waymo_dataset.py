"""load_waymo checked against the simulator that wrote the world and the parquet read back directly."""

import functools
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from geomim_hf.data.classes import NUSCENES_DETECTION_CLASSES
from geomim_hf.data.records import SampleError
from geomim_hf.synthetic.sensors import waymo_rig
from geomim_hf.synthetic.world import location_grid, simulate_scene
from geomim_hf.data.waymo_dataset import load_waymo
from geomim_hf.synthetic.waymo_writer import FRAME_INTERVAL, LOCATION, segment_name

from ..conftest import WAYMO_WORLD

SEGMENT = segment_name(WAYMO_WORLD["seed"], 0)
CAMERAS = ["FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT"]
# Waymo label types (label.proto) to the default classes; 3 (sign) is not one.
TYPE_CLASSES = {1: "vehicle", 2: "pedestrian", 4: "cyclist"}
POSE = "[VehiclePoseComponent].world_from_vehicle.transform"
EXTRINSIC = "[CameraCalibrationComponent].extrinsic.transform"
IMAGE = "[CameraImageComponent].image"
BOX_LENGTH = "[LiDARBoxComponent].box.size.x"
SYNCED_LENGTH = "[LiDARCameraSyncedBoxComponent].camera_synced_box.size.x"


def component_path(root, component, segment=SEGMENT):
    return os.path.join(root, "validation", component, f"{segment}.parquet")


def read(root, component, segment=SEGMENT):
    return pq.read_table(component_path(root, component, segment)).to_pylist()


def rewrite(root, component, edit):
    """Rewrite a component of the first segment with its rows replaced by ``edit(rows)``."""
    path = component_path(root, component)
    table = pq.read_table(path)
    pq.write_table(pa.Table.from_pylist(edit(table.to_pylist()), schema=table.schema), path)


def to_global(transform, points):
    return points @ transform[:3, :3].T + transform[:3, 3]


def inside(points, box, grow=0.0):
    """Whether (P, 3) points lie in a (7,) box grown by ``grow`` metres, in the box's own frame."""
    offset = points - box[:3]
    cos, sin = np.cos(box[6]), np.sin(box[6])
    local = np.stack([cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1],
                      offset[:, 2]], 1)
    return np.all(np.abs(local) <= box[3:6] / 2 + grow, axis=1)


def matched_actors(row, scene, t):
    """For each box of a row: the index of the simulated actor at the same global centre."""
    global_from_ego = row["global_from_ego"]
    truth, _ = scene.actor_boxes(t)
    centers = to_global(global_from_ego, row["boxes"][:, :3].astype(np.float64))
    matches = [np.flatnonzero(np.linalg.norm(truth[:, :3] - center, axis=1) < 1e-4) for center in centers]
    assert all(len(m) == 1 for m in matches)
    return [int(m[0]) for m in matches]


@functools.cache
def simulate(segment):
    """A segment simulated again: what the rows must describe."""
    seed, frames = WAYMO_WORLD["seed"], WAYMO_WORLD["frames_per_segment"]
    rig = waymo_rig(np.random.default_rng([seed, segment, 13]))
    scene = simulate_scene(segment, seed, location_grid(seed, LOCATION), np.arange(frames) * FRAME_INTERVAL, 0.0,
                           visibility_rig=rig)
    return scene, rig


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def rows(waymo_root, cache):
    """All rows of validation with one sweep and the LiDAR's boxes (the LiDAR geometry checked here), decoded once."""
    return list(load_waymo(str(waymo_root), "validation", sweeps=1, boxes="lidar", cache_dir=cache))


def segment_rows(rows, segment):
    return [row for row in rows if row["scene_token"] == segment_name(WAYMO_WORLD["seed"], segment)]


def test_rows_follow_the_sample_contract(rows):
    assert len(rows) == 4  # two segments of two frames, in segment then time order
    assert [r["scene_token"] for r in rows] == sorted(segment_name(WAYMO_WORLD["seed"], i) for i in (0, 1)
                                                     for _ in range(2))
    for row in rows:
        assert row["camera_names"] == CAMERAS and len(row["images"]) == 5
        assert row["intrinsics"].shape == (5, 3, 3) and row["ego_from_camera"].shape == (5, 4, 4)
        assert row["boxes"].dtype == np.float32 and row["boxes"].shape[1] == 7 and len(row["boxes"]) > 0
        assert row["sample_token"] == f"{row['scene_token']}_{row['timestamp']}"
        assert list(row["attributes"]) == [-1] * len(row["boxes"]) and not np.any(row["visibility"])
    first, second = segment_rows(rows, 0)
    assert first["prev_sample_token"] == "" and second["prev_sample_token"] == first["sample_token"]
    assert second["timestamp"] - first["timestamp"] == 100_000


@pytest.mark.parametrize("segment", [0, 1])  # the ego stands still in the first and drives in the second
def test_frames_agree_with_the_simulator(rows, waymo_root, segment):
    scene, rig = simulate(segment)
    labelled = read(waymo_root, "lidar_box", segment_name(WAYMO_WORLD["seed"], segment))
    for t, row in zip(scene.keyframe_times, segment_rows(rows, segment), strict=True):
        global_from_ego = scene.global_from_ego(t)
        np.testing.assert_allclose(row["global_from_ego"], global_from_ego, atol=1e-9)
        np.testing.assert_allclose(row["ego_from_lidar"], rig.lidar.ego_from_lidar, atol=1e-12)
        for view, camera in enumerate(rig.cameras):
            assert row["camera_names"][view] == camera.name
            expected = np.linalg.inv(global_from_ego) @ scene.global_from_ego(t + camera.time_offset) \
                @ camera.ego_from_camera
            np.testing.assert_allclose(row["ego_from_camera"][view], expected, atol=1e-9)
            np.testing.assert_allclose(row["intrinsics"][view], camera.intrinsics, atol=1e-9)
            assert row["images"][view].size == (camera.width, camera.height)

        truth, truth_velocities = scene.actor_boxes(t)
        ego_yaw = np.arctan2(global_from_ego[1, 0], global_from_ego[0, 0])
        for box, velocity, label, actor in zip(row["boxes"].astype(np.float64), row["velocities"], row["labels"],
                                               matched_actors(row, scene, t)):
            np.testing.assert_allclose(box[3:6], truth[actor, 3:6], atol=1e-5)
            assert np.cos(box[6] + ego_yaw - truth[actor, 6]) == pytest.approx(1.0, abs=1e-6)
            np.testing.assert_allclose(global_from_ego[:2, :2] @ velocity, truth_velocities[actor], atol=1e-4)
            name = scene.actors[actor].class_name
            assert ("vehicle", "pedestrian", "cyclist")[label] == {"pedestrian": "pedestrian",
                                                                  "bicycle": "cyclist"}.get(name, "vehicle")
        # Every box of a mapped type is there and no other.
        frame = [r for r in labelled if r["key.frame_timestamp_micros"] == row["timestamp"]]
        assert sorted(row["instance_tokens"]) == sorted(r["key.laser_object_id"] for r in frame
                                                        if r["[LiDARBoxComponent].type"] in TYPE_CLASSES)


@pytest.mark.parametrize("segment", [0, 1])
def test_lidar_points_keep_every_return_and_fill_the_boxes(rows, waymo_root, segment):
    scene, _ = simulate(segment)
    range_images = {r["key.frame_timestamp_micros"]: r for r in read(waymo_root, "lidar", segment_name(
        WAYMO_WORLD["seed"], segment)) if r["key.laser_name"] == 1}
    for t, row in zip(scene.keyframe_times, segment_rows(rows, segment), strict=True):
        points = row["lidar_points"]
        keyframe = points[points[:, 4] == 0]
        image = range_images[row["timestamp"]]
        ranges = np.asarray(image["[LiDARComponent].range_image_return1.values"], np.float32).reshape(
            image["[LiDARComponent].range_image_return1.shape"])[..., 0]
        assert len(keyframe) == np.count_nonzero(ranges > 0)
        np.testing.assert_allclose(np.sort(np.linalg.norm(keyframe[:, :3], axis=1)), np.sort(ranges[ranges > 0]),
                                   atol=1e-4)

        global_points = to_global(row["global_from_ego"] @ row["ego_from_lidar"], keyframe[:, :3].astype(np.float64))
        truth, _ = scene.actor_boxes(t)
        for count, actor in zip(row["num_lidar_points"], matched_actors(row, scene, t), strict=True):
            assert np.count_nonzero(inside(global_points, truth[actor])) == count > 0


def test_sweeps_land_on_static_geometry(rows):
    scene, rig = simulate(1)  # the ego drives
    first, second = segment_rows(rows, 1)
    assert first["sweep_paths"] == [] and second["sweep_paths"] == [first["lidar_path"]]
    np.testing.assert_allclose(second["sweep_time_lags"], [0.1])
    global_from_lidar = [scene.global_from_ego(t) @ rig.lidar.ego_from_lidar for t in scene.keyframe_times]
    assert np.linalg.norm(global_from_lidar[1][:3, 3] - global_from_lidar[0][:3, 3]) > 0.3
    np.testing.assert_allclose(second["lidar_from_sweeps"][0],
                               np.linalg.inv(global_from_lidar[1]) @ global_from_lidar[0], atol=1e-9)

    points = second["lidar_points"]
    sweep = points[points[:, 4] != 0]
    np.testing.assert_allclose(sweep[:, 4], 0.1, rtol=1e-6)
    assert len(sweep) == len(first["lidar_points"])
    # In the global frame, returns off the moving actors lie on the ground or on a building.
    sweep_global = to_global(global_from_lidar[1], sweep[:, :3].astype(np.float64))
    actors, _ = scene.actor_boxes(scene.keyframe_times[0])
    static = ~np.any([inside(sweep_global, box, grow=0.3) for box in actors], axis=0)
    near = scene.buildings[np.linalg.norm(scene.buildings[:, :2] - global_from_lidar[1][:2, 3], axis=1) < 150]
    on_building = np.any([inside(sweep_global, box, grow=0.1) for box in near], axis=0)
    on_ground = np.abs(sweep_global[:, 2]) < 0.1
    assert static.mean() > 0.5 and np.all(on_ground | on_building | ~static)
    assert on_building[static].mean() > 0.05  # the buildings, not just the flat ground, are checked


@pytest.fixture
def world(waymo_root, tmp_path):
    """A copy of the world to corrupt."""
    copy = tmp_path / "world"
    shutil.copytree(waymo_root, copy)
    return str(copy)


def test_second_load_reads_the_cache_and_rewrites_invalidate_it(world, tmp_path):
    cache = str(tmp_path / "cache")
    first = load_waymo(world, "validation", cache_dir=cache)
    points_file = first[0]["lidar_path"]
    written = {path: os.stat(path).st_mtime_ns for path in [f["filename"] for f in first.cache_files] + [points_file]}
    second = load_waymo(world, "validation", cache_dir=cache)
    assert second.cache_files == first.cache_files
    assert {path: os.stat(path).st_mtime_ns for path in written} == written  # nothing regenerated

    stamp = first[0]["timestamp"]
    rewrite(world, "lidar_box", lambda rows: [r for r in rows if r["key.frame_timestamp_micros"] != stamp])
    third = load_waymo(world, "validation", cache_dir=cache)
    assert third.cache_files != first.cache_files and third[0]["lidar_path"] != points_file
    assert third[0]["boxes"].shape == (0, 7) and len(third[1]["boxes"]) == len(first[1]["boxes"])


def side_left(row, stamp):
    return row["key.frame_timestamp_micros"] == stamp and row["key.camera_name"] == 4


def nan_first(values):
    return [float("nan")] + values[1:]


# component, edit(rows, timestamp of the frame to break) -> rows, frames broken (indices), message
CORRUPTIONS = {
    "missing image": ("camera_image", lambda rows, stamp: [r for r in rows if not side_left(r, stamp)], [1],
                      r"camera_image has no SIDE_LEFT image"),
    "unreadable image": ("camera_image", lambda rows, stamp: [{**r, IMAGE: b"not a jpeg"} if side_left(r, stamp)
                                                               else r for r in rows], [0],
                         r"camera_image SIDE_LEFT: field \[CameraImageComponent\].image cannot be read"),
    "unknown camera": ("camera_image", lambda rows, stamp: [{**r, "key.camera_name": 7} if side_left(r, stamp)
                                                             else r for r in rows], [1],
                       r"camera_image field key.camera_name is 7"),
    "pose not finite": ("vehicle_pose", lambda rows, stamp: [{**r, POSE: nan_first(r[POSE])}
                                                             if r["key.frame_timestamp_micros"] == stamp else r
                                                             for r in rows], [1],
                        r"vehicle_pose field \[VehiclePoseComponent\].world_from_vehicle.transform is not finite"),
    "extrinsic not finite": ("camera_calibration", lambda rows, stamp: [{**r, EXTRINSIC: nan_first(r[EXTRINSIC])}
                                                                        for r in rows], [0, 1],
                             r"camera_calibration FRONT field \[CameraCalibrationComponent\].extrinsic.transform "
                             r"is not finite"),
    "pose not rigid": ("vehicle_pose", lambda rows, stamp: [{**r, POSE: [0.0] * 16}
                                                           if r["key.frame_timestamp_micros"] == stamp else r
                                                           for r in rows], [1],
                       r"vehicle_pose field \[VehiclePoseComponent\].world_from_vehicle.transform is not a rigid "
                       r"transform"),
    "extrinsic not rigid": ("camera_calibration", lambda rows, stamp: [{**r, EXTRINSIC: [2.0 * v for v in r[EXTRINSIC]]}
                                                                       for r in rows], [0, 1],
                            r"camera_calibration FRONT field \[CameraCalibrationComponent\].extrinsic.transform "
                            r"is not a rigid transform"),
    "image cut short": ("camera_image", lambda rows, stamp: [{**r, IMAGE: r[IMAGE][:len(r[IMAGE]) // 2]}
                                                             if side_left(r, stamp) else r for r in rows], [0],
                        r"camera_image SIDE_LEFT: field \[CameraImageComponent\].image is a JPEG cut short"),
    "negative box size": ("lidar_box", lambda rows, stamp: [{**r, BOX_LENGTH: -r[BOX_LENGTH]}
                                                            if r["key.frame_timestamp_micros"] == stamp else r
                                                            for r in rows], [1],
                          r"lidar_box \S+ field box.size is not positive"),
    "negative camera-synced box size": ("lidar_camera_synced_box", lambda rows, stamp: [
        {**r, SYNCED_LENGTH: -r[SYNCED_LENGTH]} if r["key.frame_timestamp_micros"] == stamp else r for r in rows], [1],
        r"lidar_camera_synced_box \S+ field camera_synced_box.size is not positive"),
    "missing lidar": ("lidar", lambda rows, stamp: [r for r in rows if r["key.frame_timestamp_micros"] != stamp],
                      [0], "lidar has no row for the TOP laser"),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_bad_frames_name_the_segment_the_frame_and_the_field(world, tmp_path, rows, corruption):
    component, edit, broken, message = CORRUPTIONS[corruption]
    stamps = sorted(r["key.frame_timestamp_micros"] for r in read(world, "vehicle_pose"))
    rewrite(world, component, lambda table_rows: edit(table_rows, stamps[broken[0]]))
    cache = str(tmp_path / "cache")
    boxes = "lidar" if component == "lidar_box" else "camera"  # the boxes whose fields are broken
    with pytest.raises(SampleError, match=f"segment {SEGMENT} frame {stamps[broken[0]]}: {message}"):
        load_waymo(world, "validation", boxes=boxes, cache_dir=cache)
    skipped = load_waymo(world, "validation", boxes=boxes, cache_dir=cache, on_error="skip", decode_lidar=False)
    bad = {f"{SEGMENT}_{stamps[index]}" for index in broken}
    assert skipped["sample_token"] == [r["sample_token"] for r in rows if r["sample_token"] not in bad]


def test_uniform_inclinations_when_the_calibration_lists_none(world, tmp_path):
    """Without beam_inclination.values, beams sit at the midpoints of H equal steps from min to max,
    row 0 the highest (Waymo's compute_inclination)."""
    rewrite(world, "lidar_calibration", lambda table_rows: [
        {**r, "[LiDARCalibrationComponent].beam_inclination.values": None} for r in table_rows])
    calibration = read(world, "lidar_calibration")[0]
    low, high = (calibration[f"[LiDARCalibrationComponent].beam_inclination.{k}"] for k in ("min", "max"))
    image = next(r for r in read(world, "lidar") if r["key.laser_name"] == 1)
    ranges = np.asarray(image["[LiDARComponent].range_image_return1.values"], np.float32).reshape(
        image["[LiDARComponent].range_image_return1.shape"])[..., 0]  # (H, W)
    beams = np.linspace(low, high, 2 * len(ranges) + 1)[1::2][::-1]  # (H,) from the top

    dataset = load_waymo(world, "validation", cache_dir=str(tmp_path / "cache"))
    row = next(r for r in dataset if r["timestamp"] == image["key.frame_timestamp_micros"]
               and r["scene_token"] == SEGMENT)
    points = row["lidar_points"][:, :3].astype(np.float64)
    distance = np.linalg.norm(points, axis=1)
    beam = np.abs(np.arcsin(points[:, 2] / distance)[:, None] - beams).argmin(1)
    for index, expected in enumerate(ranges):
        np.testing.assert_allclose(np.sort(distance[beam == index]), np.sort(expected[expected > 0]), atol=1e-4)


def test_camera_models_get_the_camera_synced_boxes(waymo_root, cache, rows):
    """boxes="camera": each box is its camera-synced row, and only the boxes a camera saw and the LiDAR hit."""
    camera_rows = list(load_waymo(str(waymo_root), "validation", boxes="camera", cache_dir=cache, decode_lidar=False))
    synced = {(r["key.frame_timestamp_micros"], r["key.laser_object_id"]): r
              for r in read(waymo_root, "lidar_camera_synced_box")}
    prefix = "[LiDARCameraSyncedBoxComponent].camera_synced_box."
    kept = dropped = 0
    for lidar_row, camera_row in zip(rows, camera_rows):
        assert lidar_row["sample_token"] == camera_row["sample_token"]
        if camera_row["scene_token"] != SEGMENT:
            continue
        expected = [token for token, points in zip(lidar_row["instance_tokens"], lidar_row["num_lidar_points"])
                    if (camera_row["timestamp"], token) in synced and points > 0]
        assert camera_row["instance_tokens"] == expected
        dropped += len(lidar_row["instance_tokens"]) - len(expected)
        for token, box in zip(camera_row["instance_tokens"], np.asarray(camera_row["boxes"])):
            row = synced[(camera_row["timestamp"], token)]
            np.testing.assert_allclose(box, [row[prefix + f"center.{a}"] for a in "xyz"]
                                       + [row[prefix + f"size.{a}"] for a in "xyz"] + [row[prefix + "heading"]],
                                       atol=1e-5)
            kept += 1
    assert kept > 5 and dropped > 0


def test_missing_folders_and_bad_arguments(world):
    missing = os.path.join(world, "training")
    with pytest.raises(FileNotFoundError, match=f"Waymo split folder {missing} is missing"):
        load_waymo(world, "training")
    shutil.rmtree(os.path.join(world, "validation", "vehicle_pose"))
    with pytest.raises(FileNotFoundError, match=r"vehicle_pose is missing: expected .* camera_image, camera_calibration"):
        load_waymo(world, "validation")
    with pytest.raises(ValueError, match=r"maps 'TYPE_VEHICLE' to 'car', which is not in classes"):
        load_waymo(world, "validation", type_to_class={"TYPE_VEHICLE": "car"})
    with pytest.raises(ValueError, match=r"type_to_class key 'TYPE_CAR' is not a Waymo type"):
        load_waymo(world, "validation", type_to_class={"TYPE_CAR": "vehicle"})
    with pytest.raises(ValueError, match=r"boxes must be one of \('camera', 'lidar'\), got 'radar'"):
        load_waymo(world, "validation", boxes="radar")


def test_a_split_without_labels_loads_with_zero_boxes(world, tmp_path):
    """Like Waymo's testing split, which withholds lidar_box."""
    shutil.rmtree(os.path.join(world, "validation", "lidar_box"))
    rows = load_waymo(world, "validation", cache_dir=str(tmp_path / "cache"))
    assert len(rows) == 4
    assert all(row["boxes"].shape == (0, 7) for row in rows) and len(rows[0]["lidar_points"]) > 10000


def test_types_map_onto_the_nuscenes_classes(waymo_root, cache):
    mapping = {"TYPE_VEHICLE": "car", "TYPE_PEDESTRIAN": "pedestrian", 4: "bicycle"}
    dataset = load_waymo(str(waymo_root), "validation", classes=NUSCENES_DETECTION_CLASSES, type_to_class=mapping,
                         cache_dir=cache, decode_lidar=False)
    assert dataset.features["labels"].feature.names == list(NUSCENES_DETECTION_CLASSES)
    types = {r["key.laser_object_id"]: r["[LiDARBoxComponent].type"] for r in read(waymo_root, "lidar_box")}
    expected = {1: "car", 2: "pedestrian", 4: "bicycle"}
    checked = set()
    for row in dataset:
        if row["scene_token"] != SEGMENT:
            continue
        names = [NUSCENES_DETECTION_CLASSES[label] for label in row["labels"]]
        assert names == [expected[types[token]] for token in row["instance_tokens"]]
        checked.update(names)
    assert checked == {"car", "pedestrian", "bicycle"}
