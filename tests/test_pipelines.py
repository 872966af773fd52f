import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import pipeline

import geomim_hf  # noqa: F401  (registers the pipelines)
from geomim_hf import GeoMIMConfig, GeoMIMForBEVDetection, GeoMIMForBEVSegmentation, GeoMIMImageProcessor
from geomim_hf.data.geometry import BOX_FIELDS, invert_rigid, matrix_to_quaternion, rotation_z, transform_points
from geomim_hf.modeling_geomim import CAMERA_INPUTS
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


def _box_rows(detections):
    return [[d["box"][k] for k in BOX_FIELDS] + [d["velocity"]["x"], d["velocity"]["y"], d["score"]]
            for d in detections]


def test_detection_pipeline_on_a_four_camera_rig(detector_dir, four_camera_frame):
    """Views of different sizes, a previous frame, batching: the pipeline's boxes are the model's own decoding of
    the processor's outputs, in the ego frame, and a batch gives what one sample at a time gives."""
    sample, _ = four_camera_frame
    detector = pipeline("bev-object-detection", model=str(detector_dir))
    assert isinstance(detector, BEVObjectDetectionPipeline)
    found = detector(sample, score_threshold=0.0, top_k=20)
    model, processor = detector.model, detector.image_processor
    current = processor(sample["images"], sample["intrinsics"], sample["ego_from_camera"])
    previous = processor(sample["prev_images"], sample["intrinsics"], sample["ego_from_camera"])
    inputs = {**{key: current[key] for key in CAMERA_INPUTS}, **{f"prev_{key}": previous[key] for key in CAMERA_INPUTS},
              "ego_from_prev_ego": torch.as_tensor(sample["ego_from_prev_ego"], dtype=torch.float32)[None]}
    with torch.no_grad():
        reference = model.post_process(model(**inputs), score_threshold=0.0, top_k=20)[0]
    assert len(found) == len(reference["scores"]) > 0
    assert np.allclose(_box_rows(found), torch.cat([reference["boxes"], reference["velocities"],
                                                    reference["scores"][:, None]], 1).numpy(), atol=1e-5)
    for detection, label in zip(found, reference["labels"]):
        assert detection["label"] == model.config.class_names[int(label)]
        assert abs(detection["box"]["x"]) <= 51.2 and abs(detection["box"]["y"]) <= 51.2
        assert detection["attribute"] is None or detection["attribute"].split(".")[0] in ("vehicle", "cycle",
                                                                                          "pedestrian")
    still = {**sample, "ego_from_prev_ego": np.eye(4)}  # the previous frame matters to a temporal model
    alone = detector(still, score_threshold=0.0, top_k=20)
    assert _box_rows(alone) != _box_rows(found)
    batched = detector([sample, still, sample], batch_size=2, score_threshold=0.0, top_k=20)
    assert len(batched) == 3
    for one, other in zip(batched, [found, alone, found]):
        assert [d["label"] for d in one] == [d["label"] for d in other]
        assert np.allclose(_box_rows(one), _box_rows(other), atol=1e-4)


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
        assert np.allclose(_box_rows(detector(alternative, score_threshold=0.0)), _box_rows(reference), atol=1e-5)
    with pytest.raises(ValueError, match="gives its camera poses once"):
        detector({**current, "ego_from_camera_rotation": sample["ego_from_camera"][:, :3, :3],
                  "ego_from_camera_translation": sample["ego_from_camera"][:, :3, 3]})


def test_pipeline_inputs_are_checked(detector_dir, four_camera_frame, tmp_path):
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
    sheared = np.eye(4)
    sheared[0, 1] = 0.2
    with pytest.raises(ValueError, match="ego_from_prev_ego: expected a finite rigid"):
        detector({**sample, "ego_from_prev_ego": sheared})
    with pytest.raises(ValueError, match=r"intrinsics: expected shape \(N, 3, 3\) = \(4, 3, 3\) for 4 images"):
        detector({**sample, "intrinsics": sample["intrinsics"][:3]})
    with pytest.raises(ValueError, match=r"prev_intrinsics: expected shape \(N, 3, 3\) = \(3, 3, 3\) for 3 images"):
        detector({**sample, "prev_images": sample["prev_images"][:3]})
    with pytest.raises(TypeError, match="images: expected a list of N >= 1 views"):
        detector({**sample, "images": "front.jpg"})
    with pytest.raises(TypeError, match="a sample is a dict"):
        detector([sample["images"]])
    two_views = {"images": sample["images"][:2], "intrinsics": sample["intrinsics"][:2],
                 "ego_from_camera": sample["ego_from_camera"][:2]}
    with pytest.raises(ValueError, match=r"stacks samples with as many views each, got view counts \[4, 2\]"):
        detector([sample, two_views], batch_size=2)
    GeoMIMForBEVSegmentation(GeoMIMConfig.from_preset("geomim-tiny")).save_pretrained(tmp_path / "segmenter")
    with pytest.raises(ValueError, match=r"BEVObjectDetectionPipeline runs a GeoMIMForBEVDetection, got a model "
                                         r"saved as \['GeoMIMForBEVSegmentation'\]"):
        pipeline("bev-object-detection", model=str(tmp_path / "segmenter"))


def test_a_folder_without_its_processor_gets_the_models_input_size(tmp_path, four_camera_frame):
    sample, _ = four_camera_frame
    config = GeoMIMConfig.from_preset("geomim-tiny", image_size=(96, 256), det_temporal=False)
    GeoMIMForBEVDetection(config).save_pretrained(tmp_path)
    detector = pipeline("bev-object-detection", model=str(tmp_path))
    assert tuple(detector.image_processor.image_size) == (96, 256)
    assert isinstance(detector({k: sample[k] for k in ("images", "intrinsics", "ego_from_camera")}), list)


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
from geomim_hf.data.geometry import camera_rotation, make_transform
detector = pipeline("bev-object-detection", model="org/geomim-tiny")
views = [np.full((90, 160, 3), 100, np.uint8), np.full((120, 160, 3), 50, np.uint8)]
intrinsics = np.array([[[100.0, 0, 80], [0, 100.0, 45], [0, 0, 1]], [[120.0, 0, 80], [0, 120.0, 60], [0, 0, 1]]])
ego_from_camera = np.tile(make_transform(camera_rotation(0.0), [1.0, 0.0, 1.5]), (2, 1, 1))
found = detector({"images": views, "intrinsics": intrinsics, "ego_from_camera": ego_from_camera}, score_threshold=0)
print(type(detector).__name__, type(detector.image_processor).__name__, len(found) > 0, sorted(found[0]))
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "BEVObjectDetectionPipeline GeoMIMImageProcessor True ['attribute', 'box', 'label', 'score', " \
           "'velocity']" in result.stdout
