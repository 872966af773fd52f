import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import pipeline

import geomim_hf  # noqa: F401  (registers the pipelines)
from geomim_hf import GeoMIMConfig, GeoMIMForBEVSegmentation, GeoMIMImageProcessor
from geomim_hf.data.geometry import invert_rigid, matrix_to_quaternion, rotation_z, transform_points
from geomim_hf.modeling.view_transformer import LiftSplat
from geomim_hf.pipelines import BEVMapSegmentationPipeline, BEVObjectDetectionPipeline, model_inputs
from geomim_hf.synthetic.sensors import cast_lidar_settled, four_camera_rig, nuscenes_rig, render_views
from geomim_hf.synthetic.world import location_grid, simulate_scene
from tests.helpers import hub_cache


@pytest.fixture(scope="module")
def four_camera_frame():
    """A synthetic frame seen by the four-camera rig (other heights, focal lengths and image sizes than nuScenes'),
    its previous frame, and the LiDAR returns of the current one in the ego frame."""
    scene = simulate_scene(1, 0, location_grid(0, "boston-seaport"), np.array([0.0, 0.5]), pre_roll=0.0)  # ego at 4 m/s
    sample = render_views(scene, four_camera_rig(), 0.5)
    sample.pop("camera_names")
    sample["prev_images"] = render_views(scene, four_camera_rig(), 0.0)["images"]
    sample["ego_from_prev_ego"] = invert_rigid(scene.global_from_ego(0.5)) @ scene.global_from_ego(0.0)
    lidar = nuscenes_rig(np.random.default_rng(0)).lidar
    scan, _ = cast_lidar_settled(scene, lidar, 0.5, np.random.default_rng(1))
    return sample, transform_points(lidar.ego_from_lidar, scan.points()[0])


def _lidar_depth(sample, points_ego, processed_from_original, stride, feature_size):
    """(N, h, w) depth of the nearest LiDAR return in each stride x stride block of each processed view, projected
    here by hand (pinhole, then the processor's pixel map): 0 where none falls."""
    depth = np.zeros((len(sample["images"]), *feature_size))
    for view, (intrinsics, ego_from_camera) in enumerate(zip(sample["intrinsics"], sample["ego_from_camera"])):
        points_camera = transform_points(invert_rigid(ego_from_camera), points_ego)
        points_camera = points_camera[points_camera[:, 2] > 0.5]
        pixels = (processed_from_original[view] @ intrinsics @ points_camera.T).T
        columns = np.floor(pixels[:, 0] / pixels[:, 2] + 0.5).astype(int) // stride
        rows = np.floor(pixels[:, 1] / pixels[:, 2] + 0.5).astype(int) // stride
        inside = (rows >= 0) & (rows < feature_size[0]) & (columns >= 0) & (columns < feature_size[1])
        for row, column, z in sorted(zip(rows[inside], columns[inside], points_camera[inside, 2]), key=lambda r: -r[2]):
            depth[view, row, column] = z  # the nearest return wins
    return depth


def test_a_four_camera_rig_lifts_lidar_depth_onto_the_lidar(four_camera_frame):
    """The whole camera chain on a rig the presets never saw: views of four sizes resized by the processor, lifted
    by the detector's Lift-Splat with one-hot LiDAR depth. The splatted mass lands in the BEV cells that hold
    LiDAR returns, and not when the views' poses are wrong."""
    sample, points_ego = four_camera_frame
    points_ego = points_ego[points_ego[:, 2] > 0.3]  # off the ground: sparse in BEV
    config = GeoMIMConfig.from_preset("geomim-small")  # 8 x 22 depth blocks a view
    inputs = model_inputs({k: sample[k] for k in ("images", "intrinsics", "ego_from_camera")},
                          GeoMIMImageProcessor(image_size=config.image_size), temporal=False)
    lift = LiftSplat(config.image_size, 16, config.detection_depth_bins, config.detection_grid)
    bins = config.detection_depth_bins
    cells = config.detection_grid.cell_of(torch.from_numpy(points_ego))
    occupied = torch.zeros(config.detection_grid.num_cells)
    occupied[cells[cells >= 0]] = 1.0
    # A depth block's return lifts from the block's centre pixel, up to half a block (about 1 m here) beside the
    # return: count the cells next to one too.
    occupied = torch.nn.functional.max_pool2d(occupied.view(1, *config.detection_grid.size), 3, 1, 1).flatten() > 0

    depth = _lidar_depth(sample, points_ego, inputs["processed_from_original"][0].double().numpy(), 16,
                         lift.feature_size)
    index = bins.index_of(torch.from_numpy(depth))  # (N, h, w)
    one_hot = torch.nn.functional.one_hot(index.clamp(min=0), bins.count).float() * (index >= 0)[..., None]

    def splat_share(ego_from_camera):
        bev = lift(one_hot.permute(0, 3, 1, 2)[None], torch.ones(1, 4, 1, *lift.feature_size), inputs["intrinsics"],
                   torch.as_tensor(ego_from_camera, dtype=torch.float32)[None], inputs["processed_from_original"])
        bev = bev[0, 0].flatten()
        return float(bev[occupied].sum() / bev.sum()), float(bev.sum())

    share, mass = splat_share(sample["ego_from_camera"])
    assert mass > 100 and share > 0.95
    swapped, _ = splat_share(sample["ego_from_camera"][[0, 2, 1, 3]])  # left and right exchanged
    turned = sample["ego_from_camera"].copy()
    turned[:, :3, :3] = rotation_z(np.deg2rad(20.0)) @ turned[:, :3, :3]  # every camera 20 degrees off
    assert swapped < 0.9 and splat_share(turned)[0] < 0.9


def test_detection_pipeline_on_a_four_camera_rig(detector_dir, four_camera_frame):
    """Views of different sizes, a previous frame, batching: the pipeline's boxes are the model's own decoding of
    the processor's inputs, in the ego frame, and a batch gives what one sample at a time gives."""
    sample, _ = four_camera_frame
    detector = pipeline("bev-object-detection", model=str(detector_dir))
    assert isinstance(detector, BEVObjectDetectionPipeline)
    found = detector(sample, score_threshold=0.0, top_k=20)
    model, processor = detector.model, detector.image_processor
    with torch.no_grad():
        reference = model.post_process(model(**model_inputs(sample, processor, temporal=True)), score_threshold=0.0,
                                       top_k=20)[0]
    assert len(found) == len(reference["scores"]) > 0
    for detection, box, score, label in zip(found, reference["boxes"], reference["scores"], reference["labels"]):
        assert detection["label"] == model.config.class_names[int(label)]
        assert detection["score"] == pytest.approx(float(score))
        assert [detection["box"][k] for k in ("x", "y", "z", "length", "width", "height", "yaw")] == \
            pytest.approx(box.tolist(), abs=1e-5)
        assert abs(detection["box"]["x"]) <= 51.2 and abs(detection["box"]["y"]) <= 51.2
        assert detection["attribute"] is None or detection["attribute"].split(".")[0] in ("vehicle", "cycle",
                                                                                          "pedestrian")
    moved = {**sample, "ego_from_prev_ego": np.eye(4)}  # the previous frame matters to a temporal model
    assert detector(moved, score_threshold=0.0, top_k=20) != found
    batched = detector([sample, moved, sample], batch_size=2, score_threshold=0.0, top_k=20)
    assert len(batched) == 3
    for one, other in zip(batched, [found, detector(moved, score_threshold=0.0, top_k=20), found]):
        assert [d["label"] for d in one] == [d["label"] for d in other]
        assert [d["score"] for d in one] == pytest.approx([d["score"] for d in other], abs=1e-5)


def test_rotation_and_translation_instead_of_ego_from_camera(detector_dir, four_camera_frame):
    sample, _ = four_camera_frame
    current = {k: sample[k] for k in ("images", "intrinsics", "ego_from_camera")}
    detector = pipeline("bev-object-detection", model=str(detector_dir))
    reference = detector(current, score_threshold=0.0)
    for rotation in (sample["ego_from_camera"][:, :3, :3],
                     np.stack([matrix_to_quaternion(r) for r in sample["ego_from_camera"][:, :3, :3]])):
        alternative = {"images": sample["images"], "intrinsics": sample["intrinsics"],
                       "ego_from_camera_rotation": rotation,
                       "ego_from_camera_translation": sample["ego_from_camera"][:, :3, 3]}
        assert [d["score"] for d in detector(alternative, score_threshold=0.0)] == \
            pytest.approx([d["score"] for d in reference], abs=1e-5)


def test_pipeline_inputs_are_checked(detector_dir, four_camera_frame):
    sample, _ = four_camera_frame
    detector = pipeline("bev-object-detection", model=str(detector_dir))
    with pytest.raises(ValueError, match=r"unknown sample keys \['extrinsics'\]"):
        detector({**sample, "extrinsics": sample["ego_from_camera"]})
    with pytest.raises(ValueError, match="a sample needs 'intrinsics'"):
        detector({"images": sample["images"], "ego_from_camera": sample["ego_from_camera"]})
    with pytest.raises(ValueError, match="a sample needs ego_from_camera"):
        detector({"images": sample["images"], "intrinsics": sample["intrinsics"]})
    with pytest.raises(ValueError, match="prev_images need ego_from_prev_ego"):
        detector({k: v for k, v in sample.items() if k != "ego_from_prev_ego"})
    with pytest.raises(ValueError, match=r"intrinsics: expected shape \(N, 3, 3\) = \(4, 3, 3\) for 4 images"):
        detector({**sample, "intrinsics": sample["intrinsics"][:3]})
    with pytest.raises(TypeError, match="a sample is a dict"):
        detector([sample["images"]])


def test_segmentation_pipeline_gives_the_models_probabilities(tmp_path, four_camera_frame):
    sample, _ = four_camera_frame
    torch.manual_seed(0)
    config = GeoMIMConfig.from_preset("geomim-tiny", det_temporal=False)
    GeoMIMForBEVSegmentation(config).save_pretrained(tmp_path)
    GeoMIMImageProcessor(image_size=config.image_size).save_pretrained(tmp_path)
    segmenter = pipeline("bev-map-segmentation", model=str(tmp_path))
    assert isinstance(segmenter, BEVMapSegmentationPipeline)
    masks = segmenter(sample, threshold=0.45)
    with torch.no_grad():
        model = segmenter.model
        probabilities = model.post_process(model(**model_inputs(sample, segmenter.image_processor,
                                                                temporal=False)))[0].numpy()
    assert [m["label"] for m in masks] == list(config.seg_class_names)
    for mask, reference in zip(masks, probabilities):
        assert mask["probabilities"].shape == config.segmentation_grid.size
        assert np.allclose(mask["probabilities"], reference, atol=1e-6)
        assert np.array_equal(np.asarray(mask["mask"]) > 0, reference >= 0.45)


def test_pipeline_from_a_hub_id_offline(detector_dir, tmp_path):
    """``pipeline(task, model="org/name")`` with HF_HUB_OFFLINE=1 reads the standard hub cache."""
    cache = hub_cache(tmp_path / "hub", detector_dir)
    script = """
import numpy as np, geomim_hf
from transformers import pipeline
detector = pipeline("bev-object-detection", model="org/geomim-tiny")
views = [np.full((90, 160, 3), 100, np.uint8), np.full((120, 160, 3), 50, np.uint8)]
intrinsics = np.array([[[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]], [[120.0, 0, 80], [0, 120.0, 60], [0, 0, 1]]])
ego_from_camera = np.tile(np.eye(4), (2, 1, 1))
ego_from_camera[:, :3, :3] = [[0, 0, 1], [-1, 0, 0], [0, -1, 0]]
found = detector({"images": views, "intrinsics": intrinsics, "ego_from_camera": ego_from_camera}, score_threshold=0)
print(type(detector).__name__, type(detector.image_processor).__name__, len(found) > 0, sorted(found[0]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BEVObjectDetectionPipeline GeoMIMImageProcessor True ['attribute', 'box', 'label', 'score', " \
           "'velocity']" in result.stdout
