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

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_lidar_teacher import NMS_RADIUS, GeoMIMLidarTeacherConfig
from .modeling.centerpoint import (
    CenterHead,
    OutputConv2d,
    build_targets,
    center_loss,
    decode,
    transform_boxes,
)
from .modeling.bev_resample import resample_bev
from .modeling.pillars import PillarEncoder

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
    # The batch fields forward takes (collate_geomim keeps these).
    model_input_names = ("lidar_points", "ego_from_lidar", "point_mask", "boxes", "velocities", "labels", "box_mask")
    # The fixed-shape submodules (training.compile_regions); pillar scatter's sizes follow the points.
    _compile_regions = ("encoder.backbone", "encoder.neck", "head")

    def __init__(self, config: GeoMIMLidarTeacherConfig):
        super().__init__(config)
        self.encoder = PillarEncoder(config.pillar_grid, pillar_channels=config.pillar_channels,
                                     backbone_channels=config.backbone_channels,
                                     backbone_layers=config.backbone_layers, backbone_strides=config.backbone_strides,
                                     neck_channels=config.neck_channels, neck_stride=config.neck_stride,
                                     center_z=config.pillar_center_z,
                                     max_points_per_pillar=config.max_points_per_pillar, max_pillars=config.max_pillars,
                                     norm_eps=config.norm_eps, norm_momentum=config.norm_momentum)
        task_classes = None if config.head_tasks is None else [
            [config.class_names.index(name) for name in task] for task in config.head_tasks]
        self.head = CenterHead(self.encoder.out_channels, len(config.class_names), config.head_channels,
                               task_classes=task_classes, final_kernel=config.head_final_kernel)
        self.grid = config.head_grid
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, OutputConv2d):
            module.reset_output()
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
            # the LiDAR-frame map covers the same ranges as the ego-frame target grid
            bev_features = resample_bev(bev_features, ego_from_lidar, self.config.target_grid, self.config.target_grid)
        output = LidarTeacherOutput(heatmap=head["heatmap"], regression=head["regression"], bev_features=bev_features,
                                    ego_from_lidar=ego_from_lidar if lidar_frame else None)
        if boxes is not None:
            box_mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device) if box_mask is None else box_mask
            boxes, velocities = boxes.float(), velocities.float()
            if lidar_frame:  # targets live on the head's LiDAR-frame grid
                boxes, velocities = transform_boxes(torch.linalg.inv(ego_from_lidar.float()), boxes, velocities)
            targets = build_targets(boxes, velocities=velocities, labels=labels, box_mask=box_mask, grid=self.grid,
                                    num_classes=len(self.config.class_names))
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
        results = decode({"heatmap": outputs.heatmap, "regression": outputs.regression}, grid=self.grid,
                         top_k=top_k or self.config.max_detections,
                         score_threshold=self.config.score_threshold if score_threshold is None else score_threshold,
                         nms_radius=radius)
        if self.config.frame == "lidar":
            if outputs.ego_from_lidar is None:
                raise ValueError("frame='lidar': the head decodes LiDAR-frame boxes, and outputs.ego_from_lidar "
                                 "(set by the forward pass) is None")
            for result, ego_from_lidar in zip(results, outputs.ego_from_lidar.float()):
                boxes, velocities = transform_boxes(ego_from_lidar[None], result["boxes"][None],
                                                    result["velocities"][None])
                result["boxes"], result["velocities"] = boxes[0], velocities[0]
        return results
