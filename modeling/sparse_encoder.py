"""BEVFusion's LiDAR encoder (TransFusion-L's ``SparseEncoder``) on spconv 2, with hard voxelization in
plain PyTorch: the network whose output is GeoMIM's official pretraining target.

Layout follows BEVFusion (mit-han-lab/bevfusion ``mmdet3d/models/backbones/sparse_encoder.py``; facts and
sources in docs/official_checkpoint_layouts.md, section 4):

- Voxels are indexed ``(x, y, z)`` in the LiDAR frame (BEVFusion's voxelization; mmdetection3d's own
  ``SparseEncoder`` uses ``(z, y, x)``). The sparse grid is ``(X, Y, Z)``, e.g. (1440, 1440, 41).
- A submanifold stem conv, then stages of submanifold basic blocks; every stage but the last ends in a
  stride-2 sparse conv; a last sparse conv with kernel (1, 1, 3) and stride (1, 1, 2) squeezes z.
  Every conv has no bias and is followed by BatchNorm1d and ReLU (the basic block adds its input
  before its last ReLU).
- The output is densified with z folded into channels, channel ``c * Z + z`` as BEVFusion, and returned
  with rows along y and columns along x, (B, C * Z, Y, X), our BEV convention (BEVFusion's tensor is
  (B, C * Z, X, Y)).
- Conv weights are stored in spconv 2's layout, ``(out, kx, ky, kz, in)``.

spconv is imported only when a network runs, so configs, weights and the converter work without it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

SPCONV_HINT = 'pip install "geomim-hf[sparse]"'


def require_spconv():
    """``spconv.pytorch``, or an ImportError that says how to install it."""
    try:
        import spconv.pytorch as spconv
    except ImportError as error:
        raise ImportError(f"the sparse LiDAR teacher runs on spconv 2, which is not installed: {SPCONV_HINT} "
                          f"(spconv's CPU wheels cover Linux x86_64; for CUDA or other platforms install the "
                          f"spconv-cuXXX wheel that matches your CUDA). Import error: {error}") from error
    return spconv


def _triple(value) -> tuple[int, int, int]:
    return (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)


def grid_shape(point_cloud_range: Sequence[float], voxel_size: Sequence[float]) -> tuple[int, int, int]:
    """(X, Y, Z) voxels covering ``point_cloud_range`` (x_min, y_min, z_min, x_max, y_max, z_max), rounded as
    BEVFusion's voxelization does."""
    return tuple(int(round((point_cloud_range[3 + i] - point_cloud_range[i]) / voxel_size[i])) for i in range(3))


def conv_output_shape(shape: Sequence[int], kernel_size, stride, padding) -> tuple[int, ...]:
    """Spatial shape after a (non-submanifold) sparse conv, per axis (in + 2p - k) // s + 1."""
    return tuple((n + 2 * p - k) // s + 1
                 for n, k, s, p in zip(shape, _triple(kernel_size), _triple(stride), _triple(padding)))


@torch.no_grad()
def hard_voxelize(points: torch.Tensor, point_cloud_range: Sequence[float], voxel_size: Sequence[float],
                  max_points: int, max_voxels: int):
    """BEVFusion's hard voxelization followed by its ``voxelize_reduce`` mean, deterministic.

    points: (P, C) in the LiDAR frame, x, y, z first. Points strictly inside ``point_cloud_range`` are kept
    (mmdetection3d's ``PointsRangeFilter``); a point's voxel is ``floor((p - min) / size)`` in float32.
    Voxels are numbered in the order of their first point, at most ``max_voxels`` of them; each keeps its
    first ``max_points`` points, in input order.

    Returns voxel_features (V, C), the mean of each voxel's kept points; voxel_coords (V, 3) long,
    (x, y, z) indices; num_points (V,) long.
    """
    shape = grid_shape(point_cloud_range, voxel_size)
    low = points.new_tensor(point_cloud_range[:3], dtype=torch.float32)
    high = points.new_tensor(point_cloud_range[3:], dtype=torch.float32)
    xyz = points[:, :3].float()
    coords = torch.floor((xyz - low) / points.new_tensor(voxel_size, dtype=torch.float32)).long()  # (P, 3)
    inside = ((xyz > low) & (xyz < high)).all(1) & ((coords >= 0) & (coords < coords.new_tensor(shape))).all(1)
    points, coords = points[inside], coords[inside]
    num_channels = points.shape[1]
    if points.shape[0] == 0:
        return points.new_zeros(0, num_channels), coords.new_zeros(0, 3), coords.new_zeros(0)

    flat = (coords[:, 0] * shape[1] + coords[:, 1]) * shape[2] + coords[:, 2]  # (P,)
    cells, cell_of_point = torch.unique(flat, return_inverse=True)  # cells sorted by id
    order = torch.arange(flat.shape[0], device=flat.device)
    first_point = torch.full_like(cells, flat.shape[0]).scatter_reduce(0, cell_of_point, order, "amin")
    cells_by_arrival = torch.argsort(first_point)  # voxel v is cell cells_by_arrival[v]
    voxel_of_cell = torch.empty_like(cells_by_arrival)
    voxel_of_cell[cells_by_arrival] = torch.arange(cells.shape[0], device=flat.device)
    voxel = voxel_of_cell[cell_of_point]  # (P,) voxel id in arrival order

    # Rank of each point among its voxel's points, in input order (a stable sort keeps that order).
    sorted_voxel, by_voxel = torch.sort(voxel, stable=True)
    counts = torch.bincount(voxel, minlength=cells.shape[0])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(voxel)
    rank[by_voxel] = order - starts[sorted_voxel]

    num_voxels = min(cells.shape[0], max_voxels)
    kept = (rank < max_points) & (voxel < num_voxels)
    num_points = torch.bincount(voxel[kept], minlength=num_voxels)
    sums = points.new_zeros(num_voxels, num_channels).index_add_(0, voxel[kept], points[kept])
    voxel_features = sums / num_points[:, None].to(sums.dtype)
    voxel_coords = coords[first_point[cells_by_arrival[:num_voxels]]]
    return voxel_features, voxel_coords, num_points


def densify_bev(features: torch.Tensor, sites: torch.Tensor, spatial_shape: Sequence[int],
                batch_size: int) -> torch.Tensor:
    """Sparse features (V, C) at ``sites`` (V, 4) = (batch, x, y, z) of an (X, Y, Z) grid as a BEV map
    (B, C * Z, Y, X): empty sites are zero, z is folded into channels as BEVFusion does (channel c * Z + z),
    rows run along y and columns along x."""
    (X, Y, Z), C = spatial_shape, features.shape[1]
    sites = sites.long()
    dense = features.new_zeros(batch_size, X, Y, Z, C)
    dense[sites[:, 0], sites[:, 1], sites[:, 2], sites[:, 3]] = features
    return dense.permute(0, 4, 3, 2, 1).reshape(batch_size, C * Z, Y, X)  # (B, C, Z, Y, X) -> (B, C * Z, Y, X)


class SparseConv3d(nn.Module):
    """A bias-free sparse 3-D convolution whose weight, (out, kx, ky, kz, in) as spconv 2 holds it, lives here,
    so the module is built and loaded without spconv; spconv computes the forward.

    Args:
        in_channels, out_channels: feature widths.
        kernel_size, stride, padding: int or per-axis (x, y, z).
        submanifold: outputs only at the input's active sites (spconv ``SubMConv3d``); otherwise every site
            the kernel reaches from an active input (``SparseConv3d``).
        indice_key: spconv's cache key for the site pairs; layers with the same key share them.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 submanifold: bool = False, indice_key: str | None = None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = _triple(kernel_size), _triple(stride), _triple(padding)
        self.submanifold, self.indice_key = submanifold, indice_key
        self.weight = nn.Parameter(torch.empty(out_channels, *self.kernel_size, in_channels))

    def _spconv_layer(self):
        # Built on first use and kept out of the module tree: our ``weight`` is the only state.
        layer = self.__dict__.get("_layer")
        if layer is None:
            spconv = require_spconv()
            kind = spconv.SubMConv3d if self.submanifold else spconv.SparseConv3d
            layer = kind(self.in_channels, self.out_channels, self.kernel_size, stride=self.stride,
                         padding=self.padding, bias=False, indice_key=self.indice_key)
            self.__dict__["_layer"] = layer
        layer.weight = self.weight  # re-bound each call: .to() and load_state_dict may replace the tensor
        layer.train(self.training)
        return layer

    def forward(self, x):
        layer = self._spconv_layer()
        if x.features.is_cuda:
            from spconv.cppconstants import CPU_ONLY_BUILD

            if CPU_ONLY_BUILD:
                raise RuntimeError("the installed spconv is its CPU build and the sparse teacher is on CUDA: install "
                                   "the spconv-cuXXX wheel matching your CUDA (pip uninstall spconv first), or keep "
                                   "the teacher on the CPU")
            return layer(x)
        # spconv 2.3.8's CPU strided conv races when torch runs more than one thread: its outputs change from
        # call to call and miss the dense result by up to ~0.7 (seen here; cf. traveller59/spconv#679). One
        # thread computes it exactly (tests/modeling/test_sparse_encoder.py repeats the check).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return layer(x)
        finally:
            torch.set_num_threads(threads)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, submanifold={self.submanifold}")


class SparseConvNormAct(nn.Module):
    """conv -> BatchNorm1d -> ReLU on the active sites (BEVFusion's ``make_sparse_convmodule``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding=0,
                 submanifold: bool = False, indice_key: str | None = None, eps: float = 1e-3, momentum: float = 0.01):
        super().__init__()
        self.conv = SparseConv3d(in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
                                 padding=padding, submanifold=submanifold, indice_key=indice_key)
        self.norm = nn.BatchNorm1d(out_channels, eps=eps, momentum=momentum)

    def forward(self, x):
        x = self.conv(x)
        return x.replace_feature(F.relu(self.norm(x.features)))


class SparseBasicBlock(nn.Module):
    """Two submanifold 3x3x3 convs with BatchNorm, residual added before the last ReLU (mmdet's
    ``BasicBlock`` on sparse tensors)."""

    def __init__(self, channels: int, indice_key: str | None = None, eps: float = 1e-3, momentum: float = 0.01):
        super().__init__()
        self.conv1 = SparseConv3d(channels, channels, 3, padding=1, submanifold=True, indice_key=indice_key)
        self.norm1 = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)
        self.conv2 = SparseConv3d(channels, channels, 3, padding=1, submanifold=True, indice_key=indice_key)
        self.norm2 = nn.BatchNorm1d(channels, eps=eps, momentum=momentum)

    def forward(self, x):
        identity = x.features
        out = self.conv1(x)
        out = out.replace_feature(F.relu(self.norm1(out.features)))
        out = self.conv2(out)
        return out.replace_feature(F.relu(self.norm2(out.features) + identity))


class SparseStage(nn.Module):
    """Basic blocks at one resolution, then (all stages but the last) a stride-2 sparse conv."""

    def __init__(self, channels: int, num_blocks: int, out_channels: int | None, padding, level: int,
                 eps: float, momentum: float):
        super().__init__()
        self.blocks = nn.ModuleList(SparseBasicBlock(channels, indice_key=f"subm{level}", eps=eps, momentum=momentum)
                                    for _ in range(num_blocks))
        self.downsample = None if out_channels is None else SparseConvNormAct(
            channels, out_channels, 3, stride=2, padding=padding, indice_key=f"down{level}", eps=eps, momentum=momentum)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class SparseEncoder(nn.Module):
    """BEVFusion's ``SparseEncoder`` with ``block_type='basicblock'`` and order conv-norm-act.

    Args:
        in_channels: per-voxel input features (5: the mean of x, y, z, intensity, time lag).
        sparse_shape: (X, Y, Z) voxels.
        base_channels: the stem's output width.
        output_channels: the last conv's width (before z is folded into channels).
        encoder_channels: per stage, the widths of its layers; in every stage but the last, the last
            entry is the stride-2 conv's output and the others are basic blocks (which keep the width).
        downsample_paddings: per stage but the last, its stride-2 conv's padding, int or (x, y, z)
            (BEVFusion's ``encoder_paddings[i][-1]``; the basic blocks ignore their entries there).
        eps, momentum: every BatchNorm's.
    """

    def __init__(self, in_channels: int, sparse_shape: Sequence[int], base_channels: int, output_channels: int,
                 encoder_channels: Sequence[Sequence[int]], downsample_paddings: Sequence, eps: float = 1e-3,
                 momentum: float = 0.01):
        super().__init__()
        if len(downsample_paddings) != len(encoder_channels) - 1:
            raise ValueError(f"downsample_paddings needs one entry per stage but the last "
                             f"({len(encoder_channels) - 1}), got {len(downsample_paddings)}")
        self.sparse_shape = tuple(sparse_shape)
        self.stem = SparseConvNormAct(in_channels, base_channels, 3, padding=1, submanifold=True, indice_key="subm0",
                                      eps=eps, momentum=momentum)
        stages, channels = [], base_channels
        for level, widths in enumerate(encoder_channels):
            last = level == len(encoder_channels) - 1
            block_widths = tuple(widths) if last else tuple(widths[:-1])
            if any(width != channels for width in block_widths):
                entries = "its" if last else "all but its last"
                raise ValueError(f"encoder_channels stage {level} {tuple(widths)}: basic blocks keep the width, so "
                                 f"{entries} entries must equal the input width {channels}")
            stages.append(SparseStage(channels, num_blocks=len(block_widths), out_channels=None if last else widths[-1],
                                      padding=None if last else downsample_paddings[level], level=level, eps=eps,
                                      momentum=momentum))
            channels = channels if last else widths[-1]
        self.stages = nn.ModuleList(stages)
        # Squeeze z: kernel 3 and stride 2 along z only, no padding.
        self.out_conv = SparseConvNormAct(channels, output_channels, (1, 1, 3), stride=(1, 1, 2), padding=0,
                                          indice_key="out", eps=eps, momentum=momentum)
        self.output_shape = self.compute_output_shape(self.sparse_shape, len(encoder_channels), downsample_paddings)
        self.out_channels = output_channels * self.output_shape[2]

    @staticmethod
    def compute_output_shape(sparse_shape: Sequence[int], num_stages: int, downsample_paddings: Sequence):
        """(X, Y, Z) sites of the output before densification."""
        shape = tuple(sparse_shape)
        for level in range(num_stages - 1):
            shape = conv_output_shape(shape, 3, 2, downsample_paddings[level])
        return conv_output_shape(shape, (1, 1, 3), (1, 1, 2), 0)

    def forward(self, voxel_features: torch.Tensor, voxel_coords: torch.Tensor, batch_size: int) -> torch.Tensor:
        """voxel_features (V, C_in); voxel_coords (V, 4) as (batch, x, y, z). Returns (B, C_out * Z', Y', X')."""
        spconv = require_spconv()
        x = spconv.SparseConvTensor(voxel_features, voxel_coords.int(), list(self.sparse_shape), batch_size)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = self.out_conv(x)
        return densify_bev(x.features, x.indices, x.spatial_shape, batch_size)
