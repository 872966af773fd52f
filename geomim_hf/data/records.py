"""The sample contract: the one record every loader yields (design.md), its 🤗 Datasets features,
and the lazy LiDAR decoding shared by the nuScenes and Waymo loaders.

One row per keyframe. Frames: ``ego`` is the vehicle at the LiDAR keyframe time (x forward, y left,
z up); ``lidar`` and ``camera`` (x right, y down, z forward) are the sensors. Columns:

- ``sample_token``, ``scene_token``, ``prev_sample_token`` ("" at a scene's start), ``timestamp``
  (microseconds of the LiDAR keyframe).
- per view (N): ``images`` (lazy ``datasets.Image``), ``camera_names``, ``intrinsics`` (N, 3, 3),
  ``ego_from_camera`` (N, 4, 4), composed through the global frame with each camera's own ego pose,
  so a camera that fired while the car moved is placed where it was.
- ``ego_from_lidar`` (4, 4), ``global_from_ego`` (4, 4).
- ``lidar_path`` and the sweeps: ``sweep_paths`` (S,), ``lidar_from_sweeps`` (S, 4, 4),
  ``sweep_time_lags`` (S,) seconds before the keyframe. :func:`with_lidar_points` adds
  ``lidar_points`` (M, 5): x, y, z, intensity and time lag, all sweeps merged into the keyframe
  LiDAR frame.
- per box (K): ``boxes`` (K, 7) ego ``(x, y, z, l, w, h, yaw)`` with ``z`` at the centre,
  ``velocities`` (K, 2) ego-frame m/s (NaN where the dataset cannot tell), ``labels`` (class ids of
  the loader's class list), ``attributes`` (ids into :data:`ATTRIBUTE_NAMES`, -1 for none),
  ``num_lidar_points``, ``visibility`` (nuScenes bins 1-4, 0 unknown), ``instance_tokens``.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

import datasets
import numpy as np
from transformers.utils import logging

from .classes import NUSCENES_ATTRIBUTES
from .geometry import transform_points

logger = logging.get_logger(__name__)

ATTRIBUTE_NAMES = tuple(NUSCENES_ATTRIBUTES)
POINT_DIMS = 5  # x, y, z, intensity, time lag
ARRAY_COLUMNS = {
    "intrinsics": np.float64, "ego_from_camera": np.float64, "ego_from_lidar": np.float64,
    "global_from_ego": np.float64, "lidar_from_sweeps": np.float64, "sweep_time_lags": np.float64,
    "boxes": np.float32, "velocities": np.float32, "labels": np.int64, "attributes": np.int64,
    "num_lidar_points": np.int64, "visibility": np.int64, "map_masks": np.bool_,
}


class SampleError(ValueError):
    """A sample that cannot be loaded; the message names the sample and the file or field."""


def sample_features(num_views: int, classes: Sequence[str], map_size: tuple[int, int, int] | None = None
                    ) -> datasets.Features:
    """The Arrow schema of the sample contract for ``num_views`` cameras and a class list; ``map_size``
    (classes, Y, X) adds the map location and the BEV map masks."""
    maps = {"location": datasets.Value("string"), "map_masks": datasets.Array3D(map_size, "bool")} if map_size else {}
    return datasets.Features({
        "sample_token": datasets.Value("string"),
        "scene_token": datasets.Value("string"),
        "prev_sample_token": datasets.Value("string"),
        "timestamp": datasets.Value("int64"),
        "images": datasets.List(datasets.Image(), length=num_views),
        "camera_names": datasets.List(datasets.Value("string"), length=num_views),
        "intrinsics": datasets.Array3D((num_views, 3, 3), "float64"),
        "ego_from_camera": datasets.Array3D((num_views, 4, 4), "float64"),
        "ego_from_lidar": datasets.Array2D((4, 4), "float64"),
        "global_from_ego": datasets.Array2D((4, 4), "float64"),
        "lidar_path": datasets.Value("string"),
        "sweep_paths": datasets.List(datasets.Value("string")),
        "lidar_from_sweeps": datasets.Array3D((None, 4, 4), "float64"),
        "sweep_time_lags": datasets.List(datasets.Value("float64")),
        "boxes": datasets.Array2D((None, 7), "float32"),
        "velocities": datasets.Array2D((None, 2), "float32"),
        "labels": datasets.List(datasets.ClassLabel(names=list(classes))),
        "attributes": datasets.List(datasets.ClassLabel(names=list(ATTRIBUTE_NAMES))),
        "num_lidar_points": datasets.List(datasets.Value("int32")),
        "visibility": datasets.List(datasets.Value("int8")),
        "instance_tokens": datasets.List(datasets.Value("string")),
        **maps,
    })


def check_matrix(value, shape: tuple[int, ...], where: str) -> np.ndarray:
    """``value`` as a finite float64 array of ``shape``, or a :class:`SampleError` naming ``where``."""
    array = np.asarray(value, dtype=np.float64)
    if array.shape != shape:
        raise SampleError(f"{where} has shape {array.shape}, expected {shape}")
    if not np.all(np.isfinite(array)):
        raise SampleError(f"{where} is not finite: {array.tolist()}")
    return array


def check_rotation(value, where: str) -> np.ndarray:
    """A finite unit quaternion (w, x, y, z), or a :class:`SampleError` naming ``where``: a zero or
    scaled quaternion would turn into a NaN or non-rigid transform silently."""
    quaternion = check_matrix(value, (4,), where)
    if abs(np.linalg.norm(quaternion) - 1.0) > 1e-3:
        raise SampleError(f"{where} is not a unit quaternion: {quaternion.tolist()}")
    return quaternion


def check_rigid(value, where: str) -> np.ndarray:
    """A finite rigid transform (4, 4) given as 16 row-major values: orthonormal rotation with
    determinant 1 and last row (0, 0, 0, 1), or a :class:`SampleError` naming ``where``."""
    matrix = check_matrix(value, (16,), where).reshape(4, 4)
    if not is_rigid(matrix):
        raise SampleError(f"{where} is not a rigid transform: {matrix.tolist()}")
    return matrix


def is_rigid(matrices: np.ndarray) -> np.ndarray:
    """Whether each finite (..., 4, 4) transform is rigid: rotation R orthonormal and det R = 1 within 1e-3 (float32
    calibrations), last row (0, 0, 0, 1) within 1e-6. The one rule the loaders and the image processor share."""
    rotation = matrices[..., :3, :3]
    orthonormal = np.abs(np.swapaxes(rotation, -1, -2) @ rotation - np.eye(3)).max((-2, -1)) <= 1e-3
    proper = np.abs(np.linalg.det(rotation) - 1.0) <= 1e-3
    return orthonormal & proper & (np.abs(matrices[..., 3, :] - (0.0, 0.0, 0.0, 1.0)).max(-1) <= 1e-6)


def check_box_size(value, where: str) -> np.ndarray:
    """Three finite, positive box dimensions, or a :class:`SampleError` naming ``where``."""
    size = check_matrix(value, (3,), where)
    if not np.all(size > 0):
        raise SampleError(f"{where} is not positive: {size.tolist()}")
    return size


def _check_point_bytes(path: str, dims: int) -> None:
    """A LiDAR file must hold whole float32 rows of ``dims``, by its byte count: a cut that leaves
    whole floats is still a cut."""
    size = os.path.getsize(path)
    if size % (4 * dims):
        raise SampleError(f"LiDAR file {path} holds {size} bytes, not a multiple of {4 * dims} ({dims} float32 "
                          "per point); is it cut short?")


def check_points_file(path: str, where: str, dims: int = POINT_DIMS) -> str:
    """An existing LiDAR file of whole points (by byte count), or a :class:`SampleError` naming ``where``."""
    check_file(path, where)
    try:
        _check_point_bytes(path, dims)
    except SampleError as error:
        raise SampleError(f"{where}: {error}") from None
    return path


def check_file(path: str, where: str) -> str:
    if not os.path.isfile(path):
        raise SampleError(f"{where}: file {path} is missing")
    return path


# The markers an encoded image ends with: a cut file still parses its header, then fails to decode.
IMAGE_END = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xae\x42\x60\x82"}


def check_image_data(source: str | bytes, where: str) -> None:
    """Fails on an image (a path or the encoded bytes) PIL cannot identify (a header parse), or a JPEG
    or PNG cut short (its end marker missing from the last kilobyte), without decoding the pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            image.size  # noqa: B018 - header parse
            image_format = image.format
    except (UnidentifiedImageError, OSError) as error:
        raise SampleError(f"{where} cannot be read as an image ({error})") from error
    if image_format not in IMAGE_END:
        return
    if isinstance(source, bytes):
        tail = source[-1024:]
    else:
        with open(source, "rb") as handle:
            handle.seek(max(os.path.getsize(source) - 1024, 0))
            tail = handle.read()
    if IMAGE_END[image_format] not in tail:
        raise SampleError(f"{where} is a {image_format} cut short (its end marker is missing)")


def check_image(path: str, where: str) -> str:
    """Fails on a missing file, one PIL cannot identify as an image, or a JPEG or PNG cut short."""
    check_file(path, where)
    check_image_data(path, f"{where}: image {path}")
    return path


def read_points(path: str, dims: int = POINT_DIMS) -> np.ndarray:
    """A ``.pcd.bin``-style file of float32 rows: (M, dims)."""
    _check_point_bytes(path, dims)
    return np.fromfile(path, dtype=np.float32).reshape(-1, dims)


def merge_sweeps(example: dict) -> np.ndarray:
    """(M, 5) points of the keyframe and its sweeps in the keyframe LiDAR frame: x, y, z,
    intensity, and the time lag in seconds (0 for the keyframe)."""
    try:
        keyframe = read_points(example["lidar_path"])
        clouds = [np.concatenate([keyframe[:, :4], np.zeros((len(keyframe), 1), np.float32)], 1)]
        for path, lidar_from_sweep, lag in zip(example["sweep_paths"], example["lidar_from_sweeps"],
                                               example["sweep_time_lags"]):
            sweep = read_points(path)
            xyz = transform_points(np.asarray(lidar_from_sweep), sweep[:, :3].astype(np.float64))
            clouds.append(np.concatenate([xyz.astype(np.float32), sweep[:, 3:4],
                                          np.full((len(sweep), 1), lag, np.float32)], 1))
    except (OSError, SampleError) as error:
        raise SampleError(f"sample {example['sample_token']}: {error}") from error
    return np.concatenate(clouds)


def decode_batch(batch: dict) -> dict:
    """A ``Dataset.with_transform`` function: matrices and targets as NumPy arrays, and the merged
    LiDAR sweeps as ``lidar_points``."""
    for column, dtype in ARRAY_COLUMNS.items():
        if column in batch:
            batch[column] = [np.asarray(value, dtype=dtype) for value in batch[column]]
    for column, shape in (("boxes", (0, 7)), ("velocities", (0, 2)), ("lidar_from_sweeps", (0, 4, 4))):
        if column in batch:  # empty rows come back without their trailing dims
            batch[column] = [v.reshape(shape) if v.size == 0 else v for v in batch[column]]
    if "lidar_path" in batch:
        keys = list(batch)
        rows = [dict(zip(keys, values)) for values in zip(*batch.values())]
        batch["lidar_points"] = [merge_sweeps(row) for row in rows]
    return batch


def records_or_skip(reads, on_error: str, what: str):
    """Yield ``(key, record)`` for each ``(key, read)`` of ``reads``, where ``read()`` builds the record.
    A :class:`SampleError` stops everything (``on_error="raise"``) or leaves that sample out
    (``"skip"``), and the skipped count is logged at the end."""
    skipped, total = [], 0
    for key, read in reads:
        total += 1
        try:
            record = read()
        except SampleError as error:
            if on_error != "skip":
                raise
            skipped.append(str(error))
            continue
        yield key, record
    if skipped:
        logger.warning(
            f"skipped {len(skipped)} of {total} {what} (on_error='skip'); first: {skipped[0]}")


def build_split(builder: datasets.DatasetBuilder, split: str) -> datasets.Dataset:
    """Prepare (or reuse from the Arrow cache) one split; a bad input surfaces as its own error
    rather than as 🤗 Datasets' generic ``DatasetGenerationError``."""
    try:
        builder.download_and_prepare()
    except datasets.exceptions.DatasetGenerationError as error:
        if isinstance(error.__cause__, (SampleError, ValueError, OSError)):
            raise error.__cause__ from None
        raise
    return builder.as_dataset(split=split)


def with_lidar_points(dataset: datasets.Dataset) -> datasets.Dataset:
    """Attach :func:`decode_batch`, so rows carry NumPy matrices and ``lidar_points``."""
    return dataset.with_transform(decode_batch)
