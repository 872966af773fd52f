"""The Waymo Open Dataset v2 (perception) parquet format: component layout, column names, Arrow
schemas, and the camera, laser and label type ids. The reader (:mod:`.waymo_dataset`) and the
synthetic world's writer (:mod:`geomim_hf.synthetic.waymo_writer`) both use this one module.

Layout: ``{root}/{split}/{component}/{segment_context_name}.parquet``, one file per component and
segment, columns named ``key.*`` and ``[Component].field.path`` as the v2 release names them.
Conventions: 4x4 transforms are row-major; ``extrinsic`` maps sensor to vehicle and
``world_from_vehicle`` vehicle to world; the vehicle frame and Waymo's camera frame are x forward,
y left, z up; boxes are in the vehicle frame at the frame timestamp with ``size.x`` the length along
``heading``. Range images are (H, W, 4) = (range, intensity, elongation, is-in-no-label-zone) with
row 0 the highest beam, ``beam_inclination.values`` ascending, and column ``c`` at sensor azimuth
``pi - 2 pi (c + 0.5) / W - yaw(extrinsic)``; empty pixels hold range -1.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

CAMERA_NAMES = {"FRONT": 1, "FRONT_LEFT": 2, "FRONT_RIGHT": 3, "SIDE_LEFT": 4, "SIDE_RIGHT": 5}
LASER_NAMES = {"TOP": 1, "FRONT": 2, "SIDE_LEFT": 3, "SIDE_RIGHT": 4, "REAR": 5}
# label.proto's Type enum.
LABEL_TYPES = {"TYPE_UNKNOWN": 0, "TYPE_VEHICLE": 1, "TYPE_PEDESTRIAN": 2, "TYPE_SIGN": 3, "TYPE_CYCLIST": 4}
TYPE_VEHICLE, TYPE_PEDESTRIAN, TYPE_CYCLIST = (LABEL_TYPES[name] for name in ("TYPE_VEHICLE", "TYPE_PEDESTRIAN",
                                                                            "TYPE_CYCLIST"))
GLOBAL_SHUTTER = 5  # CameraCalibration.rolling_shutter_direction: our renders expose every pixel at once
# Waymo's camera frame (x forward, y left, z up) from ours (x right, y down, z forward).
OPENCV_FROM_WAYMO_CAMERA = np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0],
                                     [0.0, 0.0, 0.0, 1.0]])

KEY_SEGMENT = "key.segment_context_name"
KEY_TIMESTAMP = "key.frame_timestamp_micros"
KEY_CAMERA = "key.camera_name"
KEY_LASER = "key.laser_name"
KEY_OBJECT = "key.laser_object_id"

TRANSFORM = pa.list_(pa.float64(), 16)


def _fields(component: str, spec: list[tuple[str, pa.DataType]]) -> list[tuple[str, pa.DataType]]:
    return [(f"[{component}].{name}", dtype) for name, dtype in spec]


def _xyz(prefix: str, dtype) -> list[tuple[str, pa.DataType]]:
    return [(f"{prefix}.{axis}", dtype) for axis in "xyz"]


SCHEMAS = {
    "camera_image": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_TIMESTAMP, pa.int64()), (KEY_CAMERA, pa.int8())]
        + _fields("CameraImageComponent", [("image", pa.binary()), ("pose.transform", TRANSFORM)]
                  + _xyz("velocity.linear_velocity", pa.float32()) + _xyz("velocity.angular_velocity", pa.float64())
                  + [("pose_timestamp", pa.float64()), ("rolling_shutter_params.shutter", pa.float64()),
                     ("rolling_shutter_params.camera_trigger_time", pa.float64()),
                     ("rolling_shutter_params.camera_readout_done_time", pa.float64())])
    ),
    "camera_calibration": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_CAMERA, pa.int8())]
        + _fields("CameraCalibrationComponent",
                  [(f"intrinsic.{k}", pa.float64()) for k in ("f_u", "f_v", "c_u", "c_v", "k1", "k2", "p1", "p2", "k3")]
                  + [("extrinsic.transform", TRANSFORM), ("width", pa.int32()), ("height", pa.int32()),
                     ("rolling_shutter_direction", pa.int8())])
    ),
    "lidar": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_TIMESTAMP, pa.int64()), (KEY_LASER, pa.int8())]
        + _fields("LiDARComponent", [(f"range_image_return{r}.{part}", dtype) for r in (1, 2)
                                     for part, dtype in (("values", pa.list_(pa.float32())),
                                                         ("shape", pa.list_(pa.int32(), 3)))])
    ),
    "lidar_calibration": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_LASER, pa.int8())]
        + _fields("LiDARCalibrationComponent",
                  [("extrinsic.transform", TRANSFORM), ("beam_inclination.min", pa.float64()),
                   ("beam_inclination.max", pa.float64()), ("beam_inclination.values", pa.list_(pa.float64()))])
    ),
    "lidar_box": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_TIMESTAMP, pa.int64()), (KEY_OBJECT, pa.string())]
        + _fields("LiDARBoxComponent",
                  _xyz("box.center", pa.float64()) + _xyz("box.size", pa.float64())
                  + [("box.heading", pa.float64()), ("type", pa.int8()), ("num_lidar_points_in_box", pa.int64()),
                     ("num_top_lidar_points_in_box", pa.int64())]
                  + _xyz("speed", pa.float64()) + _xyz("acceleration", pa.float64())
                  + [("difficulty_level.detection", pa.int8()), ("difficulty_level.tracking", pa.int8())])
    ),
    # The LiDAR box moved to the time its most visible camera saw it (the ground truth of camera-only evaluation).
    "lidar_camera_synced_box": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_TIMESTAMP, pa.int64()), (KEY_OBJECT, pa.string())]
        + _fields("LiDARCameraSyncedBoxComponent",
                  [("most_visible_camera_name", pa.int8())] + _xyz("camera_synced_box.center", pa.float64())
                  + _xyz("camera_synced_box.size", pa.float64()) + [("camera_synced_box.heading", pa.float64())])
    ),
    "vehicle_pose": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_TIMESTAMP, pa.int64())]
        + _fields("VehiclePoseComponent", [("world_from_vehicle.transform", TRANSFORM)])
    ),
    "stats": pa.schema(
        [(KEY_SEGMENT, pa.string()), (KEY_TIMESTAMP, pa.int64())]
        + _fields("StatsComponent", [("time_of_day", pa.string()), ("location", pa.string()), ("weather", pa.string()),
                                     ("lidar_object_counts.types", pa.list_(pa.int8())),
                                     ("lidar_object_counts.counts", pa.list_(pa.int32())),
                                     ("camera_object_counts.types", pa.list_(pa.int8())),
                                     ("camera_object_counts.counts", pa.list_(pa.int32()))])
    ),
}
