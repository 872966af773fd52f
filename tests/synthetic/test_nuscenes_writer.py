"""The synthetic nuScenes world checked with the official nuscenes-devkit, not with itself."""

import colorsys
import json

import numpy as np
import pytest
from nuscenes.eval.detection.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, points_in_box, view_points
from nuscenes.utils.splits import create_splits_scenes
from PIL import Image
from pyquaternion import Quaternion

from geomim_hf.data.classes import DETECTION_CLASS_ATTRIBUTES
from geomim_hf.synthetic.nuscenes_writer import scene_names
from geomim_hf.synthetic.world import CLASS_SPECS

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_BACK_RIGHT")


def test_devkit_loads_all_tables_and_links(nusc):
    assert len(nusc.scene) == 3 and len(nusc.sample) == 9
    assert [s["name"] for s in nusc.scene] == ["scene-0103", "scene-0916", "scene-0061"]
    splits = create_splits_scenes()
    assert {s["name"] for s in nusc.scene} - set(splits["mini_train"]) == set(splits["mini_val"])
    for scene in nusc.scene:
        token, count = scene["first_sample_token"], 0
        while token:
            sample = nusc.get("sample", token)
            assert sample["scene_token"] == scene["token"]
            assert set(sample["data"]) == {"LIDAR_TOP", *CAMERAS}
            token, count = sample["next"], count + 1
        assert count == scene["nbr_samples"]
    for record in nusc.sample_data:  # prev/next chains are mutual and time-ordered
        if record["next"]:
            following = nusc.get("sample_data", record["next"])
            assert following["prev"] == record["token"] and following["timestamp"] > record["timestamp"]
            assert following["channel"] == record["channel"]


def test_sweeps_between_keyframes(nusc):
    for sample in nusc.sample[1:]:
        for channel in ("LIDAR_TOP", *CAMERAS):
            key = nusc.get("sample_data", sample["data"][channel])
            previous = nusc.get("sample_data", key["prev"])
            assert not previous["is_key_frame"], channel
            assert previous["filename"].startswith(f"sweeps/{channel}/")


def test_files_have_the_real_formats(nusc, nuscenes_root):
    for record in nusc.sample_data[:40]:
        path = nuscenes_root / record["filename"]
        if record["fileformat"] == "jpg":
            with Image.open(path) as image:
                assert image.format == "JPEG" and image.size == (1600, 900) == (record["width"], record["height"])
        else:
            cloud = LidarPointCloud.from_file(str(path))  # x, y, z, intensity, ring
            raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
            assert cloud.points.shape[1] == len(raw) > 10000
            assert set(np.unique(raw[:, 4])) <= set(range(32)) and 0 <= raw[:, 3].min() and raw[:, 3].max() <= 255


def test_num_lidar_pts_equals_devkit_points_in_box(nusc):
    annotations_with_points = 0
    for sample in nusc.sample:
        record = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        cloud = LidarPointCloud.from_file(nusc.get_sample_data_path(record["token"]))
        calibration = nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", record["ego_pose_token"])
        cloud.rotate(Quaternion(calibration["rotation"]).rotation_matrix)
        cloud.translate(np.array(calibration["translation"]))
        cloud.rotate(Quaternion(pose["rotation"]).rotation_matrix)
        cloud.translate(np.array(pose["translation"]))
        for token in sample["anns"]:
            annotation = nusc.get("sample_annotation", token)
            count = int(points_in_box(nusc.get_box(token), cloud.points[:3]).sum())
            assert count == annotation["num_lidar_pts"], annotation["category_name"]
            annotations_with_points += count > 0
    assert annotations_with_points > 100


def test_annotations_are_well_formed(nusc):
    attributes = {a["token"]: a["name"] for a in nusc.attribute}
    assert {v["token"] for v in nusc.visibility} == {"1", "2", "3", "4"}
    names = set()
    for annotation in nusc.sample_annotation:
        name = category_to_detection_name(annotation["category_name"])
        names.add(name)
        valid = DETECTION_CLASS_ATTRIBUTES[name]
        assert [attributes[t] for t in annotation["attribute_tokens"]] in ([[v] for v in valid] if valid else [[]])
        assert annotation["visibility_token"] in {"1", "2", "3", "4"}
        width, length, height = annotation["size"]
        mean = CLASS_SPECS[name].size_mean
        assert 0.4 * mean[0] < length < 1.8 * mean[0] and 0.4 * mean[2] < height < 1.8 * mean[2]
    assert names == set(CLASS_SPECS)
    spans = [i["nbr_annotations"] for i in nusc.instance]
    assert np.mean(np.array(spans) > 1) > 0.7  # instances are tracked over samples
    for instance in nusc.instance:
        first = nusc.get("sample_annotation", instance["first_annotation_token"])
        last = nusc.get("sample_annotation", instance["last_annotation_token"])
        assert first["prev"] == "" and last["next"] == ""


def _projected_centre_hits(nusc, rotate_cameras_degrees=0.0):
    """Share of clearly visible boxes whose devkit-projected centre shows their class colour."""
    hits = total = 0
    for sample in nusc.sample:
        for channel in CAMERAS:
            path, boxes, intrinsics = nusc.get_sample_data(sample["data"][channel], box_vis_level=BoxVisibility.ALL)
            image = np.asarray(Image.open(path), dtype=np.float32) / 255
            for box in boxes:
                annotation = nusc.get("sample_annotation", box.token)
                corners = view_points(box.corners(), intrinsics, normalize=True)
                if annotation["visibility_token"] != "4" or np.ptp(corners[0]) < 12 or np.ptp(corners[1]) < 12:
                    continue
                if rotate_cameras_degrees:  # a wrong extrinsic (camera turned about its y axis)
                    box.center = Quaternion(axis=[0, 1, 0], degrees=rotate_cameras_degrees).rotation_matrix @ box.center
                u, v = np.round(view_points(box.center[:, None], intrinsics, normalize=True)[:2, 0]).astype(int)
                total += 1
                if not (1 <= u < image.shape[1] - 1 and 1 <= v < image.shape[0] - 1):
                    continue
                hue, saturation, _ = colorsys.rgb_to_hsv(*image[v - 1:v + 2, u - 1:u + 2].reshape(-1, 3).mean(0))
                expected = CLASS_SPECS[category_to_detection_name(annotation["category_name"])].hue
                hits += abs((hue * 360 - expected + 180) % 360 - 180) < 15 and saturation > 0.35
    return hits, total


def test_projected_box_centres_land_on_their_objects(nusc):
    hits, total = _projected_centre_hits(nusc)
    assert total > 40 and hits / total >= 0.95
    # Negative control: the same check with cameras turned by 4 degrees fails for most boxes.
    wrong_hits, wrong_total = _projected_centre_hits(nusc, rotate_cameras_degrees=4.0)
    assert wrong_hits / wrong_total < 0.6


def test_ego_drives_on_the_devkit_map(nusc):
    for sample in nusc.sample:
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        log = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])
        mask = nusc.get("map", log["map_token"])["mask"]
        assert mask.is_on_mask(pose["translation"][0], pose["translation"][1])
    # And a point far from any road is not drivable: the centre of a block.
    assert not mask.mask().all()


def test_ground_truth_as_predictions_scores_perfectly(nusc, tmp_path):
    val_scenes = set(create_splits_scenes()["mini_val"])
    results = {}
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in val_scenes:
            continue
        boxes = []
        for token in sample["anns"]:
            annotation = nusc.get("sample_annotation", token)
            if annotation["num_lidar_pts"] == 0:  # the devkit drops such ground truth too
                continue
            velocity = nusc.box_velocity(token)[:2]
            attribute = [nusc.get("attribute", t)["name"] for t in annotation["attribute_tokens"]]
            boxes.append({
                "sample_token": sample["token"], "translation": annotation["translation"],
                "size": annotation["size"], "rotation": annotation["rotation"],
                "velocity": np.nan_to_num(velocity).tolist(),
                "detection_name": category_to_detection_name(annotation["category_name"]),
                "detection_score": 1.0, "attribute_name": attribute[0] if attribute else "",
            })
        results[sample["token"]] = boxes
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"meta": meta, "results": results}))
    evaluation = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), "mini_val",
                               str(tmp_path / "eval"), verbose=False)
    metrics = evaluation.main(plot_examples=0, render_curves=False)
    assert metrics["mean_ap"] >= 0.99 and metrics["nd_score"] >= 0.99
    assert all(ap >= 0.99 for ap in metrics["mean_dist_aps"].values())


def test_scene_names():
    assert scene_names("v1.0-mini", 2) == ["scene-0103", "scene-0916"]
    splits = create_splits_scenes()
    names = scene_names("v1.0-trainval", 12)
    assert names[0] in splits["val"] and names[1] in splits["train"] and len(set(names)) == 12
    with pytest.raises(ValueError, match="v1.0-mini has 10 scenes"):
        scene_names("v1.0-mini", 11)
