"""Configuration of the pillar CenterPoint LiDAR teacher (:mod:`.modeling_lidar_teacher`)."""

from __future__ import annotations

import math

from transformers import PretrainedConfig

from .configuration_geomim import GeoMIMConfig
from .data.classes import NUSCENES_DETECTION_CLASSES
from .modeling.grids import BevGrid

# Teacher widths to pair with a student preset (others take the pillar network's defaults).
TEACHER_PRESETS = {
    "geomim-tiny": {"backbone_channels": (32, 48, 64), "backbone_layers": (1, 2, 2), "neck_channels": 32,
                    "head_channels": 32},
}
TEACHER_PRESETS["geomim-small"] = TEACHER_PRESETS["geomim-tiny"]  # the same target grid
# CenterPoint's nuScenes circle-NMS radii (metres), by detection class.
NMS_RADIUS = {"car": 4.0, "truck": 12.0, "construction_vehicle": 12.0, "bus": 10.0, "trailer": 10.0, "barrier": 1.0,
              "motorcycle": 0.85, "bicycle": 0.85, "pedestrian": 0.175, "traffic_cone": 0.175}
# mmdetection3d's configs/_base_/models/centerpoint_pillar02_second_secfpn_nus.py with the nuScenes
# point_cloud_range of centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d.py (LiDAR frame).
MMDET3D_CENTERPOINT_PILLAR02 = {
    "x_range": (-51.2, 51.2), "y_range": (-51.2, 51.2), "z_range": (-5.0, 3.0), "pillar_size": 0.2,
    "pillar_channels": 64, "backbone_channels": (64, 128, 256), "backbone_layers": (3, 5, 5),
    "backbone_strides": (2, 2, 2), "neck_channels": 128, "neck_stride": 4, "head_channels": 64,
    "class_names": NUSCENES_DETECTION_CLASSES,
    "head_tasks": (("car",), ("truck", "construction_vehicle"), ("bus", "trailer"), ("barrier",),
                   ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone")),
    "head_final_kernel": 3, "pillar_center_z": True, "max_points_per_pillar": 20,
    "max_pillars": 40000,  # the test-time max_voxels (training used 30000)
    "norm_eps": 1e-3, "norm_momentum": 0.01, "frame": "lidar", "score_threshold": 0.1, "max_detections": 500,
}
FRAMES = ("ego", "lidar")


class GeoMIMLidarTeacherConfig(PretrainedConfig):
    r"""
    Args:
        x_range, y_range (`tuple[float, float]`): BEV extent in the ego frame, metres.
        z_range (`tuple[float, float]`, defaults to `(-5.0, 3.0)`): heights kept.
        pillar_size (`float`, defaults to 0.2): metres per pillar.
        pillar_channels (`int`, defaults to 64), backbone_channels, backbone_layers, backbone_strides:
            the pillar network (SECOND-style stages).
        neck_channels (`int`, defaults to 128), neck_stride (`int`, defaults to 2): the FPN and the
            stride (over pillars) at which the head runs.
        head_channels (`int`, defaults to 64).
        class_names (`tuple[str, ...]`): detection classes (nuScenes' ten).
        target_layer (`int`, defaults to -1): the backbone stage whose output is the BEV target.
        score_threshold, max_detections: decoding (peaks kept before the threshold and NMS).
        pillar_center_z (`bool`, defaults to `False`): decorate each point with its z offset from the
            pillar's vertical centre too: 11 point features instead of 10 (mmdetection3d).
        max_points_per_pillar (`int`, *optional*): hard voxelization: each pillar keeps its first points
            (input order) and its unfilled slots enter the pillar's max as zero points (mmdetection3d: 20).
        max_pillars (`int`, *optional*): hard voxelization: at most this many pillars per sample, the first
            opened in point order (mmdetection3d: 40000 at test time).
        norm_eps (`float`, defaults to 1e-5), norm_momentum (`float`, defaults to 0.1): BatchNorm of the
            pillar net, backbone and neck (mmdetection3d: 1e-3, 0.01; its head keeps PyTorch's defaults).
        head_tasks (`tuple[tuple[str, ...], ...]`, *optional*): class names per head task group; each
            task has its own heatmap and one branch per regression quantity (mmdetection3d's nuScenes
            CenterPoint: six groups). None: one task, one heatmap and one 10-channel regression branch.
        head_final_kernel (`int`, defaults to 1): kernel of the head's output convs (mmdetection3d: 3).
        frame (`str`, defaults to `"ego"`): the frame the pillar grid and head are laid out in: `"ego"`
            (points go through ``ego_from_lidar`` first) or `"lidar"` (the LiDAR frame, as mmdetection3d's
            nuScenes models; boxes are still taken and returned in the ego frame and ``bev_features`` is
            resampled onto the ego-frame grid over the same ranges).
    """

    model_type = "geomim_lidar_teacher"

    def __init__(self, x_range=(-51.2, 51.2), y_range=(-51.2, 51.2), z_range=(-5.0, 3.0), pillar_size=0.2,
                 pillar_channels=64, backbone_channels=(64, 128, 256), backbone_layers=(3, 5, 5),
                 backbone_strides=(2, 2, 2), neck_channels=128, neck_stride=2, head_channels=64,
                 class_names=NUSCENES_DETECTION_CLASSES, target_layer=-1, score_threshold=0.1, max_detections=500,
                 pillar_center_z=False, max_points_per_pillar=None, max_pillars=None, norm_eps=1e-5, norm_momentum=0.1,
                 head_tasks=None, head_final_kernel=1, frame="ego", **kwargs):
        self.x_range, self.y_range, self.z_range = tuple(x_range), tuple(y_range), tuple(z_range)
        self.pillar_size = float(pillar_size)
        self.pillar_channels = pillar_channels
        self.backbone_channels = tuple(backbone_channels)
        self.backbone_layers = tuple(backbone_layers)
        self.backbone_strides = tuple(backbone_strides)
        self.neck_channels, self.neck_stride, self.head_channels = neck_channels, neck_stride, head_channels
        self.class_names = tuple(class_names)
        self.target_layer = target_layer
        self.score_threshold, self.max_detections = score_threshold, max_detections
        self.pillar_center_z = bool(pillar_center_z)
        self.max_points_per_pillar, self.max_pillars = max_points_per_pillar, max_pillars
        self.norm_eps, self.norm_momentum = float(norm_eps), float(norm_momentum)
        self.head_tasks = None if head_tasks is None else tuple(tuple(task) for task in head_tasks)
        self.head_final_kernel = head_final_kernel
        self.frame = frame
        super().__init__(**kwargs)
        if not (len(self.backbone_channels) == len(self.backbone_layers) == len(self.backbone_strides)):
            raise ValueError("backbone_channels, backbone_layers and backbone_strides need one entry per stage")
        unknown = [n for n in self.class_names if n not in NMS_RADIUS]
        if unknown:
            raise ValueError(f"class_names {unknown} have no NMS radius; known: {sorted(NMS_RADIUS)}")
        if self.frame not in FRAMES:
            raise ValueError(f"frame {self.frame!r} is not one of {FRAMES}")
        if self.head_tasks is not None:
            grouped = [name for task in self.head_tasks for name in task]
            if sorted(grouped) != sorted(self.class_names) or len(set(grouped)) != len(grouped):
                raise ValueError(f"head_tasks {self.head_tasks} must hold every name of class_names "
                                 f"{self.class_names} exactly once")

    @classmethod
    def mmdet3d_centerpoint_pillar02(cls, **overrides) -> "GeoMIMLidarTeacherConfig":
        """mmdetection3d's nuScenes pillar CenterPoint, ``centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d``
        (and its ``head-circlenms`` twin, the same weights): 0.2 m pillars over [-51.2, 51.2]^2 x [-5, 3] m in
        the LiDAR frame, SECOND (64, 128, 256) + SECONDFPN to stride 4, six-task CenterHead. The layout
        ``convert_mmdet3d_centerpoint`` converts into. ``overrides`` replace fields (e.g. ``target_layer``)."""
        return cls(**{**MMDET3D_CENTERPOINT_PILLAR02, **overrides})

    @property
    def target_stride(self) -> int:
        """Stride over the pillars of the target stage."""
        stage = self.target_layer % len(self.backbone_strides)
        return math.prod(self.backbone_strides[: stage + 1])

    @property
    def target_channels(self) -> int:
        return self.backbone_channels[self.target_layer]

    @property
    def target_resolution(self) -> float:
        return self.pillar_size * self.target_stride

    @property
    def pillar_grid(self) -> BevGrid:
        """The pillars, in the frame ``frame`` names; ``z_range`` is the height kept."""
        return BevGrid(self.x_range, self.y_range, self.pillar_size, self.z_range)

    @property
    def head_grid(self) -> BevGrid:
        """The CenterPoint head's output grid: the pillars coarsened by the neck's stride."""
        return self.pillar_grid.coarsened(self.neck_stride)

    @property
    def target_grid(self) -> BevGrid:
        """The ego-frame grid of ``bev_features``, the student's target."""
        return BevGrid(self.x_range, self.y_range, self.target_resolution)

    @classmethod
    def for_student(cls, student: GeoMIMConfig, **overrides):
        """A teacher whose last stage has the student's target grid (extent, cells, channels).

        Pillars are the target cell over the last stage's stride: strides (1, 2, 2) below 1 m cells
        (official 0.6 m: 0.15 m pillars), (2, 2, 2) above (the tiny preset's 3.2 m: 0.4 m pillars)."""
        resolution = student.bev_resolution * student.bev_downsample
        strides = tuple(overrides.pop("backbone_strides", (1, 2, 2) if resolution < 1.0 else (2, 2, 2)))
        channels = list(overrides.pop("backbone_channels", (64, 128, 256)))
        channels[-1] = student.target_channels
        return cls(x_range=student.bev_x_range, y_range=student.bev_y_range,
                   pillar_size=resolution / math.prod(strides), backbone_strides=strides,
                   backbone_channels=tuple(channels), class_names=student.class_names, target_layer=-1, **overrides)

    def check_student(self, student: GeoMIMConfig) -> None:
        """Fail, naming the fields, unless the target stage lands on the student's target grid."""
        student.check_teacher("the LiDAR teacher", self.target_grid, self.target_channels)
