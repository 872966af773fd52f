"""load_nuscenes checked against the nuscenes-devkit's own geometry."""

import json
import os
import re
import shutil

import numpy as np
import pytest
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from pyquaternion import Quaternion
from scipy.spatial import cKDTree

from geomim_hf.data import SampleError, load_nuscenes
from geomim_hf.data.classes import NUSCENES_DETECTION_CLASSES
from geomim_hf.data.geometry import invert_rigid, transform_points
from geomim_hf.data.nuscenes_dataset import NUSCENES_CAMERA_ORDER


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf_cache"))


@pytest.fixture(scope="module")
def val(nuscenes_root, cache):
    return load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", sweeps=3, cache_dir=cache)


def test_rows_follow_the_sample_contract(val, nusc):
    assert len(val) == 6  # two mini_val scenes of three keyframes
    row = val[0]
    assert row["camera_names"] == list(NUSCENES_CAMERA_ORDER)
    assert len(row["images"]) == 6 and row["images"][0].size == (1600, 900)
    assert row["intrinsics"].shape == (6, 3, 3) and row["ego_from_camera"].shape == (6, 4, 4)
    assert row["boxes"].dtype == np.float32 and row["boxes"].shape[1] == 7
    assert row["lidar_points"].shape[1] == 5
    scenes = {r["scene_token"] for r in val}
    assert {nusc.get("scene", s)["name"] for s in scenes} == {"scene-0103", "scene-0916"}
    for row in val:  # time-ordered within a scene, linked to the previous keyframe
        sample = nusc.get("sample", row["sample_token"])
        assert row["prev_sample_token"] == sample["prev"] and row["timestamp"] == sample["timestamp"]


def test_boxes_equal_devkit_boxes_through_the_pose_inverses(val, nusc):
    for row in val:
        sample = nusc.get("sample", row["sample_token"])
        lidar_token = sample["data"]["LIDAR_TOP"]
        _, devkit_boxes, _ = nusc.get_sample_data(lidar_token)  # in the LiDAR frame
        calibration = nusc.get("calibrated_sensor", nusc.get("sample_data", lidar_token)["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", nusc.get("sample_data", lidar_token)["ego_pose_token"])
        expected = []
        for box in devkit_boxes:
            box.rotate(Quaternion(calibration["rotation"]))
            box.translate(np.array(calibration["translation"]))  # now in the ego frame
            velocity = Quaternion(pose["rotation"]).inverse.rotate(nusc.box_velocity(box.token))
            width, length, height = box.wlh
            expected.append([*box.center, length, width, height, box.orientation.yaw_pitch_roll[0], *velocity[:2]])
        expected = np.asarray(expected)
        assert len(expected) == len(row["boxes"]) > 0
        np.testing.assert_allclose(row["boxes"][:, :6], expected[:, :6], atol=1e-4)
        np.testing.assert_allclose(np.cos(row["boxes"][:, 6] - expected[:, 6]), 1.0, atol=1e-6)
        np.testing.assert_allclose(row["velocities"], expected[:, 7:9], atol=1e-4, equal_nan=True)
        names = [category_to_detection_name(nusc.get("sample_annotation", t)["category_name"]) for t in sample["anns"]]
        assert [NUSCENES_DETECTION_CLASSES[i] for i in row["labels"]] == names
        assert list(row["num_lidar_points"]) == [nusc.get("sample_annotation", t)["num_lidar_pts"]
                                                 for t in sample["anns"]]


def test_cameras_project_boxes_where_the_devkit_does(val, nusc):
    """ego_from_camera goes through each camera's own ego pose; the devkit does the same."""
    checked = 0
    for row in val:
        sample = nusc.get("sample", row["sample_token"])
        for view, channel in enumerate(row["camera_names"]):
            _, boxes, intrinsics = nusc.get_sample_data(sample["data"][channel], box_vis_level=BoxVisibility.ALL)
            np.testing.assert_allclose(row["intrinsics"][view], intrinsics)
            camera_from_ego = invert_rigid(row["ego_from_camera"][view])
            ours = {}
            for token, box in zip(row["instance_tokens"], row["boxes"]):
                point = transform_points(camera_from_ego, box[None, :3].astype(np.float64))[0]
                ours[token] = view_points(point[:, None], intrinsics, normalize=True)[:2, 0]
            for box in boxes:
                instance = nusc.get("sample_annotation", box.token)["instance_token"]
                if instance in ours:
                    expected = view_points(box.center[:, None], intrinsics, normalize=True)[:2, 0]
                    np.testing.assert_allclose(ours[instance], expected, atol=0.02)
                    checked += 1
    assert checked > 50


def test_lidar_sweeps_equal_the_devkit_multisweep(val, nusc):
    for row in val:
        sample = nusc.get("sample", row["sample_token"])
        cloud, times = LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=4,
                                                            min_distance=0.0)
        expected = np.concatenate([cloud.points[:4].T, times.T], axis=1)
        ours = row["lidar_points"]
        assert ours.shape == expected.shape
        distance, match = cKDTree(expected).query(ours)  # one-to-one nearest points, all channels
        assert distance.max() < 1e-3 and len(np.unique(match)) == len(ours)
        assert len(row["sweep_paths"]) == (3 if row["prev_sample_token"] else 2)  # pre-roll: 2 sweeps


def test_class_list_selects_and_orders_labels(nuscenes_root, cache, nusc):
    subset = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", classes=("pedestrian", "car"),
                           cache_dir=cache, decode_lidar=False)
    row = subset[0]
    names = [category_to_detection_name(nusc.get("sample_annotation", t)["category_name"])
             for t in nusc.get("sample", row["sample_token"])["anns"]]
    expected = [("pedestrian", "car").index(n) for n in names if n in ("pedestrian", "car")]
    assert row["labels"] == expected and len(np.asarray(row["boxes"])) == len(expected)
    assert subset.features["labels"].feature.names == ["pedestrian", "car"]


def test_second_load_reads_the_arrow_cache_and_rewrites_invalidate_it(nuscenes_root, tmp_path):
    copy = _copy_world(nuscenes_root, tmp_path / "world")
    cache = str(tmp_path / "cache")
    first = load_nuscenes(copy, "v1.0-mini", "mini_train", cache_dir=cache, decode_lidar=False)
    second = load_nuscenes(copy, "v1.0-mini", "mini_train", cache_dir=cache, decode_lidar=False)
    assert first.cache_files == second.cache_files
    # Rewrite the tables as a release without annotations (like v1.0-test): a new cache, zero boxes.
    for table in ("sample_annotation", "instance"):
        _edit_table(copy, table, lambda rows: rows.clear())
    third = load_nuscenes(copy, "v1.0-mini", "mini_train", cache_dir=cache)
    assert third.cache_files != first.cache_files
    assert third[0]["boxes"].shape == (0, 7) and third[0]["velocities"].shape == (0, 2)
    assert len(third[0]["lidar_points"]) > 10000


def _copy_world(root, target):
    """Tables copied (to be edited), sensor files linked."""
    os.makedirs(target)
    shutil.copytree(root / "v1.0-mini", target / "v1.0-mini")
    for folder in ("samples", "sweeps", "maps"):
        os.symlink(root / folder, target / folder)
    return str(target)


def _edit_table(root, table, edit):
    path = os.path.join(root, "v1.0-mini", f"{table}.json")
    records = json.load(open(path))
    edit(records)
    json.dump(records, open(path, "w"))


def test_bad_inputs_name_the_sample_and_the_field(nuscenes_root, tmp_path):
    world = _copy_world(nuscenes_root, tmp_path / "world")
    cache = str(tmp_path / "cache")

    def load(**kwargs):
        return load_nuscenes(world, "v1.0-mini", "mini_val", cache_dir=cache, decode_lidar=False, **kwargs)

    with pytest.raises(ValueError, match="split 'train' is not part of v1.0-mini"):
        load_nuscenes(world, "v1.0-mini", "train", cache_dir=cache)
    with pytest.raises(ValueError, match=r"cameras \['CAM_ROOF'\] are not sensors"):
        load(cameras=("CAM_FRONT", "CAM_ROOF"))

    # NaN in the ego pose of one camera image.
    samples = {s["token"]: s for s in json.load(open(os.path.join(world, "v1.0-mini", "sample.json")))}
    sample_data = json.load(open(os.path.join(world, "v1.0-mini", "sample_data.json")))
    victim = next(d for d in sample_data if d["is_key_frame"] and "CAM_BACK/" in d["filename"]
                  and d["sample_token"] in samples)
    _edit_table(world, "ego_pose", lambda rows: [r.update(translation=[float("nan"), 0, 0]) for r in rows
                                                 if r["token"] == victim["ego_pose_token"]])
    with pytest.raises(SampleError, match=f"sample {victim['sample_token']} CAM_BACK: ego_pose "
                                          f"{victim['ego_pose_token']} field translation is not finite"):
        load()
    before = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", cache_dir=cache, decode_lidar=False)
    skipped = load(on_error="skip")
    assert len(skipped) == len(before) - 1 and victim["sample_token"] not in skipped["sample_token"]


def _keyframe_data(world, channel):
    """The first mini_val keyframe's sample_data record of ``channel``."""
    samples = {s["token"]: s for s in json.load(open(os.path.join(world, "v1.0-mini", "sample.json")))}
    val = load_nuscenes(world, "v1.0-mini", "mini_val", cache_dir=os.path.join(world, "..", "clean"),
                        decode_lidar=False)["sample_token"]
    sample_data = json.load(open(os.path.join(world, "v1.0-mini", "sample_data.json")))
    first = next(t for t in val if t in samples)
    return next(d for d in sample_data if d["sample_token"] == first and d["is_key_frame"]
                and d["filename"].startswith(f"samples/{channel}/")), val


@pytest.mark.parametrize("case", ["zero camera rotation", "negative box size", "LiDAR file cut short"])
def test_degenerate_values_and_cut_files_name_the_sample(nuscenes_root, nusc, tmp_path, case):
    """Inputs that used to load silently: a zero quaternion (NaN ego_from_camera), a negative box size,
    a .pcd.bin cut to a whole number of floats but not of points."""
    if case == "LiDAR file cut short":  # sensor files copied, not linked: one is edited
        world = str(tmp_path / "world")
        shutil.copytree(nuscenes_root, world)
    else:
        world = _copy_world(nuscenes_root, tmp_path / "world")
    camera, val = _keyframe_data(world, "CAM_BACK")
    lidar, _ = _keyframe_data(world, "LIDAR_TOP")
    victim = lidar["sample_token"]
    if case == "zero camera rotation":
        token = camera["calibrated_sensor_token"]
        _edit_table(world, "calibrated_sensor", lambda rows: [r.update(rotation=[0, 0, 0, 0]) for r in rows
                                                              if r["token"] == token])
        message = f"sample {victim} CAM_BACK: calibrated_sensor {token} field rotation is not a unit quaternion"
    elif case == "negative box size":
        token = next(t for t in nusc.get("sample", victim)["anns"]
                     if category_to_detection_name(nusc.get("sample_annotation", t)["category_name"]))
        _edit_table(world, "sample_annotation", lambda rows: [r.update(size=[-r["size"][0], *r["size"][1:]])
                                                              for r in rows if r["token"] == token])
        message = f"sample {victim}: sample_annotation {token} field size is not positive"
    else:
        path = os.path.join(world, lidar["filename"])
        data = open(path, "rb").read()
        open(path, "wb").write(data[:len(data) - 8])  # two floats short: whole floats, not whole points
        message = f"sample {victim} LIDAR_TOP: LiDAR file {path} holds {len(data) - 8} bytes, not a multiple of 20"
    cache = str(tmp_path / "cache")
    with pytest.raises(SampleError, match=re.escape(message)):
        load_nuscenes(world, "v1.0-mini", "mini_val", cache_dir=cache, decode_lidar=False)
    skipped = load_nuscenes(world, "v1.0-mini", "mini_val", cache_dir=cache, decode_lidar=False, on_error="skip")
    affected = {victim} if case != "zero camera rotation" else {
        d["sample_token"] for d in json.load(open(os.path.join(world, "v1.0-mini", "sample_data.json")))
        if d["calibrated_sensor_token"] == camera["calibrated_sensor_token"] and d["is_key_frame"]}
    assert skipped["sample_token"] == [t for t in val if t not in affected]


def test_missing_and_corrupt_files_and_tables(nuscenes_root, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(nuscenes_root, world)
    cache = str(tmp_path / "cache")
    image = sorted((world / "samples" / "CAM_FRONT").iterdir())[0]
    image.write_bytes(b"not a jpeg")
    with pytest.raises(SampleError, match=f"CAM_FRONT: image {image} cannot be read"):
        load_nuscenes(str(world), "v1.0-mini", "mini_val", cache_dir=cache)
    image.unlink()
    with pytest.raises(SampleError, match=f"CAM_FRONT: file {image} is missing"):
        load_nuscenes(str(world), "v1.0-mini", "mini_val", cache_dir=cache)
    _edit_table(str(world), "calibrated_sensor",
                lambda rows: [r.update(camera_intrinsic=[[1, 0], [0, 1]]) for r in rows if r["camera_intrinsic"]])
    with pytest.raises(SampleError, match=r"field camera_intrinsic has shape \(2, 2\), expected \(3, 3\)"):
        load_nuscenes(str(world), "v1.0-mini", "mini_train", cache_dir=cache)
    (world / "v1.0-mini" / "visibility.json").unlink()
    with pytest.raises(FileNotFoundError, match="visibility.json is missing"):
        load_nuscenes(str(world), "v1.0-mini", "mini_train", cache_dir=cache)


def test_map_masks_are_the_devkits_at_the_keyframe_pose_and_only_when_asked(nuscenes_root, nusc, cache, val):
    from geomim_hf.data.maps import MAP_CLASSES, MapRasterizer

    assert "map_masks" not in val.column_names and "location" not in val.column_names
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", cache_dir=cache, map_masks=True)
    rasterizer = MapRasterizer(str(nuscenes_root))
    for row in rows:
        sample = nusc.get("sample", row["sample_token"])
        assert row["location"] == nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
        masks = row["map_masks"]
        assert masks.shape == (len(MAP_CLASSES), 200, 200) and masks.dtype == bool
        np.testing.assert_array_equal(masks, rasterizer(row["location"], row["global_from_ego"]))
        assert masks[MAP_CLASSES.index("drivable_area"), 99:101, 99:101].all()  # the ego stands on the road
        assert masks.reshape(len(MAP_CLASSES), -1).any(1).sum() >= 4


def test_map_masks_without_the_expansion_name_the_file_and_the_download(nuscenes_root, tmp_path):
    world = tmp_path / "world"
    shutil.copytree(nuscenes_root, world)
    shutil.rmtree(world / "maps" / "expansion")
    with pytest.raises(FileNotFoundError, match=r"maps/expansion/.*\.json, which is missing.*map expansion v1\.3"):
        load_nuscenes(str(world), "v1.0-mini", "mini_val", cache_dir=str(tmp_path / "cache"), map_masks=True)
