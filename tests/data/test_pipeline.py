import torch

from geomim_hf import GeoMIMImageProcessor
from geomim_hf.data import GeoMIMDataset, collate_geomim, load_nuscenes, make_dataloader


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
        for key in ("pixel_values", "processed_from_original", "augmented_ego_from_ego", "depth_maps", "boxes",
                    "lidar_points"):
            assert torch.equal(first[key], second[key]), key
    batch = batches[0][0]
    assert batch["depth_maps"].shape == (2, 6, 8, 22) and (batch["depth_maps"] > 0).any()
    assert batch["labels"].shape == batch["box_mask"].shape and (batch["labels"][~batch["box_mask"]] == -1).all()

    # Augmentations depend on (seed, epoch, index) only: a new epoch draws new ones.
    dataset = GeoMIMDataset(rows, processor, training=True, seed=7)
    first = dataset[0]["augmented_ego_from_ego"]
    assert torch.equal(dataset[0]["augmented_ego_from_ego"], first)
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0]["augmented_ego_from_ego"], first)


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
