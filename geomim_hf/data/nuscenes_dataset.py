"""nuScenes as a 🤗 Dataset: a builder shipped in the package (datasets 4 runs no loading scripts)
that reads the tables with the official nuscenes-devkit and yields the sample contract
(:mod:`geomim_hf.data.records`), one row per keyframe.

    from geomim_hf.data import load_nuscenes
    train = load_nuscenes("/data/nuscenes", version="v1.0-trainval", split="train", sweeps=9)
    train[0]["lidar_points"].shape  # (M, 5), the keyframe and 9 sweeps in the keyframe LiDAR frame
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence

import datasets
import numpy as np

from .classes import NUSCENES_DETECTION_CLASSES
from .geometry import invert_rigid, make_transform, quaternion_to_matrix, transform_points, yaw_of
from .maps import MAP_CLASSES, MAP_GRID, MapRasterizer
from .records import (
    ATTRIBUTE_NAMES,
    SampleError,
    build_split,
    check_box_size,
    check_image,
    check_matrix,
    check_points_file,
    check_rotation,
    records_or_skip,
    sample_features,
    with_lidar_points,
)

# The official GeoMIM camera order.
NUSCENES_CAMERA_ORDER = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_FRONT_LEFT", "CAM_BACK", "CAM_BACK_LEFT",
                         "CAM_BACK_RIGHT")
NUSCENES_TABLES = ("attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
                   "sample_annotation", "sample_data", "scene", "sensor", "visibility")
SPLITS_BY_VERSION = {
    "v1.0-trainval": ("train", "val", "train_detect", "train_track"),
    "v1.0-mini": ("mini_train", "mini_val"),
    "v1.0-test": ("test",),
}


class NuScenesConfig(datasets.BuilderConfig):
    """What to read: ``data_dir`` is the dataroot; the rest selects and shapes the rows."""

    def __init__(self, *, nuscenes_version: str = "v1.0-trainval", split: str = "train", sweeps: int = 0,
                 classes: Sequence[str] = NUSCENES_DETECTION_CLASSES,
                 cameras: Sequence[str] = NUSCENES_CAMERA_ORDER, on_error: str = "raise", fingerprint: str = "",
                 map_masks: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.nuscenes_version = nuscenes_version
        self.split = split
        self.sweeps = sweeps
        self.classes = tuple(classes)
        self.cameras = tuple(cameras)
        self.on_error = on_error
        self.fingerprint = fingerprint
        self.map_masks = map_masks


class NuScenesBuilder(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = NuScenesConfig
    VERSION = datasets.Version("1.0.0")

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=f"nuScenes {self.config.nuscenes_version} keyframes in the geomim-hf sample contract",
            features=sample_features(len(self.config.cameras), self.config.classes,
                                     (len(MAP_CLASSES), *MAP_GRID.size) if self.config.map_masks else None),
        )

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=self.config.split)]

    def _generate_examples(self):
        from nuscenes import NuScenes
        from nuscenes.eval.detection.utils import category_to_detection_name
        from nuscenes.utils.splits import create_splits_scenes

        config = self.config
        nusc = NuScenes(version=config.nuscenes_version, dataroot=config.data_dir, verbose=False)
        scenes = set(create_splits_scenes()[config.split])
        samples = [s for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes]
        samples.sort(key=lambda s: (nusc.get("scene", s["scene_token"])["name"], s["timestamp"]))
        known_channels = {s["channel"] for s in nusc.sensor}
        unknown = [c for c in config.cameras if c not in known_channels]
        if unknown:
            raise ValueError(f"cameras {unknown} are not sensors of {config.nuscenes_version}; "
                             f"known channels: {sorted(known_channels)}")
        class_ids = {name: index for index, name in enumerate(config.classes)}
        reader = _SampleReader(nusc, config, class_ids, category_to_detection_name)
        if config.map_masks:  # fail before the first sample if a location's map is missing
            for location in sorted({log["location"] for log in nusc.log}):
                reader.rasterizer.map(location)
        reads = ((sample["token"], lambda sample=sample: reader.read(sample)) for sample in samples)
        yield from records_or_skip(reads, config.on_error, f"samples of {config.split}")


class _SampleReader:
    """Turns one devkit sample into a contract record, checking every field it reads."""

    def __init__(self, nusc, config: NuScenesConfig, class_ids: dict[str, int], to_detection_name):
        self.nusc, self.config, self.class_ids, self.to_detection_name = nusc, config, class_ids, to_detection_name
        self.attribute_ids = {a["token"]: ATTRIBUTE_NAMES.index(a["name"]) for a in nusc.attribute
                              if a["name"] in ATTRIBUTE_NAMES}
        self.rasterizer = MapRasterizer(nusc.dataroot) if config.map_masks else None

    def pose(self, record: dict, where: str) -> np.ndarray:
        """global_from_ego (4, 4) of a sample_data record, checked."""
        pose = self.nusc.get("ego_pose", record["ego_pose_token"])
        label = f"{where}: ego_pose {pose['token']} field"
        rotation = check_rotation(pose["rotation"], f"{label} rotation")
        return make_transform(quaternion_to_matrix(rotation), check_matrix(pose["translation"], (3,),
                                                                           f"{label} translation"))

    def calibration(self, record: dict, where: str) -> tuple[np.ndarray, dict]:
        """ego_from_sensor (4, 4) and the calibrated_sensor record, checked."""
        sensor = self.nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        label = f"{where}: calibrated_sensor {sensor['token']} field"
        rotation = check_rotation(sensor["rotation"], f"{label} rotation")
        translation = check_matrix(sensor["translation"], (3,), f"{label} translation")
        return make_transform(quaternion_to_matrix(rotation), translation), sensor

    def read(self, sample: dict) -> dict:
        nusc, config = self.nusc, self.config
        token = sample["token"]
        if "LIDAR_TOP" not in sample["data"]:
            raise SampleError(f"sample {token} has no LIDAR_TOP data; it has {sorted(sample['data'])}")
        lidar = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        where = f"sample {token} LIDAR_TOP"
        lidar_path = check_points_file(os.path.join(nusc.dataroot, lidar["filename"]), where)
        ego_from_lidar, _ = self.calibration(lidar, where)
        global_from_ego = self.pose(lidar, where)
        ego_from_global = invert_rigid(global_from_ego)

        images, intrinsics, ego_from_camera = [], [], []
        for channel in config.cameras:
            if channel not in sample["data"]:
                raise SampleError(f"sample {token} has no {channel} image; it has {sorted(sample['data'])}")
            camera = nusc.get("sample_data", sample["data"][channel])
            where = f"sample {token} {channel}"
            images.append({"path": check_image(os.path.join(nusc.dataroot, camera["filename"]), where),
                           "bytes": None})
            ego_then_from_camera, sensor = self.calibration(camera, where)
            intrinsics.append(check_matrix(sensor["camera_intrinsic"], (3, 3),
                                           f"{where}: calibrated_sensor {sensor['token']} field camera_intrinsic"))
            # The camera fired at its own time: go through the global frame with its own ego pose.
            ego_from_camera.append(ego_from_global @ self.pose(camera, where) @ ego_then_from_camera)

        sweep_paths, lidar_from_sweeps, lags = [], [], []
        global_from_lidar = global_from_ego @ ego_from_lidar
        lidar_from_global = invert_rigid(global_from_lidar)
        record = lidar
        while len(sweep_paths) < config.sweeps and record["prev"]:
            record = nusc.get("sample_data", record["prev"])
            where = f"sample {token} LIDAR_TOP sweep {record['token']}"
            sweep_paths.append(check_points_file(os.path.join(nusc.dataroot, record["filename"]), where))
            ego_from_sweep, _ = self.calibration(record, where)
            lidar_from_sweeps.append(lidar_from_global @ self.pose(record, where) @ ego_from_sweep)
            lags.append((lidar["timestamp"] - record["timestamp"]) * 1e-6)

        boxes, velocities, labels, attributes, points, visibility, instances = [], [], [], [], [], [], []
        for annotation_token in sample["anns"]:
            annotation = nusc.get("sample_annotation", annotation_token)
            name = self.to_detection_name(annotation["category_name"])
            if name not in self.class_ids:
                continue
            where = f"sample {token}: sample_annotation {annotation_token} field"
            center = check_matrix(annotation["translation"], (3,), f"{where} translation")
            width, length, height = check_box_size(annotation["size"], f"{where} size")
            rotation = quaternion_to_matrix(check_rotation(annotation["rotation"], f"{where} rotation"))
            yaw = yaw_of(ego_from_global[:3, :3] @ rotation)
            boxes.append([*transform_points(ego_from_global, center), length, width, height, yaw])
            velocity = nusc.box_velocity(annotation_token)  # global frame, NaN where unknown
            velocities.append((ego_from_global[:3, :3] @ velocity)[:2])
            labels.append(self.class_ids[name])
            attribute_ids = [self.attribute_ids[a] for a in annotation["attribute_tokens"] if a in self.attribute_ids]
            attributes.append(attribute_ids[0] if attribute_ids else -1)
            points.append(annotation["num_lidar_pts"])
            visibility.append(int(annotation["visibility_token"] or 0))
            instances.append(annotation["instance_token"])

        maps = {}
        if self.rasterizer is not None:
            location = nusc.get("log", nusc.get("scene", sample["scene_token"])["log_token"])["location"]
            maps = {"location": location, "map_masks": self.rasterizer(location, global_from_ego)}
        return {
            "sample_token": token,
            "scene_token": sample["scene_token"],
            "prev_sample_token": sample["prev"],
            "timestamp": lidar["timestamp"],
            "images": images,
            "camera_names": list(config.cameras),
            "intrinsics": np.stack(intrinsics),
            "ego_from_camera": np.stack(ego_from_camera),
            "ego_from_lidar": ego_from_lidar,
            "global_from_ego": global_from_ego,
            "lidar_path": lidar_path,
            "sweep_paths": sweep_paths,
            "lidar_from_sweeps": np.asarray(lidar_from_sweeps).reshape(-1, 4, 4),
            "sweep_time_lags": lags,
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 7),
            "velocities": np.asarray(velocities, np.float32).reshape(-1, 2),
            "labels": labels,
            "attributes": attributes,
            "num_lidar_points": points,
            "visibility": visibility,
            "instance_tokens": instances,
            **maps,
        }


def _tables_fingerprint(dataroot: str, version: str) -> str:
    """Changes when any table file changes, so a rewritten dataset never reuses a stale cache."""
    digest = hashlib.md5()
    for table in NUSCENES_TABLES:
        path = os.path.join(dataroot, version, f"{table}.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"nuScenes table {path} is missing: {version} needs the tables "
                                    f"{', '.join(NUSCENES_TABLES)} under {os.path.join(dataroot, version)}")
        stat = os.stat(path)
        digest.update(f"{table}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def load_nuscenes(
    dataroot: str,
    version: str = "v1.0-trainval",
    split: str = "train",
    sweeps: int = 0,
    *,
    classes: Sequence[str] = NUSCENES_DETECTION_CLASSES,
    cameras: Sequence[str] = NUSCENES_CAMERA_ORDER,
    on_error: str = "raise",
    decode_lidar: bool = True,
    cache_dir: str | None = None,
    map_masks: bool = False,
) -> datasets.Dataset:
    """The keyframes of one nuScenes split as a ``datasets.Dataset`` in the sample contract.

    Args:
        dataroot: folder holding ``{version}/*.json``, ``samples/``, ``sweeps/`` and ``maps/``.
        version: ``v1.0-trainval``, ``v1.0-mini`` or ``v1.0-test``.
        split: a split of the devkit's ``create_splits_scenes`` valid for ``version``.
        sweeps: previous LiDAR sweeps merged into ``lidar_points`` (the official recipe uses 9).
        classes: detection names; ``labels`` index this list and other objects are left out.
        cameras: channels, in the order of the views.
        on_error: ``"raise"`` stops at the first bad sample; ``"skip"`` leaves such samples out and
            logs how many.
        decode_lidar: attach the transform that adds ``lidar_points`` and NumPy matrices.
        cache_dir: where the Arrow cache lives (the 🤗 Datasets default otherwise); a second call
            with the same arguments reads it instead of the tables.
        map_masks: add ``location`` and ``map_masks``: BEVFusion's six map classes
            (:data:`~geomim_hf.data.maps.MAP_CLASSES`), boolean (6, 200, 200) on x, y in [-50, 50) m at
            0.5 m in the ego frame (rows along y), rasterised from ``maps/expansion/<location>.json``
            by the devkit's map API.
    """
    if version not in SPLITS_BY_VERSION:
        raise ValueError(f"version must be one of {sorted(SPLITS_BY_VERSION)}, got {version!r}")
    if split not in SPLITS_BY_VERSION[version]:
        raise ValueError(f"split {split!r} is not part of {version}; choose from {SPLITS_BY_VERSION[version]}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if sweeps < 0:
        raise ValueError(f"sweeps must be >= 0, got {sweeps}")
    dataroot = os.path.abspath(dataroot)
    builder = NuScenesBuilder(
        cache_dir=cache_dir, data_dir=dataroot, nuscenes_version=version, split=split, sweeps=sweeps,
        classes=tuple(classes), cameras=tuple(cameras), on_error=on_error, map_masks=map_masks,
        fingerprint=_tables_fingerprint(dataroot, version),
    )
    dataset = build_split(builder, split)
    return with_lidar_points(dataset) if decode_lidar else dataset
