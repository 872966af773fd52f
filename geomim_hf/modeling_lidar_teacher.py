"""The LiDAR teacher whose BEV features are GeoMIM's pretraining target: a pillar CenterPoint that
trains on any machine (the official teacher, BEVFusion's TransFusion-L, needs sparse convolutions).

The target is one backbone stage of the pillar network, on exactly the student's target grid. The
official target is TransFusion-L's sparse 3-D encoder output: the deepest LiDAR-only geometry
encoding before the 2-D BEV backbone and neck, at 0.6 m. A pillar network has no 3-D encoder; its
backbone stages play that part, so ``target_layer`` picks the stage whose stride lands on the
target grid (the last, by default): the deepest geometry features before the neck mixes scales.

The same class also runs mmdetection3d's nuScenes pillar CenterPoint
(``GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02()``; weights from
``convert/convert_mmdet3d_centerpoint.py``): 11 point features, hard voxelization, BatchNorm eps 1e-3,
six task groups in the head, and the pillar grid laid out in the LiDAR frame (``frame="lidar"``),
where that network was trained. Its boxes are decoded in the LiDAR frame and returned in the ego
frame, and its target stage is resampled onto the ego-frame grid the student predicts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_geomim import GeoMIMConfig
from .data.classes import NUSCENES_DETECTION_CLASSES
from .modeling.centerpoint import (
    BevGrid,
    CenterHead,
    build_targets,
    center_loss,
    decode,
    init_output,
    transform_boxes,
)
from .modeling.bev_resample import resample_bev
from .modeling.pillars import PillarEncoder

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
        student.check_teacher("the LiDAR teacher", self.x_range, self.y_range, self.target_resolution,
                              self.target_channels)


@dataclass
class LidarTeacherOutput(ModelOutput):
    """
    loss, heatmap_loss, regression_loss: CenterPoint's losses, given boxes.
    heatmap: (B, K, Y_h, X_h) class logits; regression: (B, 10, Y_h, X_h), or (B, K, 10, Y_h, X_h) per
        class with ``head_tasks``; both on the head's grid, in the config's ``frame``.
    bev_features: (B, C_t, Y_t, X_t) the target stage on the ego-frame grid, GeoMIM's pretraining target.
    ego_from_lidar: (B, 4, 4) with ``frame="lidar"``: what ``post_process`` maps the boxes to ego with.
    """

    loss: torch.Tensor | None = None
    heatmap_loss: torch.Tensor | None = None
    regression_loss: torch.Tensor | None = None
    heatmap: torch.Tensor | None = None
    regression: torch.Tensor | None = None
    bev_features: torch.Tensor | None = None
    ego_from_lidar: torch.Tensor | None = None


class GeoMIMLidarTeacher(PreTrainedModel):
    config_class = GeoMIMLidarTeacherConfig
    main_input_name = "lidar_points"

    def __init__(self, config: GeoMIMLidarTeacherConfig):
        super().__init__(config)
        self.encoder = PillarEncoder(config.x_range, config.y_range, config.z_range, config.pillar_size,
                                     config.pillar_channels, config.backbone_channels, config.backbone_layers,
                                     config.backbone_strides, config.neck_channels, config.neck_stride,
                                     center_z=config.pillar_center_z,
                                     max_points_per_pillar=config.max_points_per_pillar, max_pillars=config.max_pillars,
                                     norm_eps=config.norm_eps, norm_momentum=config.norm_momentum)
        task_classes = None if config.head_tasks is None else [
            [config.class_names.index(name) for name in task] for task in config.head_tasks]
        self.head = CenterHead(self.encoder.out_channels, len(config.class_names), config.head_channels,
                               task_classes=task_classes, final_kernel=config.head_final_kernel)
        self.grid = BevGrid(config.x_range, config.y_range, config.pillar_size * config.neck_stride)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d) and hasattr(module, "output_bias"):
            init_output(module)
        elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()

    def forward(self, lidar_points: torch.Tensor, ego_from_lidar: torch.Tensor, point_mask: torch.Tensor | None = None,
                boxes: torch.Tensor | None = None, velocities: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, box_mask: torch.Tensor | None = None,
                return_dict: bool = True):
        """lidar_points: (B, P, 5) in the LiDAR frame (x, y, z, intensity, time lag); ego_from_lidar:
        (B, 4, 4); point_mask: (B, P). Targets (ego frame, as the loaders give them): boxes (B, K, 7),
        velocities (B, K, 2), labels (B, K) into ``class_names``, box_mask (B, K)."""
        lidar_frame = self.config.frame == "lidar"
        if lidar_frame:
            points = lidar_points[..., :5]
        else:
            rotation, translation = ego_from_lidar[:, None, :3, :3], ego_from_lidar[:, None, :3, 3]
            xyz = (rotation @ lidar_points[..., :3, None]).squeeze(-1) + translation
            points = torch.cat([xyz, lidar_points[..., 3:5]], -1)  # ego frame
        _, stages, neck = self.encoder(points, point_mask)
        head = self.head(neck)
        bev_features = stages[self.config.target_layer]
        if lidar_frame:  # the student predicts the target on the ego-frame grid
            bev_features = resample_bev(bev_features, ego_from_lidar, self.config.x_range, self.config.y_range,
                                        self.config.x_range, self.config.y_range, self.config.target_resolution)
        output = LidarTeacherOutput(heatmap=head["heatmap"], regression=head["regression"], bev_features=bev_features,
                                    ego_from_lidar=ego_from_lidar if lidar_frame else None)
        if boxes is not None:
            box_mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device) if box_mask is None else box_mask
            boxes, velocities = boxes.float(), velocities.float()
            if lidar_frame:  # targets live on the head's LiDAR-frame grid
                boxes, velocities = transform_boxes(torch.linalg.inv(ego_from_lidar.float()), boxes, velocities)
            targets = build_targets(boxes, velocities, labels, box_mask, self.grid, len(self.config.class_names))
            terms = center_loss(head, targets)
            output.loss, output.heatmap_loss, output.regression_loss = (
                terms["loss"], terms["heatmap_loss"], terms["regression_loss"])
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def bev_features(self, lidar_points, ego_from_lidar, point_mask=None) -> torch.Tensor:
        """(B, C_t, Y_t, X_t) the pretraining target."""
        return self(lidar_points, ego_from_lidar, point_mask).bev_features

    def post_process(self, outputs: LidarTeacherOutput, score_threshold: float | None = None,
                     top_k: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Per sample ego-frame ``boxes`` (P, 7) (z at the centre), ``scores``, ``labels`` and ``velocities``."""
        radius = {i: NMS_RADIUS[name] for i, name in enumerate(self.config.class_names)}
        results = decode({"heatmap": outputs.heatmap, "regression": outputs.regression}, self.grid,
                         top_k or self.config.max_detections,
                         self.config.score_threshold if score_threshold is None else score_threshold, radius)
        if self.config.frame == "lidar":
            if outputs.ego_from_lidar is None:
                raise ValueError("frame='lidar': the head decodes LiDAR-frame boxes, and outputs.ego_from_lidar "
                                 "(set by the forward pass) is None")
            for result, ego_from_lidar in zip(results, outputs.ego_from_lidar.float()):
                boxes, velocities = transform_boxes(ego_from_lidar[None], result["boxes"][None],
                                                    result["velocities"][None])
                result["boxes"], result["velocities"] = boxes[0], velocities[0]
        return results
