import functools
import inspect

import pytest
import torch

from geomim_hf import (
    GeoMIMConfig,
    GeoMIMForBEVDetection,
    GeoMIMForBEVSegmentation,
    GeoMIMForMaskedBEVModeling,
    GeoMIMImageProcessor,
    GeoMIMLidarTeacher,
    GeoMIMLidarTeacherConfig,
    GeoMIMModel,
)
from geomim_hf.data import GeoMIMDataset, collate_geomim, load_nuscenes, make_dataloader
from geomim_hf.modeling_geomim import random_cell_mask
from geomim_hf.modeling_sparse_teacher import GeoMIMSparseTeacher
from geomim_hf.teacher_cache import TeacherFeatureCache, write_features, write_index

CAMERA_INPUTS = {"pixel_values", "intrinsics", "ego_from_camera", "processed_from_original", "augmented_ego_from_ego"}
TARGETS = {"boxes", "velocities", "labels", "attributes", "box_mask"}


def test_collate_pads_with_masks():
    samples = [
        {"pixel_values": torch.zeros(2, 3, 4, 4), "sample_token": "a", "boxes": torch.ones(3, 7),
         "velocities": torch.ones(3, 2), "labels": torch.tensor([0, 1, 2]), "attributes": torch.tensor([1, -1, 2]),
         "lidar_points": torch.ones(5, 5)},
        {"pixel_values": torch.ones(2, 3, 4, 4), "sample_token": "b", "boxes": torch.zeros(0, 7),
         "velocities": torch.zeros(0, 2), "labels": torch.zeros(0, dtype=torch.long),
         "attributes": torch.zeros(0, dtype=torch.long), "lidar_points": torch.ones(2, 5)},
    ]
    batch = collate_geomim(samples)
    assert batch["pixel_values"].shape == (2, 2, 3, 4, 4) and batch["sample_token"] == ["a", "b"]
    assert batch["boxes"].shape == (2, 3, 7) and batch["box_mask"].tolist() == [[True] * 3, [False] * 3]
    assert batch["labels"][1].tolist() == [-1, -1, -1] and batch["labels"][0].tolist() == [0, 1, 2]
    assert batch["lidar_points"].shape == (2, 5, 5) and batch["point_mask"].sum(1).tolist() == [5, 2]
    assert batch["lidar_points"][1, 2:].abs().sum() == 0
    chosen = collate_geomim(samples, input_names=("pixel_values", "box_mask", "labels", "depth_labels"))
    assert set(chosen) == {"pixel_values", "box_mask", "labels"}  # only what the samples hold
    for key in chosen:
        assert torch.equal(chosen[key], batch[key]), key


def test_batches_do_not_depend_on_the_number_of_workers(nuscenes_root, tmp_path):
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", sweeps=1, cache_dir=str(tmp_path))
    processor = GeoMIMImageProcessor(image_size=(64, 176), depth_stride=8)
    batches = {}
    for workers in (0, 2):
        loader = make_dataloader(rows, processor, batch_size=2, training=True, num_workers=workers, seed=7,
                                 return_depth=True)
        batches[workers] = list(loader)
    assert len(batches[0]) == 3
    for first, second in zip(batches[0], batches[2]):
        assert first["sample_token"] == second["sample_token"]
        for key in ("pixel_values", "processed_from_original", "augmented_ego_from_ego", "depth_labels", "boxes",
                    "lidar_points"):
            assert torch.equal(first[key], second[key]), key
    batch = batches[0][0]
    assert batch["depth_labels"].shape == (2, 6, 8, 22) and (batch["depth_labels"] > 0).any()
    assert batch["labels"].shape == batch["box_mask"].shape and (batch["labels"][~batch["box_mask"]] == -1).all()

    # Augmentations depend on (seed, epoch, index) only: a new epoch draws new ones.
    dataset = GeoMIMDataset(rows, processor, training=True, seed=7)
    first = dataset[0]["augmented_ego_from_ego"]
    assert torch.equal(dataset[0]["augmented_ego_from_ego"], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["augmented_ego_from_ego"], first)


def _record_blas_threads(worker_id, folder):
    from threadpoolctl import threadpool_info

    threads = {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}
    (folder / f"worker{worker_id}").write_text(" ".join(map(str, sorted(threads))))


def test_workers_run_one_blas_thread_and_the_callers_init(nuscenes_root, tmp_path):
    """Each worker's numpy BLAS runs one thread (they only fought for the cores), and a worker_init_fn passed by
    the caller still runs, after it. The batches equal 0 workers' (the test above)."""
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", sweeps=0, cache_dir=str(tmp_path))
    processor = GeoMIMImageProcessor(image_size=(64, 176), depth_stride=8)
    folder = tmp_path / "workers"
    folder.mkdir()
    loader = make_dataloader(rows, processor, batch_size=2, num_workers=2,
                             worker_init_fn=functools.partial(_record_blas_threads, folder=folder))
    next(iter(loader))
    assert sorted(path.name for path in folder.iterdir()) == ["worker0", "worker1"]
    assert {path.read_text() for path in folder.iterdir()} == {"1"}


def test_persistent_workers_see_every_epoch(nuscenes_root, tmp_path):
    """set_epoch reaches the DataLoader's persistent workers: with 2 workers each epoch's augmentation is
    the one 0 workers draw, and epoch 1 differs from epoch 0 (the workers' own dataset copies once kept 0)."""
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", sweeps=0, cache_dir=str(tmp_path))
    processor = GeoMIMImageProcessor(image_size=(64, 176))
    transforms = {}
    for workers in (0, 2):
        loader = make_dataloader(rows, processor, batch_size=3, training=True, num_workers=workers, seed=3,
                                 with_images=False)
        assert loader.persistent_workers == (workers > 0)
        for epoch in (0, 1, 2):
            loader.dataset.set_epoch(epoch)
            transforms[workers, epoch] = {token: transform for batch in loader
                                          for token, transform in zip(batch["sample_token"],
                                                                      batch["augmented_ego_from_ego"])}
    for epoch in (0, 1, 2):
        expected, actual = transforms[0, epoch], transforms[2, epoch]
        assert expected.keys() == actual.keys()
        for token in expected:
            assert torch.equal(expected[token], actual[token]), (epoch, token)
    for token in transforms[0, 0]:
        assert not torch.equal(transforms[2, 0][token], transforms[2, 1][token])


@pytest.mark.parametrize("model_class", [GeoMIMModel, GeoMIMForMaskedBEVModeling, GeoMIMForBEVDetection,
                                         GeoMIMForBEVSegmentation, GeoMIMLidarTeacher, GeoMIMSparseTeacher])
def test_model_input_names_are_forward_arguments(model_class):
    arguments = inspect.signature(model_class.forward).parameters
    assert model_class.model_input_names[0] == model_class.main_input_name
    assert [name for name in model_class.model_input_names if name not in arguments] == []


def test_batches_hold_exactly_the_model_inputs(nuscenes_root, tmp_path):
    """model(**batch) for the detector, the pretraining model (cached teacher features) and the LiDAR
    teacher; the metadata stays out and the cached features come moved by each sample's BEV mirror."""
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", sweeps=0, cache_dir=str(tmp_path / "rows"))
    config = GeoMIMConfig.from_preset("geomim-tiny", kernel_backend="torch", det_temporal=False)
    processor = GeoMIMImageProcessor(image_size=config.image_size, bev_rotate_range=(0.0, 0.0),
                                     bev_scale_range=(1.0, 1.0), bev_flip_probability=0.5)

    detector = GeoMIMForBEVDetection(config)
    loader = make_dataloader(rows, processor, 2, training=True, return_depth=True, input_names=detector.model_input_names)
    batch = next(iter(loader))
    assert set(batch) == CAMERA_INPUTS | TARGETS | {"depth_labels"}
    assert detector(**batch).loss.isfinite()

    # A cache of random features on the student's target grid; mirrors only, as pretraining draws them.
    cache_dir = tmp_path / "teacher_features"
    cache_dir.mkdir()
    grid, generator = config.target_grid, torch.Generator().manual_seed(0)
    features = {token: torch.randn(3, *grid.size, generator=generator) for token in rows["sample_token"]}
    for token, bev in features.items():
        write_features(str(cache_dir), token, bev)
    write_index(str(cache_dir), {"x_range": list(grid.x_range), "y_range": list(grid.y_range),
                                 "resolution": grid.resolution, "channels": 3})
    student = GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny", kernel_backend="torch",
                                                                  target_channels=3))
    loader = make_dataloader(rows, processor, 3, training=True, seed=5, return_depth=True, with_targets=False,
                             teacher_features=TeacherFeatureCache(str(cache_dir)), input_names=student.model_input_names)
    tokens = {torch.flip(bev, dims).sum().item(): token for token, bev in features.items()
              for dims in ([], [-1], [-2], [-2, -1])}
    mirrors = 0
    for batch in loader:
        assert set(batch) == CAMERA_INPUTS | {"teacher_features", "depth_labels"}
        for bev, transform in zip(batch["teacher_features"], batch["augmented_ego_from_ego"]):
            source = features[tokens[bev.sum().item()]]
            dims = [d for d, sign in ((-1, transform[0, 0]), (-2, transform[1, 1])) if sign < 0]
            torch.testing.assert_close(bev, torch.flip(source, dims) if dims else source, rtol=0, atol=0)
            mirrors += bool(dims)
    assert mirrors > 0  # some samples were mirrored
    mask = random_cell_mask(student.config, torch.Generator().manual_seed(0))
    assert student(**batch, bool_masked_pos=mask).loss.isfinite()

    teacher = GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig.for_student(config))
    loader = make_dataloader(rows, processor, 2, training=True, with_images=False, input_names=teacher.model_input_names)
    batch = next(iter(loader))
    assert set(batch) == {"lidar_points", "ego_from_lidar", "point_mask"} | TARGETS - {"attributes"}
    assert teacher(**batch).loss.isfinite()


def test_map_masks_move_with_the_bev_augmentation(nuscenes_root, tmp_path):
    """Mirrors only: the row's masks flipped exactly; rotation and scale: drawn again at the augmented pose,
    the ego still on the road and the boxes' parked cars still where the masks say."""
    import numpy as np

    from geomim_hf.data.maps import MAP_CLASSES, MapRasterizer

    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", cache_dir=str(tmp_path), map_masks=True)
    mirrors = GeoMIMImageProcessor(image_size=(64, 176), bev_rotate_range=(0, 0), bev_scale_range=(1, 1))
    rasterizer = MapRasterizer(str(nuscenes_root))
    dataset = GeoMIMDataset(rows, mirrors, training=True, seed=1, map_rasterizer=rasterizer)
    flips = set()
    for index in range(len(rows)):
        sample, masks = dataset[index], torch.as_tensor(np.asarray(rows[index]["map_masks"]))
        linear = sample["augmented_ego_from_ego"][:3, :3]
        dims = [dim for dim, sign in ((-1, linear[0, 0]), (-2, linear[1, 1])) if sign < 0]
        flips.add(tuple(dims))
        assert torch.equal(sample["map_masks"], torch.flip(masks, dims) if dims else masks)
    assert len(flips) > 1
    assert torch.equal(GeoMIMDataset(rows, mirrors)[0]["map_masks"], torch.as_tensor(np.asarray(rows[0]["map_masks"])))

    turning = GeoMIMImageProcessor(image_size=(64, 176), bev_rotate_range=(20, 22.5), bev_scale_range=(1.05, 1.05))
    sample = GeoMIMDataset(rows, turning, training=True, seed=1, map_rasterizer=rasterizer)[0]
    augmented_from_ego = sample["augmented_ego_from_ego"].double().numpy()
    expected = rasterizer(rows[0]["location"], np.asarray(rows[0]["global_from_ego"]) @ np.linalg.inv(augmented_from_ego))
    assert torch.equal(sample["map_masks"], torch.from_numpy(expected))
    assert sample["map_masks"][MAP_CLASSES.index("drivable_area"), 99:101, 99:101].all()
    with pytest.raises(ValueError, match="map_rasterizer=MapRasterizer"):
        GeoMIMDataset(rows, turning, training=True)[0]
    batch = collate_geomim([sample, sample], input_names=("pixel_values", "map_masks"))
    assert batch["map_masks"].shape == (2, len(MAP_CLASSES), 200, 200) and batch["map_masks"].dtype == torch.bool


def test_the_dataset_lets_the_processor_draft_its_jpegs(nuscenes_root, tmp_path):
    """The files reach the processor undecoded, so jpeg_draft takes effect (datasets used to decode them in
    full first, which made it a silent no-op); with jpeg_draft=False the images are the full decode's."""
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", sweeps=0, cache_dir=str(tmp_path))
    samples = {draft: GeoMIMDataset(rows, GeoMIMImageProcessor(image_size=(64, 176), jpeg_draft=draft))[0]
               for draft in (True, False)}
    row = rows[0]
    full = GeoMIMImageProcessor(image_size=(64, 176), jpeg_draft=False)(
        row["images"], row["intrinsics"], row["ego_from_camera"])
    assert torch.equal(samples[False]["pixel_values"], full["pixel_values"][0])
    assert torch.equal(samples[True]["processed_from_original"], samples[False]["processed_from_original"])
    difference = (samples[True]["pixel_values"] - samples[False]["pixel_values"]).abs().mean()
    assert 0 < difference < 0.05  # normalised units: another decode of the same image
