"""From a 🤗 Dataset of sample-contract rows to batches of tensors: a ``torch.utils.data.Dataset``
that runs the image processor, and a collate function that pads boxes and points with masks and keeps
exactly the inputs a model takes, so that ``model(**batch)`` works."""

from __future__ import annotations

import functools

import datasets
import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.utils.data import DataLoader

from .geometry import invert_rigid
from .targets import augment_boxes, augment_points

FIXED_KEYS = ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original", "augmented_ego_from_ego",
              "depth_labels", "teacher_features", "ego_from_lidar", "global_from_ego", "prev_pixel_values",
              "prev_intrinsics", "prev_ego_from_camera", "prev_processed_from_original", "ego_from_prev_ego",
              "map_masks")


class GeoMIMDataset(torch.utils.data.Dataset):
    """Processed samples for training or evaluation.

    Args:
        dataset: rows of the sample contract with ``lidar_points`` (``load_nuscenes``/``load_waymo``).
        processor: a :class:`~geomim_hf.GeoMIMImageProcessor`.
        training: draw the image and BEV augmentations.
        seed: augmentations depend only on ``(seed, epoch, index)``, so any number of workers gives
            the same batches; call :meth:`set_epoch` between epochs. The epoch lives in shared memory,
            so it reaches persistent DataLoader workers too (each holds its own copy of the dataset).
        return_depth: add the LiDAR depth maps at the processor's ``depth_stride`` as ``depth_labels`` (the
            processor's ``depth_maps``, named as the models take them).
        with_targets: add boxes, velocities, labels, attributes and the LiDAR points.
        with_images: process the camera images; without them (a LiDAR-only model) only the BEV
            augmentation of points and boxes runs, and the images are never decoded.
        temporal: add the previous keyframe (BEVDet4D): ``prev_pixel_values``, ``prev_intrinsics``,
            ``prev_ego_from_camera``, ``prev_processed_from_original`` (its images get the same augmentation)
            and ``ego_from_prev_ego``; a scene's first keyframe is its own previous one.
        teacher_features: a :class:`~geomim_hf.teacher_cache.TeacherFeatureCache`: add each sample's cached
            LiDAR-teacher BEV features, moved by its BEV augmentation, as ``teacher_features`` (C_t, Y, X).
        map_rasterizer: a :class:`~geomim_hf.data.maps.MapRasterizer` that draws ``map_masks`` (C, Y, X) in the
            augmented ego frame when a BEV rotation or scale is drawn (drawn again, not resampled: the
            corners a rotation brings in are real map). Rows with a ``map_masks`` column
            (``load_nuscenes(..., map_masks=True)``) need none without augmentation or under mirrors only,
            which flip their masks exactly.
    """

    def __init__(self, dataset, processor, training: bool = False, seed: int = 0, return_depth: bool = False,
                 with_targets: bool = True, with_images: bool = True, temporal: bool = False, teacher_features=None,
                 map_rasterizer=None):
        if (return_depth or teacher_features is not None) and not with_images:
            raise ValueError("return_depth and teacher_features go with the camera samples: with_images=True")
        self.teacher_features = teacher_features
        self.dataset, self.processor, self.training = dataset, processor, training
        self.seed = seed
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()  # seen by every worker process
        self.return_depth, self.with_targets, self.with_images = return_depth, with_targets, with_images
        if not with_images:  # never decode the images
            self.dataset = dataset.select_columns([c for c in dataset.column_names if c != "images"])
        elif getattr(processor, "jpeg_draft", False) and isinstance(dataset.features.get("images"), datasets.List):
            # The files are opened here and decoded by the processor at a reduced scale; datasets would decode
            # them in full first (one pass over the column, cached by the dataset's fingerprint).
            images = dataset.features["images"]
            self.dataset = dataset.cast_column("images", datasets.List(datasets.Image(decode=False),
                                                                       length=images.length))
        self.map_rasterizer = map_rasterizer
        self.with_map_masks = map_rasterizer is not None or "map_masks" in dataset.column_names
        if map_rasterizer is not None and "location" not in dataset.column_names:
            raise ValueError("map_rasterizer needs each row's map location: load the rows with "
                             "load_nuscenes(..., map_masks=True)")
        self.temporal = temporal
        if temporal:
            self.row_of_token = {token: row for row, token in enumerate(dataset["sample_token"])}

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        if not self.with_images:
            return self._points_only(self.dataset[index], rng)
        row = self.dataset[index]
        needs_points = self.with_targets or self.return_depth
        processed = self.processor(
            row["images"], row["intrinsics"], row["ego_from_camera"], training=self.training,
            generator=rng,
            boxes=row["boxes"] if self.with_targets else None,
            velocities=row["velocities"] if self.with_targets else None,
            lidar_points=row["lidar_points"] if needs_points else None,
            ego_from_lidar=row["ego_from_lidar"] if needs_points else None,
            return_depth=self.return_depth,
        )
        sample = {key: value[0] for key, value in processed.items()}  # drop the batch dim of one sample
        if self.return_depth:
            sample["depth_labels"] = sample.pop("depth_maps")
        if self.teacher_features is not None:
            sample["teacher_features"] = self.teacher_features.load(
                [row["sample_token"]], sample["augmented_ego_from_ego"][None])[0]
        if self.temporal:
            sample.update(self._previous(row, index))
        if self.with_map_masks:
            sample["map_masks"] = self._map_masks(row, sample["augmented_ego_from_ego"])
        sample["ego_from_lidar"] = torch.as_tensor(np.asarray(row["ego_from_lidar"]), dtype=torch.float32)
        sample["global_from_ego"] = torch.as_tensor(np.asarray(row["global_from_ego"]), dtype=torch.float64)
        sample["sample_token"] = row["sample_token"]
        if self.with_targets:
            sample["labels"] = torch.as_tensor(np.asarray(row["labels"]), dtype=torch.long)
            sample["attributes"] = torch.as_tensor(np.asarray(row["attributes"]), dtype=torch.long)
        return sample

    def _map_masks(self, row: dict, augmented_ego_from_ego: torch.Tensor) -> torch.Tensor:
        """(C, Y, X) bool map masks in the augmented ego frame: the row's own, flipped by any mirror, or under a
        rotation or scale drawn again at the augmented frame's place in the map."""
        augmented_from_ego = augmented_ego_from_ego.double().numpy()
        linear = augmented_from_ego[:3, :3]
        if "map_masks" in row and np.allclose(np.abs(linear), np.eye(3), atol=1e-6) and linear[2, 2] > 0:
            # Mirrors only (or nothing): the row's masks flipped, exactly (the grid is centred on the ego).
            masks = torch.as_tensor(np.asarray(row["map_masks"], dtype=bool))
            dims = [dim for dim, sign in ((-1, linear[0, 0]), (-2, linear[1, 1])) if sign < 0]
            return torch.flip(masks, dims) if dims else masks
        if self.map_rasterizer is None:
            raise ValueError(f"sample {row['sample_token']}: map masks under a BEV rotation or scale are drawn "
                             "again from the map: pass GeoMIMDataset(..., map_rasterizer=MapRasterizer(dataroot))")
        global_from_augmented = np.asarray(row["global_from_ego"]) @ np.linalg.inv(augmented_from_ego)
        return torch.from_numpy(self.map_rasterizer(row["location"], global_from_augmented))

    def _previous(self, row: dict, index: int) -> dict:
        """The previous keyframe, augmented as the current one (same draws), and ego_from_prev_ego."""
        previous = self.dataset[self.row_of_token[row["prev_sample_token"]]] \
            if row["prev_sample_token"] in self.row_of_token else row
        rng = np.random.default_rng([self.seed, self.epoch, index])  # replays the current views' draws
        processed = self.processor(previous["images"], previous["intrinsics"],
                                   previous["ego_from_camera"], training=self.training, generator=rng,
                                   bev_augment=False)
        ego_from_prev_ego = invert_rigid(np.asarray(row["global_from_ego"])) @ np.asarray(previous["global_from_ego"])
        return {"prev_pixel_values": processed["pixel_values"][0], "prev_intrinsics": processed["intrinsics"][0],
                "prev_ego_from_camera": processed["ego_from_camera"][0],
                "prev_processed_from_original": processed["processed_from_original"][0],
                "ego_from_prev_ego": torch.as_tensor(ego_from_prev_ego, dtype=torch.float32)}

    def _points_only(self, row: dict, rng: np.random.Generator) -> dict:
        augmented_from_ego = self.processor.sample_augmented_ego_from_ego(rng) if self.training else np.eye(4)
        sample = {"sample_token": row["sample_token"],
                  "augmented_ego_from_ego": torch.as_tensor(augmented_from_ego, dtype=torch.float32),
                  "ego_from_lidar": torch.as_tensor(np.asarray(row["ego_from_lidar"]), dtype=torch.float32),
                  "global_from_ego": torch.as_tensor(np.asarray(row["global_from_ego"]), dtype=torch.float64),
                  "lidar_points": torch.from_numpy(augment_points(row["lidar_points"], row["ego_from_lidar"],
                                                                  augmented_from_ego))}
        if self.with_targets:
            boxes, velocities = augment_boxes(row["boxes"], row["velocities"], augmented_from_ego)
            sample.update(boxes=torch.from_numpy(boxes), velocities=torch.from_numpy(velocities),
                          labels=torch.as_tensor(np.asarray(row["labels"]), dtype=torch.long),
                          attributes=torch.as_tensor(np.asarray(row["attributes"]), dtype=torch.long))
        return sample


class ResampledDataset(torch.utils.data.Dataset):
    """A dataset visited through a list of row indices (repeats allowed), keeping ``set_epoch``."""

    def __init__(self, dataset: GeoMIMDataset, indices):
        self.dataset, self.indices = dataset, list(indices)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict:
        return self.dataset[self.indices[index]]


def class_balanced_indices(labels_per_row, num_classes: int, seed: int = 0) -> list[int]:
    """CBGS (Zhu et al. 2019, as mmdetection3d's CBGSDataset): every class gets about an equal share of
    the object-bearing rows, by resampling the rows that hold each class. ``labels_per_row``: the
    label ids of each row."""
    rows_of_class = [[] for _ in range(num_classes)]
    for row, labels in enumerate(labels_per_row):
        for label in set(int(label) for label in labels):
            rows_of_class[label].append(row)
    total = sum(len(rows) for rows in rows_of_class)
    present = [rows for rows in rows_of_class if rows]
    if not present:
        return list(range(len(labels_per_row)))
    rng = np.random.default_rng(seed)
    indices = []
    for rows in present:
        ratio = (1.0 / len(present)) / (len(rows) / total)
        indices += rng.choice(rows, int(len(rows) * ratio), replace=True).tolist()
    return indices


def _pad(tensors: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length (L_i, ...) tensors into (B, max L, ...) and a (B, max L) validity mask."""
    longest = max((len(t) for t in tensors), default=0)
    padded = tensors[0].new_full((len(tensors), longest, *tensors[0].shape[1:]), fill)
    mask = torch.zeros(len(tensors), longest, dtype=torch.bool)
    for index, tensor in enumerate(tensors):
        padded[index, : len(tensor)] = tensor
        mask[index, : len(tensor)] = True
    return padded, mask


def collate_geomim(samples: list[dict], input_names=None) -> dict:
    """Stack fixed-size tensors; pad boxes (with ``box_mask``) and points (with ``point_mask``).

    Padded labels and attributes are -1. ``input_names`` (a model's ``model_input_names``): keep only
    those fields (the ones the samples hold), so that the batch is exactly the model's keyword inputs;
    ``None`` keeps every field, the metadata (``sample_token``, ``global_from_ego``, ...) too."""
    def wanted(*keys):  # fields nobody asked for are not even stacked (the points are large)
        return keys[0] in samples[0] and (input_names is None or any(key in input_names for key in keys))

    batch = {key: torch.stack([s[key] for s in samples]) for key in FIXED_KEYS if wanted(key)}
    if wanted("sample_token"):
        batch["sample_token"] = [s["sample_token"] for s in samples]
    if wanted("boxes", "box_mask"):
        batch["boxes"], batch["box_mask"] = _pad([s["boxes"] for s in samples])
    if wanted("velocities"):
        batch["velocities"], _ = _pad([s["velocities"] for s in samples])
    for key in ("labels", "attributes"):
        if wanted(key):
            batch[key], _ = _pad([s[key] for s in samples], fill=-1)
    if wanted("lidar_points", "point_mask"):
        batch["lidar_points"], batch["point_mask"] = _pad([s["lidar_points"] for s in samples])
    if input_names is not None:
        batch = {key: value for key, value in batch.items() if key in input_names}
    return batch


def make_dataloader(dataset, processor, batch_size: int, training: bool = False, num_workers: int = 0,
                    seed: int = 0, return_depth: bool = False, with_targets: bool = True, with_images: bool = True,
                    temporal: bool = False, indices=None, teacher_features=None, input_names=None,
                    map_rasterizer=None, **kwargs) -> DataLoader:
    """A ``DataLoader`` over processed samples; shuffles when training (seeded). ``indices`` (e.g. a
    class-balanced resampling) lists the rows an epoch visits, repeats allowed. ``input_names`` (a
    model's ``model_input_names``): the batches hold exactly those fields (see :func:`collate_geomim`);
    without shuffling, batch ``i`` holds rows ``i * batch_size ...``, which is where a caller finds
    the rows' tokens and poses."""
    processed = GeoMIMDataset(dataset, processor, training=training, seed=seed, return_depth=return_depth,
                              with_targets=with_targets, with_images=with_images, temporal=temporal,
                              teacher_features=teacher_features, map_rasterizer=map_rasterizer)
    if indices is not None:
        processed = ResampledDataset(processed, indices)
    generator = torch.Generator().manual_seed(seed)
    worker_init_fn = functools.partial(_init_worker, then=kwargs.pop("worker_init_fn", None))
    return DataLoader(processed, batch_size=batch_size, shuffle=training, num_workers=num_workers,
                      collate_fn=functools.partial(collate_geomim, input_names=input_names), generator=generator,
                      persistent_workers=num_workers > 0, worker_init_fn=worker_init_fn, **kwargs)


def _init_worker(worker_id: int, then=None) -> None:
    """One BLAS thread per loader worker. Its numpy products are small (4 x 4 poses, points x 4), so BLAS threads
    only fight the other workers and the model for the cores: a sample took 1.7x as long on two busy cores
    (benchmarks/train_step.py). The results are bit for bit the same."""
    threadpool_limits(limits=1, user_api="blas")
    if then is not None:
        then(worker_id)
