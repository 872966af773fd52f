"""GeoMIM models: the multi-view encoder (``GeoMIMModel``) and masked BEV pretraining
(``GeoMIMForMaskedBEVModeling``). The networks live in :mod:`geomim_hf.modeling`; this file reads
the config, initialises weights, and speaks transformers.

Letters: B batch, N views, G mask groups (2), C channels, D depth bins, H x W image,
h x w stride-16 features, Y x X BEV target grid.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput, logging

from .configuration_geomim import GeoMIMConfig
from .data.records import ATTRIBUTE_NAMES
from .modeling.centerpoint import CenterHead, OutputConv2d, build_targets, center_loss, decode
from .modeling.grids import DepthBins
from .modeling.decoder import CrossViewAttention, GeoMIMDecoder
from .modeling.necks import BevEncoder, ImageFPN
from .modeling.segmentation import MapSegmentationHead, map_focal_loss
from .modeling.swin import SwinEncoder, WindowAttention
from .modeling.view_transformer import BevDownsample, CameraAwareDepthNet, DepthNet, LiftSplat, camera_vector
from .configuration_lidar_teacher import NMS_RADIUS

logger = logging.get_logger(__name__)

DECODER_STRIDE = 16
# The inputs of a BEV task model beyond the targets: the current frame's cameras, then the previous frame's (a
# temporal model, ``det_temporal``) and the ego motion between them.
CAMERA_INPUTS = ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original")
PREVIOUS_FRAME_INPUTS = ("prev_pixel_values", "prev_intrinsics", "prev_ego_from_camera",
                         "prev_processed_from_original", "ego_from_prev_ego")


def random_cell_mask(config: GeoMIMConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random split of the masking cells into two complementary groups, shared by every image
    and view of a batch (the official masking). Returns ``bool_masked_pos``: (H_cells, W_cells) of
    the padded image, True for the ``mask_ratio`` share of the cells that form group 1."""
    height, width = (-(-size // config.mask_cell_size) for size in config.image_size)
    order = torch.randperm(height * width, generator=generator)
    masked = torch.zeros(height * width, dtype=torch.bool)
    masked[order[: int(round(config.mask_ratio * height * width))]] = True
    return masked.view(height, width)


def patch_normalize(features: torch.Tensor, patch: int, eps: float) -> torch.Tensor:
    """Normalise (B, C, Y, X) per ``patch`` x ``patch`` block of cells over all its values (MAE's
    norm-pix): (f - mean) / sqrt(var + eps)."""
    batch, channels, height, width = features.shape
    blocks = features.reshape(batch, channels, height // patch, patch, width // patch, patch)
    mean = blocks.mean(dim=(1, 3, 5), keepdim=True)
    var = blocks.var(dim=(1, 3, 5), keepdim=True, unbiased=False)
    return ((blocks - mean) / torch.sqrt(var + eps)).reshape(batch, channels, height, width)


def pixel_targets(pixel_values: torch.Tensor, grid: tuple[int, int], patch: int, eps: float = 1e-6) -> torch.Tensor:
    """MAE's normalised pixel targets: (B, N, 3, H, W) zero-padded to the ``grid`` of ``patch``-pixel
    tokens, each token's patch*patch*3 values (row, column, channel order) normalised by their own mean
    and variance. Returns (B, N, grid_h, grid_w, patch*patch*3)."""
    batch, views, channels, height, width = pixel_values.shape
    padded = F.pad(pixel_values.float(), (0, grid[1] * patch - width, 0, grid[0] * patch - height))
    patches = padded.reshape(batch, views, channels, grid[0], patch, grid[1], patch).permute(0, 1, 3, 5, 4, 6, 2)
    patches = patches.reshape(batch, views, grid[0], grid[1], patch * patch * channels)
    mean = patches.mean(-1, keepdim=True)
    var = patches.var(-1, keepdim=True, unbiased=False)
    return (patches - mean) / torch.sqrt(var + eps)


@dataclass
class GeoMIMModelOutput(ModelOutput):
    """
    feature_maps: per ``out_indices`` stage, (B, N, C_s, H_s, W_s) layer-normed encoder features of the
        image: H_s = ceil(H / stride_s), W_s likewise (the padding to whole masking cells is cropped).
    hidden_states: every stage's output before the norm, (B, N, C_s, H_s, W_s), if asked for.
    """

    feature_maps: tuple[torch.Tensor, ...] | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class MaskedBEVModelingOutput(ModelOutput):
    """
    loss: reconstruction_loss + depth_loss_weight * depth_loss, given the targets (``depth``: the depth
        loss alone; ``pixel``: the reconstruction loss alone).
    reconstruction_loss: MSE to the patch-normalised teacher BEV features, all cells and channels
        (or the masked region, ``reconstruction_region``), averaged over the two mask groups; for
        ``pixel``, MSE to the normalised pixels of each group's masked tokens.
    depth_loss: binary cross-entropy of the depth distribution against one-hot LiDAR depth bins on
        pixels with a depth, averaged over the groups.
    reconstruction: (B, G, C_t, Y, X) each group's predicted BEV features (normalised space); for
        ``pixel`` (B, G, N, h', w', 16*16*3) the predicted pixels of every token; None for ``depth``.
    depth: (B, G, N, D, h, w) depth logits of each group (None for ``pixel``).
    target: (B, C_t, Y, X) the patch-normalised teacher features, or the pixel targets (B, N, h', w', P).
    bool_masked_pos: (H_cells, W_cells) the mask used: True marks group 1.
    """

    loss: torch.Tensor | None = None
    reconstruction_loss: torch.Tensor | None = None
    depth_loss: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    target: torch.Tensor | None = None
    bool_masked_pos: torch.Tensor | None = None


@dataclass
class BEVDetectionOutput(ModelOutput):
    """
    loss: heatmap_loss + 0.25 regression_loss + 0.2 attribute_loss + det_depth_loss_weight * depth_loss.
    heatmap_loss, regression_loss, attribute_loss, depth_loss: the terms, given targets.
    heatmap: (B, K, Y, X) class logits; regression: (B, 10, Y, X); attributes: (B, A, Y, X).
    depth: (B, N, D, h, w) depth logits of the current frame.
    bev_features: (B, C, Y, X) the BEV encoder's output.
    """

    loss: torch.Tensor | None = None
    heatmap_loss: torch.Tensor | None = None
    regression_loss: torch.Tensor | None = None
    attribute_loss: torch.Tensor | None = None
    depth_loss: torch.Tensor | None = None
    heatmap: torch.Tensor | None = None
    regression: torch.Tensor | None = None
    attributes: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    bev_features: torch.Tensor | None = None


@dataclass
class BEVSegmentationOutput(ModelOutput):
    """
    loss: segmentation_loss + det_depth_loss_weight * depth_loss, given targets.
    segmentation_loss: the sigmoid focal loss of the map masks; depth_loss: the depth BCE.
    logits: (B, K, Y, X) one sigmoid logit per map class on ``segmentation_grid``.
    depth: (B, N, D, h, w) depth logits of the current frame; bev_features: (B, C, Y', X') on ``detection_grid``.
    """

    loss: torch.Tensor | None = None
    segmentation_loss: torch.Tensor | None = None
    depth_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    bev_features: torch.Tensor | None = None


def depth_bce(depth_logits: torch.Tensor, depth_labels: torch.Tensor, depth_bins: DepthBins) -> torch.Tensor:
    """BEVDepth's depth loss: softmax over bins against one-hot bins, summed over bins and averaged
    over the pixels that have a depth. depth_logits (..., D, h, w); depth_labels (..., h, w) metres."""
    bins = depth_bins.index_of(depth_labels)
    valid = bins >= 0
    count = depth_logits.shape[-3]
    probabilities = depth_logits.float().softmax(-3).movedim(-3, -1)[valid]  # (P, D)
    one_hot = F.one_hot(bins[valid], count).float()
    return F.binary_cross_entropy(probabilities.clamp(1e-6, 1 - 1e-6), one_hot, reduction="sum") / \
        max(int(valid.sum()), 1)


class GeoMIMPreTrainedModel(PreTrainedModel):
    config_class = GeoMIMConfig
    base_model_prefix = "geomim"
    main_input_name = "pixel_values"
    supports_gradient_checkpointing = True
    _no_split_modules = ["SwinBlock", "TransformerBlock"]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            if getattr(module, "zero_init", False):  # Cross-View Attention outputs start as the identity
                nn.init.zeros_(module.weight)
            else:
                nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
            if module.weight is not None:
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
                module.reset_running_stats()
        elif isinstance(module, OutputConv2d):
            module.reset_output()
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, WindowAttention):
            nn.init.trunc_normal_(module.relative_position_bias_table, std=0.02)
            module.reset_buffers()
        elif isinstance(module, SwinEncoder) and module.absolute_pos_embed is not None:
            nn.init.trunc_normal_(module.absolute_pos_embed, std=0.02)
        elif isinstance(module, GeoMIMDecoder):
            nn.init.normal_(module.mask_token, std=0.02)
            module.reset_buffers()


class GeoMIMModel(GeoMIMPreTrainedModel):
    """The multi-view Swin encoder: what pretraining produces and detectors finetune.

    Optional Cross-View Attention after ``config.encoder_cross_view_stages`` lets the views talk
    inside the encoder (the abstract's reading; the official code has none).
    """

    model_input_names = ("pixel_values",)  # the batch fields forward takes: collate_geomim keeps these
    _compile_regions = ("encoder",)  # fixed-shape submodules that compile_regions compiles

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        self.encoder = SwinEncoder(config.image_size, patch_size=config.patch_size, in_channels=config.num_channels,
                                   embed_dim=config.embed_dim, depths=config.depths, num_heads=config.num_heads,
                                   window_size=config.window_size, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
                                   shifted_windows=config.shifted_windows,
                                   absolute_position_embedding_size=config.absolute_position_embedding_size
                                   if config.use_absolute_position_embeddings else None,
                                   drop_path_rate=config.drop_path_rate, eps=config.layer_norm_eps,
                                   cell_size=config.mask_cell_size)
        self.out_norms = nn.ModuleDict({str(i): nn.LayerNorm(config.stage_dims[i], eps=config.layer_norm_eps)
                                        for i in config.out_indices})
        self.cross_view = nn.ModuleDict({str(i): CrossViewAttention(config.stage_dims[i], config.num_heads[i],
                                                                    config.mlp_ratio)
                                         for i in config.encoder_cross_view_stages})
        self.post_init()

    @property
    def feature_info(self) -> list[dict]:
        """timm-style: channels and stride of each returned feature map."""
        return [{"num_chs": self.config.stage_dims[i], "reduction": self.config.stage_strides[i], "stage": i}
                for i in self.config.out_indices]

    def forward(self, pixel_values: torch.Tensor, bool_masked_pos: torch.Tensor | None = None,
                output_hidden_states: bool = False, return_dict: bool = True):
        """pixel_values: (B, N, 3, H, W); bool_masked_pos: (H_cells, W_cells) or None. With a mask,
        every token only attends to tokens of its own group (one pass encodes both groups). The
        encoder runs on the image padded to whole masking cells; the maps returned cover the image:
        the tokens of stride s that hold any of its pixels, ceil(H / s) x ceil(W / s)."""
        batch, views, _, image_height, image_width = pixel_values.shape
        groups = None if bool_masked_pos is None else bool_masked_pos.long().to(pixel_values.device)

        def after_stage(index, x, token_groups):
            if str(index) not in self.cross_view:
                return x
            _, height, width, channels = x.shape
            tokens = self.cross_view[str(index)](x.reshape(-1, height * width, channels), num_views=views,
                                                 height=height, width=width, groups=token_groups)
            return tokens.view(-1, height, width, channels)

        stages = self.encoder(pixel_values.flatten(0, 1), groups, after_stage if self.cross_view else None)

        def per_view(x, stride):  # (B*N, h_pad, w_pad, C) -> (B, N, C, h, w), cropped to the image
            x = x[:, : -(-image_height // stride), : -(-image_width // stride)]
            return x.permute(0, 3, 1, 2).reshape(batch, views, *x.shape[3:], *x.shape[1:3])

        strides = self.config.stage_strides
        feature_maps = tuple(per_view(self.out_norms[str(i)](stages[i]), strides[i]) for i in self.config.out_indices)
        hidden_states = tuple(per_view(s, strides[i]) for i, s in enumerate(stages)) if output_hidden_states else None
        if not return_dict:
            return tuple(v for v in (feature_maps, hidden_states) if v is not None)
        return GeoMIMModelOutput(feature_maps=feature_maps, hidden_states=hidden_states)


class GeoMIMForMaskedBEVModeling(GeoMIMPreTrainedModel):
    """GeoMIM pretraining: encode the masked views once, decode each mask group into semantic and
    depth features, lift them to BEV with Lift-Splat-Shoot, and regress the LiDAR teacher's BEV
    features (all cells) plus supervise the depth with LiDAR.

    ``config.pretrain_objective`` picks the baselines the paper compares with, on the same encoder,
    masks and decoder: ``"pixel"`` reconstructs the patch-normalised pixels of each group's masked
    cells (MixMAE's target, at the decoder's 16-pixel patches); ``"depth"`` predicts the LiDAR depth
    maps alone. Only the modules an objective trains are built."""

    # The batch fields forward takes (collate_geomim keeps these); the mask is drawn per step by the loop.
    model_input_names = ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original",
                         "augmented_ego_from_ego", "teacher_features", "depth_labels")
    # The fixed-shape submodules (training.compile_regions); lifting and pooling stay eager.
    _compile_regions = ("geomim", "decoder", "pixel_head", "depth_net", "bev_downsample", "bev_head")

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        if tuple(config.out_indices) != (2, 3) or config.stage_strides[2] != DECODER_STRIDE:
            raise ValueError(f"masked BEV modeling decodes the stride-16 and stride-32 stages: out_indices must be "
                             f"(2, 3) with strides (16, 32), got {config.out_indices} with {config.stage_strides}")
        self.objective = config.pretrain_objective
        self.geomim = GeoMIMModel(config)
        padded = [-(-s // config.mask_cell_size) * config.mask_cell_size for s in config.image_size]
        self.decoder_grid = (padded[0] // DECODER_STRIDE, padded[1] // DECODER_STRIDE)
        self.feature_size = (config.image_size[0] // DECODER_STRIDE, config.image_size[1] // DECODER_STRIDE)
        pixel = self.objective == "pixel"
        self.decoder = GeoMIMDecoder((config.stage_dims[2], config.stage_dims[3]), feature_size=self.decoder_grid,
                                     hidden_size=config.decoder_hidden_size, num_layers=config.decoder_num_layers,
                                     num_heads=config.decoder_num_heads, mlp_ratio=config.mlp_ratio,
                                     neck_window=config.decoder_neck_window_size, neck_heads=config.num_heads[2],
                                     cross_view_layers=config.decoder_cross_view_layers,
                                     depth_branch_start=config.depth_branch_start_layer,
                                     depth_branch_layers=config.depth_branch_num_layers,
                                     depth_branch_cross_view_layers=config.depth_branch_cross_view_layers,
                                     camera_hidden_size=config.camera_aware_hidden_size, eps=config.layer_norm_eps,
                                     depth_branch=config.decoder_depth_branch and not pixel)
        if pixel:
            self.pixel_head = nn.Linear(config.decoder_hidden_size, DECODER_STRIDE**2 * config.num_channels)
            self.post_init()
            return
        depth_in = config.decoder_hidden_size * (2 if config.decoder_depth_branch else 1)
        self.depth_net = DepthNet(depth_in, config.depth_net_channels, num_bins=config.pretraining_depth_bins.count,
                                  context_channels=config.context_channels)
        if self.objective == "geomim":
            self.lift_splat = LiftSplat(config.image_size, DECODER_STRIDE, depth_bins=config.pretraining_depth_bins,
                                        grid=config.pretraining_grid, kernel_backend=config.kernel_backend)
            self.bev_downsample = BevDownsample(config.context_channels, config.bev_downsample)
            self.bev_head = nn.Conv2d(config.context_channels, config.target_channels, 1)
        self.post_init()

    def decode_group(self, c4, c5, views, cameras, masked, token_groups, intrinsics, ego_from_camera,
                     processed_from_original, augmented_ego_from_ego):
        """One mask group. ``pixel``: returns the predicted pixels (B, N, h', w', 16*16*3) of every token of
        the padded image and None. Otherwise BEV features (B, C_t, Y, X) (None for ``depth``) and depth
        logits (B, N, D, h, w)."""
        semantic, depth = self.decoder(c4, c5=c5, num_views=views, cameras=cameras, masked=masked,
                                       groups=token_groups)  # (B*N, C, h', w') each
        batch = intrinsics.shape[0]
        if self.objective == "pixel":
            pixels = self.pixel_head(semantic.permute(0, 2, 3, 1))
            return pixels.view(batch, views, *pixels.shape[1:]), None
        height, width = self.feature_size
        features = semantic if depth is None else torch.cat([semantic, depth], 1)
        depth_logits, context = self.depth_net(features[:, :, :height, :width])  # drop the padding cells
        if self.objective == "depth":
            return None, depth_logits.view(batch, views, *depth_logits.shape[1:])
        bev, depth_logits = self.lift_splat.splat_views(depth_logits, context=context, intrinsics=intrinsics,
                                                        ego_from_camera=ego_from_camera,
                                                        processed_from_original=processed_from_original,
                                                        augmented_ego_from_ego=augmented_ego_from_ego)
        return self.bev_head(self.bev_downsample(bev)), depth_logits

    def forward(
        self,
        pixel_values: torch.Tensor,
        intrinsics: torch.Tensor,
        ego_from_camera: torch.Tensor,
        processed_from_original: torch.Tensor,
        augmented_ego_from_ego: torch.Tensor | None = None,
        teacher_features: torch.Tensor | None = None,
        bool_masked_pos: torch.Tensor | None = None,
        depth_labels: torch.Tensor | None = None,
        return_dict: bool = True,
        labels: torch.Tensor | None = None,
    ):
        r"""
        pixel_values: (B, N, 3, H, W) from :class:`GeoMIMImageProcessor`; intrinsics, processed_from_original:
            (B, N, 3, 3); ego_from_camera: (B, N, 4, 4); augmented_ego_from_ego: (B, 4, 4) BEV augmentation.
        teacher_features: (B, C_t, Y, X) the LiDAR teacher's BEV features on the target grid (raw;
            normalised per patch here); GeoMIM's target, ignored by the other objectives.
        bool_masked_pos: (H_cells, W_cells) the two mask groups (:func:`random_cell_mask`); required,
            so that all randomness stays outside the model.
        depth_labels: (B, N, h, w) LiDAR depth maps in metres at stride 16, 0 where unknown: the
            processor's ``depth_maps`` (``return_depth=True``), as the detector takes them. Not used by
            ``pixel``. ``labels`` is its deprecated name (it means class ids everywhere else).
        """
        if bool_masked_pos is None:
            raise ValueError("bool_masked_pos is required: draw the two mask groups with "
                             "geomim_hf.modeling_geomim.random_cell_mask(config, generator)")
        if labels is not None:
            warnings.warn("GeoMIMForMaskedBEVModeling(labels=...) is deprecated: pass the depth maps as depth_labels",
                          FutureWarning, stacklevel=2)
            depth_labels = labels if depth_labels is None else depth_labels
        if self.objective == "pixel":
            depth_labels = None
        batch, views = pixel_values.shape[:2]
        encoded = self.geomim(pixel_values, bool_masked_pos=bool_masked_pos)
        # The decoder works on the padded image's token grid (the masking cells'): pad the maps back. The
        # padding tokens are a group of their own and get the mask token, so their values never matter.
        grid_h, grid_w = self.decoder_grid
        c4, c5 = (F.pad(f.flatten(0, 1), (0, -(-grid_w // k) - f.shape[-1], 0, -(-grid_h // k) - f.shape[-2]))
                  .permute(0, 2, 3, 1) for f, k in zip(encoded.feature_maps, (1, 2)))  # (B*N, h', w', C)
        cameras = camera_vector(intrinsics, processed_from_original, ego_from_camera).flatten(0, 1).to(c4.dtype)
        # (h', w') groups of the stride-16 tokens of the padded image; padding-only tokens are PAD_GROUP
        token_groups = self.geomim.encoder.token_groups(bool_masked_pos.long().to(c4.device), DECODER_STRIDE)

        reconstructions, depths = [], []
        for group in (0, 1):
            masked = token_groups != group  # the other group and the padding get the mask token
            bev, depth_logits = self.decode_group(c4, c5=c5, views=views, cameras=cameras, masked=masked,
                                                  token_groups=token_groups, intrinsics=intrinsics,
                                                  ego_from_camera=ego_from_camera,
                                                  processed_from_original=processed_from_original,
                                                  augmented_ego_from_ego=augmented_ego_from_ego)
            reconstructions.append(bev)
            depths.append(depth_logits)
        reconstruction = None if reconstructions[0] is None else torch.stack(reconstructions, 1)
        depth = None if depths[0] is None else torch.stack(depths, 1)  # (B, G, N, D, h, w)

        target = self.reconstruction_target(pixel_values, teacher_features)
        reconstruction_loss = depth_loss = loss = None
        if target is not None:
            reconstruction_loss = loss = self.reconstruction_loss(
                reconstruction, target, token_groups=token_groups, intrinsics=intrinsics,
                ego_from_camera=ego_from_camera, processed_from_original=processed_from_original,
                augmented_ego_from_ego=augmented_ego_from_ego)
        if depth_labels is not None:
            depth_loss = self.depth_loss(depth, depth_labels)
            weight = 1.0 if self.objective == "depth" else self.config.depth_loss_weight
            loss = weight * depth_loss if loss is None else loss + weight * depth_loss
        output = MaskedBEVModelingOutput(loss=loss, reconstruction_loss=reconstruction_loss, depth_loss=depth_loss,
                                         reconstruction=reconstruction, depth=depth, target=target,
                                         bool_masked_pos=bool_masked_pos)
        return output if return_dict else output.to_tuple()

    def reconstruction_target(self, pixel_values: torch.Tensor,
                              teacher_features: torch.Tensor | None = None) -> torch.Tensor | None:
        """The objective's target: ``geomim``, the patch-normalised teacher features (B, C_t, Y, X) (None
        without ``teacher_features``); ``pixel``, the normalised pixels of every token (B, N, h', w', P);
        ``depth``, None."""
        if self.objective == "pixel":
            return pixel_targets(pixel_values, self.decoder_grid, DECODER_STRIDE)
        if self.objective != "geomim" or teacher_features is None:
            return None
        expected = (pixel_values.shape[0], self.config.target_channels, *self.config.target_grid.size)
        if tuple(teacher_features.shape) != expected:
            raise ValueError(f"teacher_features has shape {tuple(teacher_features.shape)}, expected {expected} "
                             f"(target_channels and target_grid.size of the config)")
        return patch_normalize(teacher_features.float(), self.config.target_patch_size, self.config.target_norm_eps)

    def reconstruction_loss(self, reconstruction: torch.Tensor, target: torch.Tensor, token_groups: torch.Tensor,
                            intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego):
        """The reconstruction loss of both mask groups' predictions ``reconstruction`` (the output's) against
        ``target`` (:meth:`reconstruction_target`), averaged over the groups. ``pixel``: MSE over each group's
        masked tokens (never the padding). ``geomim``: MSE over all BEV cells and channels, or over the cells
        the group's masked tokens lift into (``reconstruction_region="masked"``; the cameras are for that).
        ``token_groups`` (h', w'): the group of each stride-16 token of the padded image."""
        if self.objective == "pixel":
            losses = []
            for group in (0, 1):
                masked = token_groups == 1 - group  # (h', w') the other group's cells, never the padding
                losses.append(F.mse_loss(reconstruction[:, group][:, :, masked].float(), target[:, :, masked]))
            return torch.stack(losses).mean()
        squared = (reconstruction.float() - target[:, None]) ** 2  # (B, G, C_t, Y, X)
        if self.config.reconstruction_region == "all":
            return squared.mean()
        region = torch.stack([self.masked_bev_region(token_groups != g, intrinsics=intrinsics,
                                                     ego_from_camera=ego_from_camera,
                                                     processed_from_original=processed_from_original,
                                                     augmented_ego_from_ego=augmented_ego_from_ego)
                              for g in (0, 1)], 1)
        return (squared * region).sum() / (region.sum() * squared.shape[2]).clamp(min=1)

    @torch.no_grad()
    def masked_bev_region(self, masked_tokens, intrinsics, ego_from_camera, processed_from_original,
                          augmented_ego_from_ego):
        """(B, 1, Y, X) float, 1 on the target-grid cells that some frustum point of a masked feature cell
        (``masked_tokens`` (h', w') of the padded image, True where masked) falls into, at any depth bin."""
        batch, views = intrinsics.shape[:2]
        height, width = self.feature_size
        indicator = masked_tokens[:height, :width].to(intrinsics.dtype)
        context = indicator.expand(batch, views, 1, height, width).contiguous()
        depth = torch.ones(batch, views, self.lift_splat.depth_bins.count, height, width, device=intrinsics.device,
                           dtype=intrinsics.dtype)
        hits = self.lift_splat(depth, context=context, intrinsics=intrinsics, ego_from_camera=ego_from_camera,
                               processed_from_original=processed_from_original,
                               augmented_ego_from_ego=augmented_ego_from_ego)
        return (F.max_pool2d(hits, self.config.bev_downsample) > 0).to(hits.dtype)

    def depth_loss(self, depth_logits: torch.Tensor, depth_labels: torch.Tensor) -> torch.Tensor:
        """BEVDepth's depth BCE: softmax over bins against one-hot bins, summed over bins, averaged over
        the pixels that have a depth, and over the groups. depth_logits (B, G, N, D, h, w); depth_labels
        (B, N, h, w) metres."""
        groups = depth_logits.shape[1]
        return torch.stack([depth_bce(depth_logits[:, g], depth_labels, self.config.pretraining_depth_bins)
                            for g in range(groups)]).mean()


class GeoMIMBEVPreTrainedModel(GeoMIMPreTrainedModel):
    """The camera-to-BEV trunk the BEV task models share (BEVDet4D/BEVDepth): the GeoMIM encoder, an image
    FPN, the camera-aware depth net with LiDAR depth supervision, Lift-Splat-Shoot onto ``detection_grid``,
    the previous keyframe's BEV alongside the current one (``det_temporal``) and a ResNet BEV encoder.
    A task model adds its head on :meth:`bev_features`.

    The previous keyframe is lifted through its own cameras placed in the current ego frame
    (``ego_from_prev_ego``), so its BEV lands aligned with the current one: the warp BEVDet4D does by
    resampling, done exactly at the frustum points. As BEVDet4D, it runs without gradients.
    """

    # The fixed-shape submodules (training.compile_regions); lifting and pooling stay eager.
    _compile_regions = ("geomim", "neck", "depth_net", "bev_encoder", "head")

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        self.geomim = GeoMIMModel(config)
        strides = [config.stage_strides[i] for i in config.out_indices]
        self.neck = ImageFPN([config.stage_dims[i] for i in config.out_indices], config.det_neck_channels)
        self.depth_net = CameraAwareDepthNet(config.det_neck_channels, config.det_depth_net_channels,
                                             num_bins=config.detection_depth_bins.count,
                                             context_channels=config.det_context_channels,
                                             camera_hidden_size=config.camera_aware_hidden_size)
        if config.image_size[0] % strides[0] or config.image_size[1] % strides[0]:
            raise ValueError(f"image_size {config.image_size} must be a multiple of the detector's feature stride "
                             f"{strides[0]} (the finest of out_indices {config.out_indices}), so that the features "
                             "cover the image exactly")
        self.lift_splat = LiftSplat(config.image_size, strides[0], depth_bins=config.detection_depth_bins,
                                    grid=config.detection_grid, kernel_backend=config.kernel_backend)
        frames = 2 if config.det_temporal else 1
        self.bev_encoder = BevEncoder(config.det_context_channels * frames, config.det_bev_encoder_channels,
                                      config.det_bev_neck_channels)
        self.grid = config.detection_grid  # the BEV encoder's output grid
        self.feature_stride = strides[0]

    def freeze_encoder(self) -> None:
        """Frozen-encoder probing: the encoder gets no gradients and stays in eval mode (no drop path),
        also after ``train()``; the rest of the model trains."""
        self.geomim.requires_grad_(False)
        self.encoder_frozen = True
        self.geomim.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "encoder_frozen", False):
            self.geomim.eval()
        return self

    def lift(self, pixel_values, intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego):
        """One frame's BEV (B, C, Y, X) and depth logits (B, N, D, h, w)."""
        features = self.geomim(pixel_values).feature_maps  # (B, N, C_s, H_s, W_s) per stage
        image = self.neck([f.flatten(0, 1) for f in features])  # (B*N, C, h, w) at the finest stage's stride
        cameras = camera_vector(intrinsics, processed_from_original, ego_from_camera).flatten(0, 1).to(image.dtype)
        return self.lift_splat.splat_views(*self.depth_net(image, cameras), intrinsics, ego_from_camera,
                                           processed_from_original, augmented_ego_from_ego)

    def bev_features(self, pixel_values, intrinsics, ego_from_camera, processed_from_original,
                     augmented_ego_from_ego=None, prev_pixel_values=None, prev_intrinsics=None,
                     prev_ego_from_camera=None, prev_processed_from_original=None, ego_from_prev_ego=None):
        """The BEV encoder's output (B, C, Y, X) on ``detection_grid`` and the current frame's depth logits
        (B, N, D, h, w). The arguments are the task models' forward's (see there)."""
        if augmented_ego_from_ego is None:
            augmented_ego_from_ego = torch.eye(4, device=pixel_values.device).expand(pixel_values.shape[0], 4, 4)
        bev, depth = self.lift(pixel_values, intrinsics=intrinsics, ego_from_camera=ego_from_camera,
                               processed_from_original=processed_from_original,
                               augmented_ego_from_ego=augmented_ego_from_ego)
        if self.config.det_temporal:
            if prev_pixel_values is None:
                previous = bev.detach()
            else:
                with torch.no_grad():
                    # (B, N, 4, 4) where the previous cameras were, in today's ego frame
                    ego_from_prev_camera = ego_from_prev_ego[:, None] @ prev_ego_from_camera
                    previous, _ = self.lift(prev_pixel_values, intrinsics=prev_intrinsics,
                                            ego_from_camera=ego_from_prev_camera,
                                            processed_from_original=prev_processed_from_original,
                                            augmented_ego_from_ego=augmented_ego_from_ego)
            bev = torch.cat([bev, previous], 1)
        return self.bev_encoder(bev), depth

    def add_depth_loss(self, output: ModelOutput, depth_labels: torch.Tensor) -> None:
        """BEVDepth's depth BCE of ``output.depth`` on the detector's bins as ``output.depth_loss``, added to
        ``output.loss`` with weight ``det_depth_loss_weight``."""
        output.depth_loss = depth_bce(output.depth, depth_labels, self.config.detection_depth_bins)
        weighted = self.config.det_depth_loss_weight * output.depth_loss
        output.loss = weighted if output.loss is None else output.loss + weighted

    def parameter_groups(self, learning_rate: float, weight_decay: float, layer_decay: float) -> list[dict]:
        """AdamW groups with layer-wise learning-rate decay over the encoder (the official finetuning:
        0.8 over the 24 Swin-B blocks): the last block trains at ``learning_rate * layer_decay``, each block
        before it at one more factor, the embeddings at the most; the rest of the detector at
        ``learning_rate``. Norms, biases and position tables get no weight decay."""
        depths = self.config.depths
        num_layers = sum(depths) + 1  # the embeddings, then every block

        def layer_of(name: str) -> int:
            if not name.startswith("geomim."):
                return num_layers
            parts = name.split(".")
            if parts[1] == "encoder" and parts[2] == "stages":
                stage = int(parts[3])
                if parts[4] == "blocks":
                    return 1 + sum(depths[:stage]) + int(parts[5])
                return 1 + sum(depths[:stage])  # patch merging sits with the stage's first block
            if parts[1] == "encoder":
                return 0
            return num_layers - 1  # output norms, encoder Cross-View Attention: with the last block

        groups: dict[tuple[int, bool], dict] = {}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            no_decay = parameter.ndim == 1 or name.endswith(("absolute_pos_embed", "relative_position_bias_table"))
            layer = layer_of(name)
            group = groups.setdefault((layer, no_decay), {
                "params": [], "weight_decay": 0.0 if no_decay else weight_decay,
                "lr": learning_rate * layer_decay ** (num_layers - layer), "layer": layer})
            group["params"].append(parameter)
        return list(groups.values())


class GeoMIMForBEVDetection(GeoMIMBEVPreTrainedModel):
    """A BEVDet4D/BEVDepth-style 3D detector on the GeoMIM encoder: the shared camera-to-BEV trunk
    (:class:`GeoMIMBEVPreTrainedModel`) and a CenterPoint head with attributes."""

    # The batch fields forward takes (collate_geomim keeps these).
    model_input_names = ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original",
                         "augmented_ego_from_ego", "prev_pixel_values", "prev_intrinsics",
                         "prev_ego_from_camera", "prev_processed_from_original", "ego_from_prev_ego", "boxes",
                         "velocities", "labels", "attributes", "box_mask", "depth_labels")

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        self.head = CenterHead(config.det_bev_neck_channels, len(config.class_names), config.det_head_channels,
                               num_attributes=len(ATTRIBUTE_NAMES))
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        intrinsics: torch.Tensor,
        ego_from_camera: torch.Tensor,
        processed_from_original: torch.Tensor,
        augmented_ego_from_ego: torch.Tensor | None = None,
        prev_pixel_values: torch.Tensor | None = None,
        prev_intrinsics: torch.Tensor | None = None,
        prev_ego_from_camera: torch.Tensor | None = None,
        prev_processed_from_original: torch.Tensor | None = None,
        ego_from_prev_ego: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        velocities: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        attributes: torch.Tensor | None = None,
        box_mask: torch.Tensor | None = None,
        depth_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        r"""
        pixel_values (B, N, 3, H, W), intrinsics and processed_from_original (B, N, 3, 3), ego_from_camera
        (B, N, 4, 4), augmented_ego_from_ego (B, 4, 4): the current keyframe, from the processor.
        prev_*: the previous keyframe's images and cameras (its own ego frame), and
        ego_from_prev_ego (B, 4, 4); without them the current frame stands in (a scene's first frame).
        Targets (ego frame, augmented like the images): boxes (B, K, 7), velocities (B, K, 2), labels
        and attributes (B, K), box_mask (B, K); depth_labels (B, N, h, w) LiDAR depth at the feature stride.
        """
        bev_features, depth = self.bev_features(
            pixel_values, intrinsics=intrinsics, ego_from_camera=ego_from_camera,
            processed_from_original=processed_from_original, augmented_ego_from_ego=augmented_ego_from_ego,
            prev_pixel_values=prev_pixel_values, prev_intrinsics=prev_intrinsics,
            prev_ego_from_camera=prev_ego_from_camera, prev_processed_from_original=prev_processed_from_original,
            ego_from_prev_ego=ego_from_prev_ego)
        head = self.head(bev_features)
        output = BEVDetectionOutput(heatmap=head["heatmap"], regression=head["regression"],
                                    attributes=head["attributes"], depth=depth, bev_features=bev_features)
        if boxes is not None:
            box_mask = torch.ones(labels.shape, dtype=torch.bool, device=labels.device) if box_mask is None else box_mask
            targets = build_targets(boxes.float(), velocities=velocities.float(), labels=labels, box_mask=box_mask,
                                    grid=self.grid, num_classes=len(self.config.class_names), attributes=attributes)
            terms = center_loss(head, targets)
            output.heatmap_loss, output.regression_loss = terms["heatmap_loss"], terms["regression_loss"]
            output.attribute_loss = terms.get("attribute_loss")
            output.loss = terms["loss"]
        if depth_labels is not None:
            self.add_depth_loss(output, depth_labels)
        return output if return_dict else output.to_tuple()

    def post_process(self, outputs: BEVDetectionOutput, score_threshold: float | None = None,
                     top_k: int | None = None) -> list[dict[str, torch.Tensor]]:
        """Per sample, ego-frame ``boxes`` (P, 7) ``(x, y, z, l, w, h, yaw)``, ``scores``, ``labels``,
        ``velocities`` (P, 2) and ``attributes`` (P,) ids into ``ATTRIBUTE_NAMES``: peaks of the heatmap,
        top-k, the score threshold, then per-class circle NMS with CenterPoint's radii."""
        radius = {i: NMS_RADIUS.get(name, 0.0) for i, name in enumerate(self.config.class_names)}
        heads = {"heatmap": outputs.heatmap, "regression": outputs.regression, "attributes": outputs.attributes}
        return decode(heads, grid=self.grid, top_k=top_k or self.config.det_max_detections,
                      score_threshold=self.config.det_score_threshold if score_threshold is None else score_threshold,
                      nms_radius=radius)


class GeoMIMForBEVSegmentation(GeoMIMBEVPreTrainedModel):
    """A BEV map segmenter on the GeoMIM encoder (BEVFusion's camera-only protocol): the shared
    camera-to-BEV trunk (:class:`GeoMIMBEVPreTrainedModel`, the detector's), then BEVFusion's head, which
    resamples the BEV onto ``segmentation_grid`` (200 x 200 at 0.5 m) and predicts one sigmoid logit per
    map class (``seg_class_names``; multi-label), trained with the sigmoid focal loss."""

    model_input_names = ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original",
                         "augmented_ego_from_ego", "prev_pixel_values", "prev_intrinsics",
                         "prev_ego_from_camera", "prev_processed_from_original", "ego_from_prev_ego", "map_masks",
                         "depth_labels")

    def __init__(self, config: GeoMIMConfig):
        super().__init__(config)
        self.head = MapSegmentationHead(config.det_bev_neck_channels, config.seg_head_channels,
                                        len(config.seg_class_names), source_grid=config.detection_grid,
                                        target_grid=config.segmentation_grid)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        intrinsics: torch.Tensor,
        ego_from_camera: torch.Tensor,
        processed_from_original: torch.Tensor,
        augmented_ego_from_ego: torch.Tensor | None = None,
        prev_pixel_values: torch.Tensor | None = None,
        prev_intrinsics: torch.Tensor | None = None,
        prev_ego_from_camera: torch.Tensor | None = None,
        prev_processed_from_original: torch.Tensor | None = None,
        ego_from_prev_ego: torch.Tensor | None = None,
        map_masks: torch.Tensor | None = None,
        depth_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ):
        r"""
        The cameras and the previous keyframe as :meth:`GeoMIMForBEVDetection.forward`.
        map_masks (B, K, Y, X) bool: the map classes on ``segmentation_grid`` in the augmented ego frame
        (``load_nuscenes(..., map_masks=True)``); depth_labels (B, N, h, w) LiDAR depth at the feature stride.
        """
        bev_features, depth = self.bev_features(
            pixel_values, intrinsics=intrinsics, ego_from_camera=ego_from_camera,
            processed_from_original=processed_from_original, augmented_ego_from_ego=augmented_ego_from_ego,
            prev_pixel_values=prev_pixel_values, prev_intrinsics=prev_intrinsics,
            prev_ego_from_camera=prev_ego_from_camera, prev_processed_from_original=prev_processed_from_original,
            ego_from_prev_ego=ego_from_prev_ego)
        output = BEVSegmentationOutput(logits=self.head(bev_features), depth=depth, bev_features=bev_features)
        if map_masks is not None:
            output.segmentation_loss = map_focal_loss(output.logits, map_masks, alpha=self.config.seg_focal_alpha,
                                                      gamma=self.config.seg_focal_gamma)
            output.loss = output.segmentation_loss
        if depth_labels is not None:
            self.add_depth_loss(output, depth_labels)
        return output if return_dict else output.to_tuple()

    def post_process(self, outputs: BEVSegmentationOutput) -> torch.Tensor:
        """Per-class probabilities (B, K, Y, X) in [0, 1] on ``segmentation_grid``."""
        return outputs.logits.float().sigmoid()


def load_bev_model(folder: str, **kwargs) -> GeoMIMBEVPreTrainedModel:
    """The detector or segmenter saved in ``folder`` (a path or hub id), by its config's ``architectures``;
    ``kwargs`` go to ``from_pretrained`` (config overrides among them)."""
    from transformers import AutoConfig

    models = {cls.__name__: cls for cls in (GeoMIMForBEVDetection, GeoMIMForBEVSegmentation)}
    architectures = AutoConfig.from_pretrained(folder).architectures or []
    known = [name for name in architectures if name in models]
    if not known:
        raise ValueError(f"{folder}: config.json's architectures {architectures} name no BEV task model; expected one "
                         f"of {sorted(models)}")
    return models[known[0]].from_pretrained(folder, **kwargs)
