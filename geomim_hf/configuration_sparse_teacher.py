"""Configuration of BEVFusion's TransFusion-L sparse LiDAR teacher (:mod:`.modeling_sparse_teacher`);
loads without spconv."""

from __future__ import annotations

from transformers import PretrainedConfig

from .configuration_geomim import GeoMIMConfig
from .modeling.grids import BevGrid
from .modeling.sparse_encoder import SparseEncoder, grid_shape

# BEVFusion's TransFusion-L (configs/nuscenes/det/transfusion/secfpn/lidar/voxelnet_0p075.yaml).
OFFICIAL_ENCODER_CHANNELS = ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128))
OFFICIAL_DOWNSAMPLE_PADDINGS = (1, 1, (1, 1, 0))


def _padding(value):
    return int(value) if isinstance(value, (int, float)) else tuple(int(v) for v in value)


class GeoMIMSparseTeacherConfig(PretrainedConfig):
    r"""
    Defaults are BEVFusion's LiDAR-only TransFusion-L (the official GeoMIM teacher) on the
    ``geomim-swin-b`` student's target grid.

    Args:
        point_cloud_range (`tuple[float, ...]`, defaults to `(-54, -54, -5, 54, 54, 3)`): x_min, y_min,
            z_min, x_max, y_max, z_max of the voxel grid, metres in the LiDAR frame.
        voxel_size (`tuple[float, float, float]`, defaults to `(0.075, 0.075, 0.2)`): metres, x, y, z.
        sparse_shape (`tuple[int, int, int]`, defaults to `(1440, 1440, 41)`): (X, Y, Z) of the sparse
            tensor. BEVFusion gives it explicitly, one z cell more than the 40 voxels of [-5, 3] m (SECOND's
            convention); that extra cell is what leaves 2 z cells, hence 256 channels, after the encoder.
        max_points_per_voxel (`int`, defaults to 10), max_voxels (`int`, defaults to 160000): hard
            voxelization's limits (BEVFusion's test-time value, used by the frozen teacher).
        in_channels (`int`, defaults to 5): point features averaged per voxel (x, y, z, intensity, time lag).
        base_channels (`int`, defaults to 16): the stem's width.
        output_channels (`int`, defaults to 128): the last conv's width; times the z cells left (2) it
            gives ``target_channels``.
        encoder_channels (`tuple[tuple[int, ...], ...]`): per stage, basic-block widths then (all but
            the last stage) the stride-2 conv's width.
        downsample_paddings (`tuple`, defaults to `(1, 1, (1, 1, 0))`): padding of each stride-2 conv,
            int or (x, y, z); BEVFusion's ``encoder_paddings[i][-1]``.
        norm_eps (`float`, defaults to 1e-3), norm_momentum (`float`, defaults to 0.01): BatchNorm1d's.
        x_range, y_range (`tuple[float, float]`, defaults to `(-54.0, 54.0)`): the ego-frame grid the
            features are resampled onto, at the encoder's output cell (the student's target grid).
    """

    model_type = "geomim_sparse_teacher"

    def __init__(self, point_cloud_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0), voxel_size=(0.075, 0.075, 0.2),
                 sparse_shape=(1440, 1440, 41), max_points_per_voxel=10, max_voxels=160000, in_channels=5,
                 base_channels=16, output_channels=128, encoder_channels=OFFICIAL_ENCODER_CHANNELS,
                 downsample_paddings=OFFICIAL_DOWNSAMPLE_PADDINGS, norm_eps=1e-3, norm_momentum=0.01,
                 x_range=(-54.0, 54.0), y_range=(-54.0, 54.0), **kwargs):
        self.point_cloud_range = tuple(float(v) for v in point_cloud_range)
        self.voxel_size = tuple(float(v) for v in voxel_size)
        self.sparse_shape = tuple(int(v) for v in sparse_shape)
        self.max_points_per_voxel, self.max_voxels = int(max_points_per_voxel), int(max_voxels)
        self.in_channels, self.base_channels, self.output_channels = in_channels, base_channels, output_channels
        self.encoder_channels = tuple(tuple(int(c) for c in stage) for stage in encoder_channels)
        self.downsample_paddings = tuple(_padding(p) for p in downsample_paddings)  # JSON gives lists back
        self.norm_eps, self.norm_momentum = float(norm_eps), float(norm_momentum)
        self.x_range, self.y_range = tuple(float(v) for v in x_range), tuple(float(v) for v in y_range)
        super().__init__(**kwargs)
        self._validate()

    def _validate(self) -> None:
        if len(self.point_cloud_range) != 6 or len(self.voxel_size) != 3:
            raise ValueError(f"point_cloud_range needs 6 numbers and voxel_size 3, got {self.point_cloud_range} and "
                             f"{self.voxel_size}")
        for i, (axis, voxels, sites) in enumerate(zip("xyz", self.voxel_grid_shape, self.sparse_shape)):
            extent = self.point_cloud_range[3 + i] - self.point_cloud_range[i]
            if voxels <= 0 or abs(voxels * self.voxel_size[i] - extent) > 1e-6:
                raise ValueError(f"point_cloud_range {axis} extent {extent} m is not a whole number of "
                                 f"voxel_size {self.voxel_size[i]} m voxels")
            if sites < voxels:
                raise ValueError(f"sparse_shape {self.sparse_shape} is smaller than the {self.voxel_grid_shape} voxels "
                                 f"of point_cloud_range along {axis}")
        if self.voxel_size[0] != self.voxel_size[1]:
            raise ValueError(f"voxel_size x and y must be equal for square BEV cells, got {self.voxel_size}")
        if len(self.downsample_paddings) != len(self.encoder_channels) - 1:
            raise ValueError(f"downsample_paddings needs one entry per stage but the last "
                             f"({len(self.encoder_channels) - 1}), got {self.downsample_paddings}")
        out_x, out_y, out_z = self.encoder_output_shape
        cell = self.target_resolution
        for axis, count, i in (("x", out_x, 0), ("y", out_y, 1)):
            extent = self.point_cloud_range[3 + i] - self.point_cloud_range[i]
            if abs(count * cell - extent) > 1e-6:
                raise ValueError(f"the encoder's {count} output cells of {cell} m along {axis} do not tile "
                                 f"point_cloud_range's {extent} m (choose sizes divisible by the stride "
                                 f"{2 ** (len(self.encoder_channels) - 1)})")
        if out_z <= 0:
            raise ValueError(f"no z cells left after the encoder ({self.sparse_shape[2]} voxels in z): enlarge the "
                             "z range or shrink voxel_size z")
        for name, extent in (("x_range", self.x_range), ("y_range", self.y_range)):
            cells = (extent[1] - extent[0]) / cell
            if abs(cells - round(cells)) > 1e-6 or cells <= 0:
                raise ValueError(f"{name} {extent} is not a whole number of the encoder's {cell} m output cells")

    @property
    def voxel_grid_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) voxels of point_cloud_range: (1440, 1440, 40) for the official settings."""
        return grid_shape(self.point_cloud_range, self.voxel_size)

    @property
    def encoder_output_shape(self) -> tuple[int, int, int]:
        """(X, Y, Z) cells of the encoder's output: (180, 180, 2) for the official settings."""
        return SparseEncoder.compute_output_shape(self.sparse_shape, len(self.encoder_channels),
                                                  self.downsample_paddings)

    @property
    def target_channels(self) -> int:
        return self.output_channels * self.encoder_output_shape[2]

    @property
    def target_resolution(self) -> float:
        """Metres per output cell: the voxel size times the stride (0.075 x 8 = 0.6 m)."""
        return self.voxel_size[0] * 2 ** (len(self.encoder_channels) - 1)

    @property
    def lidar_grid(self) -> BevGrid:
        """The encoder's output grid in the LiDAR frame: point_cloud_range's x, y at the output cell."""
        pcr = self.point_cloud_range
        return BevGrid((pcr[0], pcr[3]), (pcr[1], pcr[4]), self.target_resolution)

    @property
    def target_grid(self) -> BevGrid:
        """The ego-frame grid of ``bev_features``, the student's target."""
        return BevGrid(self.x_range, self.y_range, self.target_resolution)

    @classmethod
    def for_student(cls, student: GeoMIMConfig, **overrides):
        """A teacher whose output lands on the student's target grid: the voxel's x, y size is the target
        cell over the stride and the LiDAR range is the student's extent (a fresh, small teacher for tests
        and synthetic data; the official weights come with the defaults). ``overrides``: other fields, and
        ``z_range`` (metres, default (-5, 3)) and ``voxel_size_z`` (default 0.2)."""
        num_stages = len(overrides.get("encoder_channels", OFFICIAL_ENCODER_CHANNELS))
        cell = student.bev_resolution * student.bev_downsample
        z_min, z_max = overrides.pop("z_range", (-5.0, 3.0))
        voxel_z = overrides.pop("voxel_size_z", 0.2)
        voxel_xy = cell / 2 ** (num_stages - 1)
        kwargs = {"point_cloud_range": (student.bev_x_range[0], student.bev_y_range[0], z_min, student.bev_x_range[1],
                                        student.bev_y_range[1], z_max),
                  "voxel_size": (voxel_xy, voxel_xy, voxel_z),
                  "sparse_shape": (round((student.bev_x_range[1] - student.bev_x_range[0]) / voxel_xy),
                                   round((student.bev_y_range[1] - student.bev_y_range[0]) / voxel_xy),
                                   round((z_max - z_min) / voxel_z) + 1),  # one z cell more, as BEVFusion
                  "x_range": student.bev_x_range, "y_range": student.bev_y_range, **overrides}
        config = cls(**kwargs)
        if "output_channels" not in overrides:  # the last conv's width times the z cells left = the student's
            config.output_channels = student.target_channels // config.encoder_output_shape[2]
        return config

    def check_student(self, student: GeoMIMConfig) -> None:
        """Fail, naming the fields, unless the output lands on the student's target grid (cell: voxel_size x
        stride; channels: output_channels x z cells)."""
        student.check_teacher("the sparse LiDAR teacher", self.target_grid, self.target_channels)
