"""GeoMIM configuration: the single source of every hyperparameter.

Defaults follow the official GeoMIM pretraining code with a Swin-B encoder (``geomim-swin-b``);
:data:`PRESETS` holds the other named settings. Widths are derived, never typed twice.
"""

from __future__ import annotations

import os

from transformers import PreTrainedConfig

from .data.classes import MAP_CLASSES, NUSCENES_DETECTION_CLASSES
from .modeling.grids import BevGrid, DepthBins


PRETRAIN_OBJECTIVES = ("geomim", "pixel", "depth")


class GeoMIMConfig(PreTrainedConfig):
    r"""
    Args:
        image_size (`tuple[int, int]`, defaults to `(256, 704)`): input height and width per view.
        num_views (`int`, defaults to 6): cameras per sample.
        num_channels (`int`, defaults to 3): image channels.
        patch_size (`int`, defaults to 4): Swin patch size.
        embed_dim (`int`, defaults to 128): Swin stage-1 width; stage ``i`` has ``embed_dim * 2**i``.
        depths (`tuple[int, ...]`, defaults to `(2, 2, 18, 2)`): Swin blocks per stage.
        num_heads (`tuple[int, ...]`, defaults to `(4, 8, 16, 32)`): attention heads per stage.
        window_size (`tuple[int, ...]`, defaults to `(16, 16, 16, 8)`): attention window per stage.
        mlp_ratio (`float`, defaults to 4.0): MLP width over the block width.
        qkv_bias (`bool`, defaults to `True`): bias in the attention projections.
        shifted_windows (`bool`, defaults to `False`): alternate shifted windows as timm / the original
            Swin; the official GeoMIM encoder uses none.
        use_absolute_position_embeddings (`bool`, defaults to `True`): an absolute position embedding
            of ``absolute_position_embedding_size`` tokens, resized bicubically to the token grid.
        absolute_position_embedding_size (`tuple[int, int]`, defaults to `(56, 56)`).
        drop_path_rate (`float`, defaults to 0.0): stochastic depth at the last block (0 in
            pretraining, 0.2 in the official finetuning).
        layer_norm_eps (`float`, defaults to 1e-5).
        encoder_cross_view_stages (`tuple[int, ...]`, defaults to `()`): encoder stages followed by a
            Cross-View Attention block (the abstract's reading; the official code has none).
        out_indices (`tuple[int, ...]`, defaults to `(2, 3)`): encoder stages returned (strides 16, 32).
        mask_ratio (`float`, defaults to 0.5): share of the cells of the first mask group.
        mask_cell_size (`int`, defaults to 32): masking cell in pixels; patch embedding and merging
            never cross a cell. Images are padded at the right and bottom to whole cells.
        decoder_hidden_size (`int`, defaults to 512), decoder_num_layers (`int`, defaults to 8),
        decoder_num_heads (`int`, defaults to 16): the ViT decoder at stride 16.
        decoder_neck_window_size (`int`, defaults to 7): window of the Swin block in the decoder neck.
        decoder_cross_view_layers (`tuple[int, ...]`, defaults to `(1, 5)`): decoder blocks followed by
            Cross-View Attention.
        depth_branch_start_layer (`int`, defaults to 3): decoder block whose output feeds the depth branch.
        depth_branch_num_layers (`int`, defaults to 4): ViT blocks of the depth branch.
        depth_branch_cross_view_layers (`tuple[int, ...]`, defaults to `(1,)`): depth blocks followed by
            Cross-View Attention (the official decoder: after the second of the four).
        decoder_depth_branch (`bool`, defaults to `True`): the camera-aware depth branch; without it
            (the ablation) the depth net reads the semantic features alone.
        camera_aware_hidden_size (`int`, defaults to 512): width of the camera-aware MLP on the
            22-number camera vector.
        depth_bins (`tuple[float, float, float]`, defaults to `(1.0, 60.0, 0.5)`): start, stop
            (exclusive) and step of the depth bins in metres.
        context_channels (`int`, defaults to 80): channels lifted to BEV.
        depth_net_channels (`int`, defaults to 512): width of the depth net's convolutions.
        bev_x_range, bev_y_range (`tuple[float, float]`, defaults to `(-54.0, 54.0)`): BEV extent in the
            ego frame, metres.
        bev_z_range (`tuple[float, float]`, defaults to `(-10.0, 10.0)`): the single height bin.
        bev_resolution (`float`, defaults to 0.3): metres per BEV cell of the pooling grid.
        bev_downsample (`int`, defaults to 2): stride from the pooling grid to the target grid.
        target_channels (`int`, defaults to 256): channels of the LiDAR teacher's BEV features.
        target_patch_size (`int`, defaults to 18): BEV cells per side of a normalisation patch.
        target_norm_eps (`float`, defaults to 1e-6): variance epsilon of the patch normalisation.
        depth_loss_weight (`float`, defaults to 0.01): weight of the depth BCE next to the BEV MSE.
        pretrain_objective (`str`, defaults to `"geomim"`): what masked modeling predicts: `"geomim"`
            (the teacher's BEV features through Lift-Splat, plus the depth BCE), `"pixel"` (MixMAE's
            baseline: patch-normalised pixels of the masked cells) or `"depth"` (the LiDAR depth maps
            alone, no teacher).
        reconstruction_region (`str`, defaults to `"all"`): BEV cells the GeoMIM MSE covers: `"all"`
            (official) or `"masked"`, the cells each group's masked image cells lift into (ablation).
        class_names (`tuple[str, ...]`): detection classes, nuScenes' ten by default.
        det_depth_bins (`tuple[float, float, float]`, defaults to `(1.0, 60.0, 1.0)`): the detector's depth bins.
        det_context_channels (`int`, defaults to 80), det_depth_net_channels (`int`, defaults to 256),
        det_neck_channels (`int`, defaults to 256): the detector's lift and image neck widths.
        det_bev_x_range, det_bev_y_range (`tuple[float, float]`, defaults to `(-51.2, 51.2)`),
        det_bev_z_range (`tuple[float, float]`, defaults to `(-5.0, 3.0)`), det_bev_resolution (`float`,
            defaults to 0.8): the detector's BEV grid (128 x 128 officially).
        det_bev_encoder_channels (`tuple[int, int, int]`, defaults to `(160, 320, 640)`),
        det_bev_neck_channels (`int`, defaults to 256), det_head_channels (`int`, defaults to 64):
            BEV encoder, its FPN and the CenterPoint head.
        det_temporal (`bool`, defaults to `True`): BEVDet4D, the previous keyframe's BEV alongside.
        det_depth_loss_weight (`float`, defaults to 3.0): BEVDepth's weight of the depth BCE.
        det_score_threshold (`float`, defaults to 0.1), det_max_detections (`int`, defaults to 500).
        seg_class_names (`tuple[str, ...]`): map classes of the BEV segmenter, BEVFusion's six by default.
        seg_bev_x_range, seg_bev_y_range (`tuple[float, float]`, defaults to `(-50.0, 50.0)`),
        seg_bev_resolution (`float`, defaults to 0.5): the segmenter's output grid (200 x 200, BEVFusion's).
        seg_head_channels (`int`, defaults to 256): width of the segmentation head's convolutions.
        seg_focal_alpha (`float`, defaults to 0.25), seg_focal_gamma (`float`, defaults to 2.0): its sigmoid
            focal loss (BEVFusion's).
        kernel_backend (`str`, defaults to `"auto"`): BEV pooling kernels, `"auto"`, `"torch"` or `"triton"`.
        initializer_range (`float`, defaults to 0.02): std of the truncated normal initialiser.
    """

    model_type = "geomim"

    def __init__(
        self,
        image_size: tuple[int, int] = (256, 704),
        num_views: int = 6,
        num_channels: int = 3,
        patch_size: int = 4,
        embed_dim: int = 128,
        depths: tuple[int, ...] = (2, 2, 18, 2),
        num_heads: tuple[int, ...] = (4, 8, 16, 32),
        window_size: tuple[int, ...] = (16, 16, 16, 8),
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        shifted_windows: bool = False,
        use_absolute_position_embeddings: bool = True,
        absolute_position_embedding_size: tuple[int, int] = (56, 56),
        drop_path_rate: float = 0.0,
        layer_norm_eps: float = 1e-5,
        encoder_cross_view_stages: tuple[int, ...] = (),
        out_indices: tuple[int, ...] = (2, 3),
        mask_ratio: float = 0.5,
        mask_cell_size: int = 32,
        decoder_hidden_size: int = 512,
        decoder_num_layers: int = 8,
        decoder_num_heads: int = 16,
        decoder_neck_window_size: int = 7,
        decoder_cross_view_layers: tuple[int, ...] = (1, 5),
        depth_branch_start_layer: int = 3,
        depth_branch_num_layers: int = 4,
        depth_branch_cross_view_layers: tuple[int, ...] = (1,),
        decoder_depth_branch: bool = True,
        camera_aware_hidden_size: int = 512,
        depth_bins: tuple[float, float, float] = (1.0, 60.0, 0.5),
        context_channels: int = 80,
        depth_net_channels: int = 512,
        bev_x_range: tuple[float, float] = (-54.0, 54.0),
        bev_y_range: tuple[float, float] = (-54.0, 54.0),
        bev_z_range: tuple[float, float] = (-10.0, 10.0),
        bev_resolution: float = 0.3,
        bev_downsample: int = 2,
        target_channels: int = 256,
        target_patch_size: int = 18,
        target_norm_eps: float = 1e-6,
        depth_loss_weight: float = 0.01,
        pretrain_objective: str = "geomim",
        reconstruction_region: str = "all",
        class_names: tuple[str, ...] = NUSCENES_DETECTION_CLASSES,
        det_depth_bins: tuple[float, float, float] = (1.0, 60.0, 1.0),
        det_context_channels: int = 80,
        det_depth_net_channels: int = 256,
        det_neck_channels: int = 256,
        det_bev_x_range: tuple[float, float] = (-51.2, 51.2),
        det_bev_y_range: tuple[float, float] = (-51.2, 51.2),
        det_bev_z_range: tuple[float, float] = (-5.0, 3.0),
        det_bev_resolution: float = 0.8,
        det_bev_encoder_channels: tuple[int, int, int] = (160, 320, 640),
        det_bev_neck_channels: int = 256,
        det_head_channels: int = 64,
        det_temporal: bool = True,
        det_depth_loss_weight: float = 3.0,
        det_score_threshold: float = 0.1,
        det_max_detections: int = 500,
        seg_class_names: tuple[str, ...] = MAP_CLASSES,
        seg_bev_x_range: tuple[float, float] = (-50.0, 50.0),
        seg_bev_y_range: tuple[float, float] = (-50.0, 50.0),
        seg_bev_resolution: float = 0.5,
        seg_head_channels: int = 256,
        seg_focal_alpha: float = 0.25,
        seg_focal_gamma: float = 2.0,
        kernel_backend: str = "auto",
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.image_size = tuple(image_size)
        self.num_views = num_views
        self.num_channels = num_channels
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depths = tuple(depths)
        self.num_heads = tuple(num_heads)
        self.window_size = tuple(window_size)
        self.mlp_ratio = mlp_ratio
        self.qkv_bias = qkv_bias
        self.shifted_windows = shifted_windows
        self.use_absolute_position_embeddings = use_absolute_position_embeddings
        self.absolute_position_embedding_size = tuple(absolute_position_embedding_size)
        self.drop_path_rate = drop_path_rate
        self.layer_norm_eps = layer_norm_eps
        self.encoder_cross_view_stages = tuple(encoder_cross_view_stages)
        self.out_indices = tuple(out_indices)
        self.mask_ratio = mask_ratio
        self.mask_cell_size = mask_cell_size
        self.decoder_hidden_size = decoder_hidden_size
        self.decoder_num_layers = decoder_num_layers
        self.decoder_num_heads = decoder_num_heads
        self.decoder_neck_window_size = decoder_neck_window_size
        self.decoder_cross_view_layers = tuple(decoder_cross_view_layers)
        self.depth_branch_start_layer = depth_branch_start_layer
        self.depth_branch_num_layers = depth_branch_num_layers
        self.depth_branch_cross_view_layers = tuple(depth_branch_cross_view_layers)
        self.decoder_depth_branch = decoder_depth_branch
        self.camera_aware_hidden_size = camera_aware_hidden_size
        self.depth_bins = tuple(float(v) for v in depth_bins)
        self.context_channels = context_channels
        self.depth_net_channels = depth_net_channels
        self.bev_x_range = tuple(float(v) for v in bev_x_range)
        self.bev_y_range = tuple(float(v) for v in bev_y_range)
        self.bev_z_range = tuple(float(v) for v in bev_z_range)
        self.bev_resolution = float(bev_resolution)
        self.bev_downsample = bev_downsample
        self.target_channels = target_channels
        self.target_patch_size = target_patch_size
        self.target_norm_eps = target_norm_eps
        self.depth_loss_weight = depth_loss_weight
        self.pretrain_objective = pretrain_objective
        self.reconstruction_region = reconstruction_region
        self.class_names = tuple(class_names)
        self.det_depth_bins = tuple(float(v) for v in det_depth_bins)
        self.det_context_channels = det_context_channels
        self.det_depth_net_channels = det_depth_net_channels
        self.det_neck_channels = det_neck_channels
        self.det_bev_x_range = tuple(float(v) for v in det_bev_x_range)
        self.det_bev_y_range = tuple(float(v) for v in det_bev_y_range)
        self.det_bev_z_range = tuple(float(v) for v in det_bev_z_range)
        self.det_bev_resolution = float(det_bev_resolution)
        self.det_bev_encoder_channels = tuple(det_bev_encoder_channels)
        self.det_bev_neck_channels = det_bev_neck_channels
        self.det_head_channels = det_head_channels
        self.det_temporal = det_temporal
        self.det_depth_loss_weight = det_depth_loss_weight
        self.det_score_threshold = det_score_threshold
        self.det_max_detections = det_max_detections
        self.seg_class_names = tuple(seg_class_names)
        self.seg_bev_x_range = tuple(float(v) for v in seg_bev_x_range)
        self.seg_bev_y_range = tuple(float(v) for v in seg_bev_y_range)
        self.seg_bev_resolution = float(seg_bev_resolution)
        self.seg_head_channels = seg_head_channels
        self.seg_focal_alpha = seg_focal_alpha
        self.seg_focal_gamma = seg_focal_gamma
        self.kernel_backend = kernel_backend
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self.validate_geometry()

    # Derived values -------------------------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.depths)

    @property
    def stage_dims(self) -> tuple[int, ...]:
        """Encoder width per stage."""
        return tuple(self.embed_dim * 2**i for i in range(self.num_stages))

    @property
    def stage_strides(self) -> tuple[int, ...]:
        return tuple(self.patch_size * 2**i for i in range(self.num_stages))

    @property
    def pretraining_depth_bins(self) -> DepthBins:
        """The depth bins the pretraining decoder predicts and lifts with (``depth_bins``)."""
        return DepthBins(*self.depth_bins)

    @property
    def detection_depth_bins(self) -> DepthBins:
        """The detector's depth bins (``det_depth_bins``)."""
        return DepthBins(*self.det_depth_bins)

    @property
    def pretraining_grid(self) -> BevGrid:
        """The pretraining Lift-Splat pooling grid (``bev_*``)."""
        return BevGrid(self.bev_x_range, self.bev_y_range, self.bev_resolution, self.bev_z_range)

    @property
    def target_grid(self) -> BevGrid:
        """The LiDAR teacher's target grid: the pooling grid coarsened by ``bev_downsample``."""
        return self.pretraining_grid.coarsened(self.bev_downsample)

    @property
    def detection_grid(self) -> BevGrid:
        """The detector's Lift-Splat grid, which is also its head's output grid (``det_bev_*``)."""
        return BevGrid(self.det_bev_x_range, self.det_bev_y_range, self.det_bev_resolution, self.det_bev_z_range)

    @property
    def segmentation_grid(self) -> BevGrid:
        """The BEV segmenter's output grid (``seg_bev_*``), on which its map masks are drawn."""
        return BevGrid(self.seg_bev_x_range, self.seg_bev_y_range, self.seg_bev_resolution)

    def check_teacher(self, teacher: str, grid: BevGrid, channels: int) -> None:
        """Fail, naming the fields, unless a teacher's BEV map (its ego-frame ``grid``, ``channels``) is this
        student's target grid. ``teacher`` names it in the message."""
        problems, target = [], self.target_grid
        if (grid.x_range, grid.y_range) != (target.x_range, target.y_range):
            problems.append(f"extent x {grid.x_range} y {grid.y_range} vs the student's bev_x_range "
                            f"{self.bev_x_range} bev_y_range {self.bev_y_range}")
        if abs(grid.resolution - target.resolution) > 1e-6:
            problems.append(f"target cell {grid.resolution:g} m vs the student's {target.resolution:g} m "
                            "(bev_resolution x bev_downsample)")
        if channels != self.target_channels:
            problems.append(f"target channels {channels} vs the student's target_channels {self.target_channels}")
        if problems:
            raise ValueError(f"{teacher} does not fit the student: " + "; ".join(problems))

    def validate_geometry(self) -> None:
        """Fail early, naming the field, on settings the networks cannot realise."""
        stages = self.num_stages
        for name in ("num_heads", "window_size"):
            if len(getattr(self, name)) != stages:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {stages} stages (depths)")
        if self.mask_cell_size % self.stage_strides[-1]:
            raise ValueError(f"mask_cell_size {self.mask_cell_size} must be a multiple of the deepest encoder stride "
                             f"{self.stage_strides[-1]}, so that patch merging never crosses a masking cell")
        if not 0.0 < self.mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {self.mask_ratio}")
        if self.kernel_backend not in ("auto", "torch", "triton"):
            raise ValueError(f"kernel_backend must be 'auto', 'torch' or 'triton', got {self.kernel_backend!r}")
        if self.pretrain_objective not in PRETRAIN_OBJECTIVES:
            raise ValueError(f"pretrain_objective must be one of {PRETRAIN_OBJECTIVES}, got {self.pretrain_objective!r}")
        if self.reconstruction_region not in ("all", "masked"):
            raise ValueError(f"reconstruction_region must be 'all' or 'masked', got {self.reconstruction_region!r}")
        for name in ("depth_bins", "det_depth_bins"):
            try:
                DepthBins(*getattr(self, name))
            except (TypeError, ValueError) as error:
                raise ValueError(f"{name}: {error}") from None
        grid_size = self.pretraining_grid.size
        for y_or_x, size in zip("YX", grid_size):
            if size % self.bev_downsample:
                raise ValueError(f"BEV grid {grid_size} ({y_or_x}) must be divisible by bev_downsample "
                                 f"{self.bev_downsample}")
        target_y, target_x = self.target_grid.size
        if target_y % self.target_patch_size or target_x % self.target_patch_size:
            raise ValueError(f"target grid {(target_y, target_x)} must be divisible by target_patch_size "
                             f"{self.target_patch_size}")

    def finetuning_fields(self) -> dict:
        """The fields of the finetuned models' own parts (``det_*``: the detector's neck, depth net, BEV grid,
        head and loss; ``seg_*``: the segmenter's head), which a pretraining checkpoint does not use: what a
        finetuning may take from a preset instead (``finetune_detection.py --head-config``)."""
        return {name: getattr(self, name) for name in self.to_dict() if name.startswith(("det_", "seg_"))}

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GeoMIMConfig":
        """A named setting: ``geomim-swin-b`` (official), ``geomim-swin-l``, ``geomim-swin-t``,
        ``geomim-tiny`` (a few million parameters, small images and grid, for tests and the quickstart) or
        ``geomim-small`` (the tiny networks at 128 x 352, for the CPU study)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_preset_or_folder(cls, name: str) -> "GeoMIMConfig":
        """What the scripts' ``--model-config``/``--config`` take: a folder holding ``config.json``, else a
        preset name."""
        return cls.from_pretrained(name) if os.path.isdir(name) else cls.from_preset(name)


PRESETS: dict[str, dict] = {
    "geomim-swin-b": {},
    "geomim-swin-l": {"embed_dim": 192, "num_heads": (6, 12, 24, 48)},
    "geomim-swin-t": {"embed_dim": 96, "depths": (2, 2, 6, 2), "num_heads": (3, 6, 12, 24)},
    "geomim-tiny": {
        "image_size": (64, 176), "embed_dim": 32, "depths": (1, 1, 2, 1), "num_heads": (1, 2, 4, 8),
        "window_size": (4, 4, 4, 2), "absolute_position_embedding_size": (16, 44), "decoder_hidden_size": 128,
        "decoder_num_layers": 4, "decoder_num_heads": 4, "decoder_neck_window_size": 4,
        "decoder_cross_view_layers": (1,), "depth_branch_start_layer": 1, "depth_branch_num_layers": 2,
        "depth_branch_cross_view_layers": (0,),
        "camera_aware_hidden_size": 64, "depth_bins": (1.0, 60.0, 2.0), "context_channels": 32,
        "depth_net_channels": 64, "bev_x_range": (-51.2, 51.2), "bev_y_range": (-51.2, 51.2),
        "bev_resolution": 1.6, "target_channels": 64, "target_patch_size": 8,
        "det_depth_bins": (1.0, 60.0, 2.0), "det_context_channels": 32, "det_depth_net_channels": 64,
        "det_neck_channels": 64, "det_bev_resolution": 1.6, "det_bev_encoder_channels": (32, 64, 128),
        "det_bev_neck_channels": 64, "det_head_channels": 32, "seg_head_channels": 32,
    },
}
# The CPU study's preset: geomim-tiny at 128 x 352, the smallest setting at which a camera detector learned on
# held-out synthetic scenes (docs/study_cpu); its detector reads stride 8 too (out_indices 1, 2, 3) for the
# official count of 16 x 44 rays per view, while pretraining decodes strides 16 and 32.
PRESETS["geomim-small"] = {**PRESETS["geomim-tiny"], "image_size": (128, 352),
                           "absolute_position_embedding_size": (32, 88)}
