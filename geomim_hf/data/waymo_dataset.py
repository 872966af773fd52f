"""The Waymo Open Dataset v2 (perception) as a 🤗 Dataset: a builder shipped in the package (datasets 4
runs no loading scripts) that reads the parquet components with pyarrow alone (no TensorFlow) and
yields the sample contract (:mod:`geomim_hf.data.records`), one row per frame.

    from geomim_hf.data import load_waymo
    val = load_waymo("/data/waymo_v2", split="validation", sweeps=2)
    val[0]["lidar_points"].shape  # (M, 5), the TOP return 1 of the frame and 2 earlier frames

What is read, per segment: ``camera_image``, ``camera_calibration``, ``lidar`` (TOP, return 1),
``lidar_calibration``, ``lidar_box``, ``lidar_camera_synced_box`` and ``vehicle_pose``. Camera models take the
camera-synced boxes (``boxes="camera"``, the default): each box where its most visible camera saw it, the ground
truth of Waymo's camera-only evaluation, with the boxes seen by no camera or holding no LiDAR point left out, as
the release's evaluation does; LiDAR models take the LiDAR-synced boxes (``boxes="lidar"``). What is left out: camera
distortion
(``k1``...``k3``, ``p1``, ``p2``; images stay as recorded and ``intrinsics`` is the pinhole part),
rolling shutter, the TOP LiDAR's per-pixel poses (points are placed with the frame's vehicle pose),
the other four LiDARs and the second return. LiDAR intensities are Waymo's raw values, not 0-255.
"""

from __future__ import annotations

import hashlib
import os
from collections import defaultdict
from collections.abc import Mapping, Sequence

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .classes import WAYMO_CLASSES
from .geometry import invert_rigid
from .records import (
    POINT_DIMS,
    SampleError,
    build_split,
    check_box_size,
    check_image_data,
    check_matrix,
    check_rigid,
    records_or_skip,
    sample_features,
    with_lidar_points,
)
from .waymo_schema import (
    CAMERA_NAMES,
    KEY_CAMERA,
    KEY_LASER,
    KEY_OBJECT,
    KEY_TIMESTAMP,
    LABEL_TYPES,
    LASER_NAMES,
    OPENCV_FROM_WAYMO_CAMERA,
    TYPE_CYCLIST,
    TYPE_PEDESTRIAN,
    TYPE_VEHICLE,
)

WAYMO_CAMERA_ORDER = ("FRONT", "FRONT_LEFT", "FRONT_RIGHT", "SIDE_LEFT", "SIDE_RIGHT")
# TYPE_SIGN and TYPE_UNKNOWN are not detection classes.
DEFAULT_TYPE_TO_CLASS = {TYPE_VEHICLE: "vehicle", TYPE_PEDESTRIAN: "pedestrian", TYPE_CYCLIST: "cyclist"}
CAMERA_BY_ID = {camera_id: name for name, camera_id in CAMERA_NAMES.items()}
TOP_LASER = LASER_NAMES["TOP"]
# Our camera frame (x right, y down, z forward) to Waymo's (x forward, y left, z up).
WAYMO_FROM_OPENCV_CAMERA = invert_rigid(OPENCV_FROM_WAYMO_CAMERA)

IMAGE = "[CameraImageComponent].image"
IMAGE_POSE = "[CameraImageComponent].pose.transform"
INTRINSIC = "[CameraCalibrationComponent].intrinsic.{}"
CAMERA_EXTRINSIC = "[CameraCalibrationComponent].extrinsic.transform"
RANGE_VALUES = "[LiDARComponent].range_image_return1.values"
RANGE_SHAPE = "[LiDARComponent].range_image_return1.shape"
LIDAR_EXTRINSIC = "[LiDARCalibrationComponent].extrinsic.transform"
INCLINATION = "[LiDARCalibrationComponent].beam_inclination.{}"
BOX = "[LiDARBoxComponent].{}"
SYNCED_BOX = "[LiDARCameraSyncedBoxComponent].{}"
WORLD_FROM_VEHICLE = "[VehiclePoseComponent].world_from_vehicle.transform"

# The columns read from each component; real files carry more, which are never loaded.
COMPONENT_COLUMNS = {
    "camera_image": [KEY_TIMESTAMP, KEY_CAMERA, IMAGE, IMAGE_POSE],
    "camera_calibration": [KEY_CAMERA, CAMERA_EXTRINSIC] + [INTRINSIC.format(k) for k in ("f_u", "f_v", "c_u", "c_v")],
    "lidar": [KEY_TIMESTAMP, KEY_LASER, RANGE_SHAPE, RANGE_VALUES],
    "lidar_calibration": [KEY_LASER, LIDAR_EXTRINSIC] + [INCLINATION.format(k) for k in ("min", "max", "values")],
    "lidar_box": [KEY_TIMESTAMP, KEY_OBJECT, BOX.format("type"), BOX.format("num_lidar_points_in_box")]
    + [BOX.format(f"box.{part}.{axis}") for part in ("center", "size") for axis in "xyz"]
    + [BOX.format("box.heading"), BOX.format("speed.x"), BOX.format("speed.y")],
    "lidar_camera_synced_box": [KEY_TIMESTAMP, KEY_OBJECT, SYNCED_BOX.format("most_visible_camera_name")]
    + [SYNCED_BOX.format(f"camera_synced_box.{part}.{axis}") for part in ("center", "size") for axis in "xyz"]
    + [SYNCED_BOX.format("camera_synced_box.heading")],
    "vehicle_pose": [KEY_TIMESTAMP, WORLD_FROM_VEHICLE],
}
COMPONENTS = tuple(COMPONENT_COLUMNS)
# The testing split withholds its labels: without a lidar_box folder every frame has zero boxes.
OPTIONAL_COMPONENTS = ("lidar_box", "lidar_camera_synced_box")
BOX_SOURCES = ("camera", "lidar")


class WaymoConfig(datasets.BuilderConfig):
    """What to read: ``data_dir`` is the root holding the split folders; the rest selects and
    shapes the rows. ``type_to_class`` is a sorted tuple of (Waymo type id, class name) pairs."""

    def __init__(self, *, split: str = "training", sweeps: int = 0, classes: Sequence[str] = WAYMO_CLASSES,
                 type_to_class: tuple[tuple[int, str], ...] = tuple(sorted(DEFAULT_TYPE_TO_CLASS.items())),
                 boxes: str = "camera", on_error: str = "raise", fingerprint: str = "", **kwargs):
        super().__init__(**kwargs)
        self.split = split
        self.sweeps = sweeps
        self.boxes = boxes
        self.classes = tuple(classes)
        self.type_to_class = tuple(type_to_class)
        self.on_error = on_error
        self.fingerprint = fingerprint


class WaymoBuilder(datasets.GeneratorBasedBuilder):
    BUILDER_CONFIG_CLASS = WaymoConfig
    VERSION = datasets.Version("1.0.0")
    # Rows carry five JPEGs (~1.5 MB on real data): keep the writer's buffer small.
    DEFAULT_WRITER_BATCH_SIZE = 50

    def _info(self) -> datasets.DatasetInfo:
        return datasets.DatasetInfo(
            description=f"Waymo Open Dataset v2 {self.config.split} frames in the geomim-hf sample contract",
            features=sample_features(len(WAYMO_CAMERA_ORDER), self.config.classes),
        )

    def _split_generators(self, dl_manager):
        return [datasets.SplitGenerator(name=self.config.split)]

    def _generate_examples(self):
        config = self.config
        split_dir = os.path.join(config.data_dir, config.split)
        # Keyed by the input fingerprint, not the config: loads that differ only in classes or sweeps
        # share the converted points.
        points_dir = os.path.join(self._cache_dir_root, "geomim_hf_waymo_points", config.fingerprint)
        class_ids = {type_id: config.classes.index(name) for type_id, name in config.type_to_class}
        yield from records_or_skip(self._frame_reads(split_dir, points_dir, class_ids), config.on_error,
                                   f"frames of {config.split}")

    def _frame_reads(self, split_dir: str, points_dir: str, class_ids: dict[int, int]):
        """(sample token, read) per frame; one segment in memory at a time."""
        for segment in _segments(split_dir):
            reader = _SegmentReader(split_dir, segment, os.path.join(points_dir, segment), self.config.sweeps,
                                    class_ids, self.config.boxes)
            for index, timestamp in enumerate(reader.timestamps):
                yield f"{segment}_{timestamp}", lambda index=index, reader=reader: reader.read(index)


def _read_component(split_dir: str, component: str, segment: str, filters=None) -> pa.Table:
    path = os.path.join(split_dir, component, f"{segment}.parquet")
    columns = COMPONENT_COLUMNS[component]
    missing = sorted(set(columns) - set(pq.read_schema(path).names))
    if missing:
        raise ValueError(f"Waymo {component} file {path} lacks the columns {missing}")
    return pq.read_table(path, columns=columns, filters=filters)


def _rows_by_frame(rows: list[dict]) -> dict[int, list[dict]]:
    by_frame = defaultdict(list)
    for row in rows:
        by_frame[row[KEY_TIMESTAMP]].append(row)
    return by_frame


class _SegmentReader:
    """The frames of one segment, each turned into a contract record with every field it reads checked.
    Converts each frame's TOP range image once into a ``.bin`` file of (M, 5) float32 points."""

    def __init__(self, split_dir: str, segment: str, points_dir: str, sweeps: int, class_ids: dict[int, int],
                 boxes: str = "camera"):
        self.segment, self.points_dir, self.sweeps, self.class_ids = segment, points_dir, sweeps, class_ids
        top = [(KEY_LASER, "=", TOP_LASER)]
        self.images = _rows_by_frame(_read_component(split_dir, "camera_image", segment).to_pylist())
        self.camera_calibrations = _read_component(split_dir, "camera_calibration", segment).to_pylist()
        self.lidar_calibrations = _read_component(split_dir, "lidar_calibration", segment, top).to_pylist()
        labelled = os.path.isdir(os.path.join(split_dir, "lidar_box"))
        self.boxes = _rows_by_frame(_read_component(split_dir, "lidar_box", segment).to_pylist()) if labelled else {}
        self.synced = None  # (timestamp, object id) -> its camera-synced box row, when camera models read boxes
        if labelled and boxes == "camera":
            if not os.path.isdir(os.path.join(split_dir, "lidar_camera_synced_box")):
                raise FileNotFoundError(f"Waymo component folder {os.path.join(split_dir, 'lidar_camera_synced_box')} "
                                        "is missing: camera models read the camera-synced boxes (the v2 release has "
                                        "them; load_waymo(..., boxes='lidar') reads the LiDAR boxes instead)")
            self.synced = {(row[KEY_TIMESTAMP], row[KEY_OBJECT]): row for row in
                           _read_component(split_dir, "lidar_camera_synced_box", segment).to_pylist()}
        self.poses = _rows_by_frame(_read_component(split_dir, "vehicle_pose", segment).to_pylist())
        lidar = _read_component(split_dir, "lidar", segment, top)
        # Range images stay in Arrow until converted: a Python list per image would be slow.
        self.range_values = lidar.column(RANGE_VALUES)
        self.lidar_rows = {row[KEY_TIMESTAMP]: (index, row) for index, row in
                           enumerate(lidar.drop_columns([RANGE_VALUES]).to_pylist())}
        self.timestamps = sorted(set(self.poses) | set(self.images) | set(self.lidar_rows))
        self.lidar_frames = {}  # timestamp -> (lidar_path, global_from_lidar) of frames converted

    def where(self, timestamp: int) -> str:
        return f"segment {self.segment} frame {timestamp}"

    def vehicle_pose(self, timestamp: int) -> np.ndarray:
        """world_from_vehicle (4, 4) at a frame, checked."""
        rows = self.poses.get(timestamp, [])
        if len(rows) != 1:
            raise SampleError(f"{self.where(timestamp)}: vehicle_pose has {len(rows)} rows, expected 1")
        return check_rigid(rows[0][WORLD_FROM_VEHICLE],
                           f"{self.where(timestamp)}: vehicle_pose field {WORLD_FROM_VEHICLE}")

    def lidar_calibration(self, timestamp: int) -> dict:
        if len(self.lidar_calibrations) != 1:
            raise SampleError(f"{self.where(timestamp)}: lidar_calibration has {len(self.lidar_calibrations)} "
                              "rows for the TOP laser, expected 1")
        return self.lidar_calibrations[0]

    def ego_from_lidar(self, timestamp: int) -> np.ndarray:
        calibration = self.lidar_calibration(timestamp)
        return check_rigid(calibration[LIDAR_EXTRINSIC],
                           f"{self.where(timestamp)}: lidar_calibration TOP field {LIDAR_EXTRINSIC}")

    def lidar_frame(self, timestamp: int) -> tuple[str, np.ndarray]:
        """The points file and global_from_lidar (4, 4) of a frame's TOP LiDAR, converting once."""
        if timestamp in self.lidar_frames:
            return self.lidar_frames[timestamp]
        where = self.where(timestamp)
        if timestamp not in self.lidar_rows:
            raise SampleError(f"{where}: lidar has no row for the TOP laser")
        global_from_lidar = self.vehicle_pose(timestamp) @ self.ego_from_lidar(timestamp)
        path = os.path.join(self.points_dir, f"{timestamp}.bin")
        if not os.path.isfile(path):  # written by an earlier load of the same input files
            index, row = self.lidar_rows[timestamp]
            points = self.range_image_points(row[RANGE_SHAPE], self.range_values[index].values, timestamp)
            os.makedirs(self.points_dir, exist_ok=True)
            partial = f"{path}.{os.getpid()}.tmp"
            points.tofile(partial)
            os.replace(partial, path)  # atomic: readers never see a half-written file
        self.lidar_frames[timestamp] = (path, global_from_lidar)
        return path, global_from_lidar

    def range_image_points(self, shape, values: pa.Array | None, timestamp: int) -> np.ndarray:
        """(M, 5) float32 points in the LiDAR frame (x, y, z, intensity, 0) of the pixels with range > 0,
        by the formulas of Waymo's range_image_utils."""
        where = f"{self.where(timestamp)}: lidar TOP field"
        if values is None or shape is None or len(shape) != 3 or shape[2] < 2 or len(values) != np.prod(shape):
            raise SampleError(f"{where} {RANGE_VALUES} holds {0 if values is None else len(values)} values, "
                              f"which do not fill the shape {shape}")
        range_image = values.to_numpy(zero_copy_only=False).reshape(shape)  # (H, W, C): range, intensity, ...
        height, width = shape[:2]
        calibration = self.lidar_calibration(timestamp)
        if calibration[INCLINATION.format("values")] is not None:
            # Stored ascending; row 0 is the highest beam.
            inclination = check_matrix(calibration[INCLINATION.format("values")], (height,),
                                       f"{self.where(timestamp)}: lidar_calibration TOP field "
                                       f"{INCLINATION.format('values')}")[::-1]
        else:  # uniform beams, as Waymo's compute_inclination
            low, high = (check_matrix(calibration[INCLINATION.format(k)], (), f"{self.where(timestamp)}: "
                                      f"lidar_calibration TOP field {INCLINATION.format(k)}") for k in ("min", "max"))
            inclination = low + (height - np.arange(height) - 0.5) / height * (high - low)
        ego_from_lidar = self.ego_from_lidar(timestamp)
        # Column 0 looks backwards; the columns sweep clockwise, offset by the sensor's mounting yaw.
        azimuth = (np.pi - 2 * np.pi * (np.arange(width) + 0.5) / width
                   - np.arctan2(ego_from_lidar[1, 0], ego_from_lidar[0, 0]))  # (W,)
        ranges = range_image[..., 0]  # (H, W)
        rows, columns = np.nonzero(ranges > 0)
        distance = ranges[rows, columns].astype(np.float64)  # (M,)
        elevation, heading = inclination[rows], azimuth[columns]
        points = np.zeros((len(distance), POINT_DIMS), np.float32)
        points[:, 0] = distance * np.cos(elevation) * np.cos(heading)
        points[:, 1] = distance * np.cos(elevation) * np.sin(heading)
        points[:, 2] = distance * np.sin(elevation)
        points[:, 3] = range_image[rows, columns, 1]
        return points

    def cameras(self, timestamp: int, ego_from_world: np.ndarray):
        """Images, intrinsics (N, 3, 3) and ego_from_camera (N, 4, 4) in WAYMO_CAMERA_ORDER."""
        where = self.where(timestamp)
        rows = {}
        for row in self.images.get(timestamp, []):
            if row[KEY_CAMERA] not in CAMERA_BY_ID:
                raise SampleError(f"{where}: camera_image field {KEY_CAMERA} is {row[KEY_CAMERA]}, not one of "
                                  f"{CAMERA_BY_ID}")
            rows[CAMERA_BY_ID[row[KEY_CAMERA]]] = row
        calibrations = {CAMERA_BY_ID[row[KEY_CAMERA]]: row for row in self.camera_calibrations
                        if row[KEY_CAMERA] in CAMERA_BY_ID}
        images, intrinsics, ego_from_camera = [], [], []
        for name in WAYMO_CAMERA_ORDER:
            if name not in rows:
                raise SampleError(f"{where}: camera_image has no {name} image; it has {sorted(rows)}")
            if name not in calibrations:
                raise SampleError(f"{where}: camera_calibration has no {name} row; it has {sorted(calibrations)}")
            image, calibration = rows[name], calibrations[name]
            images.append({"path": None, "bytes": _check_image(image[IMAGE], f"{where}: camera_image {name}")})
            f_u, f_v, c_u, c_v = (calibration[INTRINSIC.format(k)] for k in ("f_u", "f_v", "c_u", "c_v"))
            intrinsics.append(check_matrix([[f_u, 0.0, c_u], [0.0, f_v, c_v], [0.0, 0.0, 1.0]], (3, 3),
                                           f"{where}: camera_calibration {name} field {INTRINSIC.format('*')}"))
            vehicle_from_camera = check_rigid(calibration[CAMERA_EXTRINSIC],
                                              f"{where}: camera_calibration {name} field {CAMERA_EXTRINSIC}")
            # The image's own pose: the camera fired after the frame time, with the car elsewhere.
            world_from_vehicle_then = check_rigid(image[IMAGE_POSE], f"{where}: camera_image {name} field {IMAGE_POSE}")
            ego_from_camera.append(ego_from_world @ world_from_vehicle_then @ vehicle_from_camera
                                   @ WAYMO_FROM_OPENCV_CAMERA)
        return images, intrinsics, ego_from_camera

    def read(self, index: int) -> dict:
        timestamp = self.timestamps[index]
        global_from_ego = self.vehicle_pose(timestamp)
        images, intrinsics, ego_from_camera = self.cameras(timestamp, invert_rigid(global_from_ego))
        lidar_path, global_from_lidar = self.lidar_frame(timestamp)
        lidar_from_global = invert_rigid(global_from_lidar)

        sweep_paths, lidar_from_sweeps, lags = [], [], []
        for sweep_timestamp in self.timestamps[max(0, index - self.sweeps):index][::-1]:  # newest first
            try:
                sweep_path, global_from_sweep = self.lidar_frame(sweep_timestamp)
            except SampleError as error:
                raise SampleError(f"{self.where(timestamp)}: sweep {error}") from error
            sweep_paths.append(sweep_path)
            lidar_from_sweeps.append(lidar_from_global @ global_from_sweep)
            lags.append((timestamp - sweep_timestamp) * 1e-6)

        boxes, velocities, labels, points, instances = [], [], [], [], []
        for row in self.boxes.get(timestamp, []):
            if row[BOX.format("type")] not in self.class_ids:
                continue
            count = row[BOX.format("num_lidar_points_in_box")] or 0  # null: none counted
            geometry, column, component, field = row, BOX, "lidar_box", "box"
            if self.synced is not None:  # camera-only ground truth: seen by a camera and by the LiDAR
                geometry = self.synced.get((timestamp, row[KEY_OBJECT]))
                if geometry is None or count <= 0:
                    continue
                column, component, field = SYNCED_BOX, "lidar_camera_synced_box", "camera_synced_box"
            where = f"{self.where(timestamp)}: {component} {row[KEY_OBJECT]} field {field}"
            center = check_matrix([geometry[column.format(f"{field}.center.{a}")] for a in "xyz"], (3,),
                                  f"{where}.center")
            size = check_box_size([geometry[column.format(f"{field}.size.{a}")] for a in "xyz"], f"{where}.size")
            heading = check_matrix(geometry[column.format(f"{field}.heading")], (), f"{where}.heading")
            boxes.append([*center, *size, heading])  # size.x is the length along the heading
            velocities.append(np.array([row[BOX.format(f"speed.{a}")] for a in "xy"], np.float64))  # null: NaN
            labels.append(self.class_ids[row[BOX.format("type")]])
            points.append(count)
            instances.append(row[KEY_OBJECT])

        return {
            "sample_token": f"{self.segment}_{timestamp}",
            "scene_token": self.segment,
            "prev_sample_token": f"{self.segment}_{self.timestamps[index - 1]}" if index else "",
            "timestamp": timestamp,
            "images": images,
            "camera_names": list(WAYMO_CAMERA_ORDER),
            "intrinsics": np.stack(intrinsics),
            "ego_from_camera": np.stack(ego_from_camera),
            "ego_from_lidar": self.ego_from_lidar(timestamp),
            "global_from_ego": global_from_ego,
            "lidar_path": lidar_path,
            "sweep_paths": sweep_paths,
            "lidar_from_sweeps": np.asarray(lidar_from_sweeps).reshape(-1, 4, 4),
            "sweep_time_lags": lags,
            "boxes": np.asarray(boxes, np.float32).reshape(-1, 7),
            "velocities": np.asarray(velocities, np.float32).reshape(-1, 2),
            "labels": labels,
            "attributes": [-1] * len(labels),
            "num_lidar_points": points,
            "visibility": [0] * len(labels),  # Waymo has no visibility bins
            "instance_tokens": instances,
        }


def _check_image(data: bytes | None, where: str) -> bytes:
    """The encoded image, or a :class:`SampleError` if it is empty, unreadable or cut short."""
    if not data:
        raise SampleError(f"{where}: field {IMAGE} is empty")
    check_image_data(data, f"{where}: field {IMAGE}")
    return data


def _segments(split_dir: str) -> list[str]:
    """Segment names of a split, sorted; each must have a file in every component present (all but
    the optional lidar_box must be)."""
    expected = f"{split_dir}/<component>/<segment>.parquet with the components {', '.join(COMPONENTS)}"
    if not os.path.isdir(split_dir):
        raise FileNotFoundError(f"Waymo split folder {split_dir} is missing: expected {expected}")
    files = {}
    for component in COMPONENTS:
        folder = os.path.join(split_dir, component)
        if not os.path.isdir(folder):
            if component in OPTIONAL_COMPONENTS:
                continue
            raise FileNotFoundError(f"Waymo component folder {folder} is missing: expected {expected}")
        files[component] = {name[: -len(".parquet")] for name in os.listdir(folder) if name.endswith(".parquet")}
    segments = sorted(set().union(*files.values()))
    for component, names in files.items():
        for segment in segments:
            if segment not in names:
                path = os.path.join(split_dir, component, f"{segment}.parquet")
                raise FileNotFoundError(f"Waymo {component} file {path} is missing: other components have "
                                        f"segment {segment}")
    return segments


def _split_fingerprint(split_dir: str, segments: Sequence[str]) -> str:
    """Changes when any parquet file of the split changes, so a rewritten dataset never reuses a stale
    cache (Arrow rows or converted points)."""
    digest = hashlib.md5()
    for component in COMPONENTS:
        if not os.path.isdir(os.path.join(split_dir, component)):
            continue  # an optional component the split does not have
        for segment in segments:
            stat = os.stat(os.path.join(split_dir, component, f"{segment}.parquet"))
            digest.update(f"{component}/{segment}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _type_ids(type_to_class: Mapping[int | str, str], classes: Sequence[str]) -> tuple[tuple[int, str], ...]:
    """Sorted (type id, class name) pairs from a map keyed by Waymo type id or name, checked."""
    pairs = {}
    for waymo_type, name in type_to_class.items():
        type_id = LABEL_TYPES.get(waymo_type, waymo_type)
        if type_id not in LABEL_TYPES.values():
            raise ValueError(f"type_to_class key {waymo_type!r} is not a Waymo type; use an id or name of "
                             f"{LABEL_TYPES}")
        if name not in classes:
            raise ValueError(f"type_to_class maps {waymo_type!r} to {name!r}, which is not in classes {tuple(classes)}")
        pairs[type_id] = name
    return tuple(sorted(pairs.items()))


def load_waymo(
    root: str,
    split: str = "training",
    sweeps: int = 0,
    *,
    classes: Sequence[str] = WAYMO_CLASSES,
    type_to_class: Mapping[int | str, str] | None = None,
    boxes: str = "camera",
    on_error: str = "raise",
    decode_lidar: bool = True,
    cache_dir: str | None = None,
) -> datasets.Dataset:
    """The frames of one Waymo v2 split as a ``datasets.Dataset`` in the sample contract.

    Args:
        root: folder holding ``{split}/{component}/{segment}.parquet``.
        split: a folder under ``root``: ``training``, ``validation`` or ``testing``.
        sweeps: earlier frames of the segment merged into ``lidar_points`` (10 Hz, so 0.1 s apart).
        classes: class names; ``labels`` index this list.
        type_to_class: Waymo type (id or name such as ``"TYPE_VEHICLE"``) to a name in ``classes``;
            boxes of other types are left out. Defaults to vehicle, pedestrian and cyclist (signs
            dropped); e.g. ``{"TYPE_VEHICLE": "car", "TYPE_PEDESTRIAN": "pedestrian",
            "TYPE_CYCLIST": "bicycle"}`` with the nuScenes classes.
        boxes: ``"camera"``: the camera-synced boxes (each where its most visible camera saw it), boxes seen by no
            camera or holding no LiDAR point left out: camera-only ground truth. ``"lidar"``: every LiDAR box at the
            LiDAR's time (LiDAR models, a LiDAR teacher).
        on_error: ``"raise"`` stops at the first bad frame; ``"skip"`` leaves such frames out and
            logs how many.
        decode_lidar: attach the transform that adds ``lidar_points`` and NumPy matrices.
        cache_dir: where the Arrow cache and the converted points live (the 🤗 Datasets default
            otherwise); a second call with the same arguments reads them instead of the parquet.
    """
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if sweeps < 0:
        raise ValueError(f"sweeps must be >= 0, got {sweeps}")
    if boxes not in BOX_SOURCES:
        raise ValueError(f"boxes must be one of {BOX_SOURCES}, got {boxes!r}")
    root = os.path.abspath(root)
    type_ids = _type_ids(DEFAULT_TYPE_TO_CLASS if type_to_class is None else type_to_class, classes)
    split_dir = os.path.join(root, split)
    builder = WaymoBuilder(
        cache_dir=cache_dir, data_dir=root, split=split, sweeps=sweeps, classes=tuple(classes),
        type_to_class=type_ids, boxes=boxes, on_error=on_error,
        fingerprint=_split_fingerprint(split_dir, _segments(split_dir)),
    )
    dataset = build_split(builder, split)
    return with_lidar_points(dataset) if decode_lidar else dataset
