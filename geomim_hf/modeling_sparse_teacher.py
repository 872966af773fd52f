"""The official GeoMIM teacher: BEVFusion's LiDAR-only TransFusion-L sparse 3-D encoder (spconv), whose
densified output is the paper's pretraining target. Optional: ``pip install "geomim-hf[sparse]"``.

Load BEVFusion's released ``lidar-only-det.pth`` with ``python -m geomim_hf.convert.convert_bevfusion_lidar``.
As in BEVFusion, points are voxelized in the LiDAR frame (0.075 x 0.075 x 0.2 m over [-54, 54]^2 x
[-5, 3] m, at most 10 points per voxel, their mean as the voxel's feature), the sparse encoder runs there,
and its output is densified with z folded into channels: 256 channels on a 180 x 180 grid of 0.6 m. The
official student predicts in that LiDAR frame; ours predicts on an ego-frame grid, so the map is resampled
(bilinearly) onto the student's target grid through ``ego_from_lidar``. Only the encoder is here: the
detection head is not needed for a frozen teacher (and spconv's CPU build has no backward).

Configs and weights load without spconv; running the encoder needs it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .configuration_sparse_teacher import GeoMIMSparseTeacherConfig
from .modeling.bev_resample import resample_bev
from .modeling.sparse_encoder import SparseConv3d, SparseEncoder, hard_voxelize

@dataclass
class SparseTeacherOutput(ModelOutput):
    """
    bev_features: (B, C_t, Y_t, X_t) on the ego-frame target grid: GeoMIM's pretraining target.
    lidar_bev_features: (B, C_t, Y_l, X_l) the densified encoder output in the LiDAR frame (rows y,
        columns x; channel c * Z + z as BEVFusion), before resampling.
    num_voxels: (B,) voxels per sample.
    """

    bev_features: torch.Tensor | None = None
    lidar_bev_features: torch.Tensor | None = None
    num_voxels: torch.Tensor | None = None


class GeoMIMSparseTeacher(PreTrainedModel):
    """BEVFusion's TransFusion-L sparse encoder as a frozen GeoMIM teacher (``bev_features`` is the target)."""

    config_class = GeoMIMSparseTeacherConfig
    main_input_name = "lidar_points"
    model_input_names = ("lidar_points", "ego_from_lidar", "point_mask")  # the batch fields forward takes

    def __init__(self, config: GeoMIMSparseTeacherConfig):
        super().__init__(config)
        self.encoder = SparseEncoder(config.in_channels, sparse_shape=config.sparse_shape,
                                     base_channels=config.base_channels, output_channels=config.output_channels,
                                     encoder_channels=config.encoder_channels,
                                     downsample_paddings=config.downsample_paddings, eps=config.norm_eps,
                                     momentum=config.norm_momentum)
        self.post_init()

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, SparseConv3d):
            fan_in = module.in_channels * math.prod(module.kernel_size)
            nn.init.normal_(module.weight, std=math.sqrt(2.0 / fan_in))
        elif isinstance(module, nn.BatchNorm1d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.reset_running_stats()

    def voxelize(self, lidar_points: torch.Tensor, point_mask: torch.Tensor | None = None):
        """(V, C_in) voxel features and (V, 4) coordinates (batch, x, y, z) of a padded batch of LiDAR-frame
        points (B, P, C), and the voxels per sample (B,)."""
        config = self.config
        features, coords, counts = [], [], []
        for index, points_lidar in enumerate(lidar_points):
            if point_mask is not None:
                points_lidar = points_lidar[point_mask[index].bool()]
            voxel_features, voxel_coords, _ = hard_voxelize(points_lidar[:, : config.in_channels].float(),
                                                            config.point_cloud_range, config.voxel_size,
                                                            config.max_points_per_voxel, config.max_voxels)
            features.append(voxel_features)
            coords.append(torch.cat([voxel_coords.new_full((len(voxel_coords), 1), index), voxel_coords], 1))
            counts.append(len(voxel_coords))
        return torch.cat(features), torch.cat(coords), torch.tensor(counts, device=lidar_points.device)

    def forward(self, lidar_points: torch.Tensor, ego_from_lidar: torch.Tensor, point_mask: torch.Tensor | None = None,
                return_dict: bool = True):
        """lidar_points: (B, P, >= in_channels) in the LiDAR frame (x, y, z, intensity, time lag);
        ego_from_lidar: (B, 4, 4); point_mask: (B, P), True for real points."""
        config = self.config
        if lidar_points.shape[-1] < config.in_channels:
            raise ValueError(f"lidar_points has {lidar_points.shape[-1]} features per point, the teacher averages "
                             f"{config.in_channels} (x, y, z, intensity, time lag)")
        voxel_features, voxel_coords, num_voxels = self.voxelize(lidar_points, point_mask)
        batch_size = lidar_points.shape[0]
        if voxel_coords.shape[0]:
            lidar_bev = self.encoder(voxel_features, voxel_coords, batch_size)  # (B, C_t, Y_l, X_l)
        else:  # no point in range anywhere: every cell is empty
            out_x, out_y, _ = config.encoder_output_shape
            lidar_bev = lidar_points.new_zeros(batch_size, config.target_channels, out_y, out_x)
        bev = resample_bev(lidar_bev, ego_from_lidar, config.lidar_grid, config.target_grid)  # (B, C_t, Y_t, X_t)
        output = SparseTeacherOutput(bev_features=bev, lidar_bev_features=lidar_bev, num_voxels=num_voxels)
        return output if return_dict else output.to_tuple()

    @torch.no_grad()
    def bev_features(self, lidar_points, ego_from_lidar, point_mask=None) -> torch.Tensor:
        """(B, C_t, Y_t, X_t) the pretraining target."""
        return self(lidar_points, ego_from_lidar, point_mask).bev_features
