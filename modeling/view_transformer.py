"""Lift-Splat-Shoot: camera-aware depth, a frustum of points per feature pixel, BEV pooling.

Frames: ``camera`` (x right, y down, z forward), ``ego`` (x forward, y left, z up), and the
augmented ego frame ``augmented_ego_from_ego @ ego``. Pixels of a processed image relate to the original
image by ``processed_from_original`` (pixel (i, j) centred at (i, j)). BEV tensors are (B, C, Y, X): cell
``[iy, ix]`` covers ``x in [x_min + ix * res, x_min + (ix + 1) * res)`` and likewise for y.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from .grids import BevGrid, DepthBins
from .ops import BevPoolIndices, bev_pool, pool_indices, scatter_pool

CAMERA_VECTOR_SIZE = 22


def camera_vector(intrinsics: torch.Tensor, processed_from_original: torch.Tensor,
                  ego_from_camera: torch.Tensor) -> torch.Tensor:
    """The official 22 numbers per view: fx, fy, cx, cy; the image augmentation's 2x3 rows
    (r00, r01, t0, r10, r11, t1); camera-to-ego 3x4 row-major. Inputs (B, N, ...); returns (B, N, 22)."""
    k = intrinsics
    return torch.cat([
        torch.stack([k[..., 0, 0], k[..., 1, 1], k[..., 0, 2], k[..., 1, 2]], -1),
        processed_from_original[..., :2, :3].flatten(-2),
        ego_from_camera[..., :3, :4].flatten(-2),
    ], -1)


def invert_3x3(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) inverses by the adjugate: exact to rounding like ``torch.linalg.inv``, and made of the
    elementwise ops every exporter (ONNX has no matrix inverse) and compiler takes."""
    a, b, c = matrix[..., 0, 0], matrix[..., 0, 1], matrix[..., 0, 2]
    d, e, f = matrix[..., 1, 0], matrix[..., 1, 1], matrix[..., 1, 2]
    g, h, i = matrix[..., 2, 0], matrix[..., 2, 1], matrix[..., 2, 2]
    adjugate = torch.stack([
        torch.stack([e * i - f * h, c * h - b * i, b * f - c * e], -1),
        torch.stack([f * g - d * i, a * i - c * g, c * d - a * f], -1),
        torch.stack([d * h - e * g, b * g - a * h, a * e - b * d], -1),
    ], -2)
    determinant = a * (e * i - f * h) + b * (f * g - d * i) + c * (d * h - e * g)
    return adjugate / determinant[..., None, None]


class CameraAwareGate(nn.Module):
    """BEVDepth-style: camera vector -> BatchNorm1d -> MLP -> squeeze-excitation gate on features."""

    def __init__(self, channels: int, hidden_size: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(CAMERA_VECTOR_SIZE)
        self.mlp = nn.Sequential(nn.Linear(CAMERA_VECTOR_SIZE, hidden_size), nn.GELU(),
                                 nn.Linear(hidden_size, channels))
        self.reduce = nn.Linear(channels, channels)
        self.expand = nn.Linear(channels, channels)

    def forward(self, features: torch.Tensor, cameras: torch.Tensor) -> torch.Tensor:
        """features: (B*N, ..., C) channels last; cameras: (B*N, 22). Returns features gated per channel."""
        embedding = self.mlp(self.bn(cameras))  # (B*N, C)
        gate = torch.sigmoid(self.expand(F.relu(self.reduce(embedding))))
        return features * gate.view(gate.shape[0], *([1] * (features.ndim - 2)), gate.shape[1])


class DepthNet(nn.Module):
    """Two 3x3 conv-BN-ReLU and a 1x1 conv to depth logits and context channels (the official head)."""

    def __init__(self, in_channels: int, mid_channels: int, num_bins: int, context_channels: int):
        super().__init__()
        self.num_bins = num_bins
        self.layers = nn.Sequential(
            nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False), nn.BatchNorm2d(mid_channels), nn.ReLU(True),
            nn.Conv2d(mid_channels, mid_channels, 3, padding=1, bias=False), nn.BatchNorm2d(mid_channels),
            nn.ReLU(True), nn.Conv2d(mid_channels, num_bins + context_channels, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B*N, C_in, h, w). Returns depth logits (B*N, D, h, w) and context (B*N, C, h, w)."""
        out = self.layers(x)
        return out[:, : self.num_bins], out[:, self.num_bins:]


class CameraAwareDepthNet(nn.Module):
    """BEVDepth's depth net for the detector: a 3x3 reduction, camera-aware gates on the depth and
    context paths, residual blocks before the depth logits (BEVDepth's ASPP and deformable conv are
    left out)."""

    def __init__(self, in_channels: int, mid_channels: int, num_bins: int, context_channels: int,
                 camera_hidden_size: int):
        super().__init__()
        from .centerpoint import OutputConv2d
        from .necks import BasicBlock  # the neck module owns the residual block

        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(mid_channels), nn.ReLU(True))
        self.depth_gate = CameraAwareGate(mid_channels, camera_hidden_size)
        self.context_gate = CameraAwareGate(mid_channels, camera_hidden_size)
        self.depth = nn.Sequential(BasicBlock(mid_channels, mid_channels), BasicBlock(mid_channels, mid_channels),
                                   OutputConv2d(mid_channels, num_bins))  # starts near uniform
        self.context = nn.Conv2d(mid_channels, context_channels, 1)

    def forward(self, x: torch.Tensor, cameras: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B*N, C_in, h, w); cameras: (B*N, 22). Returns depth logits (B*N, D, h, w) and context
        (B*N, C, h, w)."""
        x = self.reduce(x)
        channels_last = x.permute(0, 2, 3, 1)
        depth = self.depth_gate(channels_last, cameras).permute(0, 3, 1, 2)
        context = self.context_gate(channels_last, cameras).permute(0, 3, 1, 2)
        return self.depth(depth), self.context(context)


class LiftSplat(nn.Module):
    """Pool per-view depth distributions and context into a BEV grid.

    Args:
        image_size: (H, W) of the processed images; feature_stride: their stride to the features.
        depth_bins: the bins the depth net predicts; bin k stands for its centre.
        grid: the ego-frame BEV grid pooled into (its ``z_range`` is the one height bin).
        kernel_backend: ``auto``, ``torch`` or ``triton``; cache_size: geometries kept at inference.
    """

    def __init__(self, image_size: tuple[int, int], feature_stride: int, depth_bins: DepthBins, grid: BevGrid,
                 kernel_backend: str = "auto", cache_size: int = 8):
        super().__init__()
        self.feature_size = (image_size[0] // feature_stride, image_size[1] // feature_stride)
        self.feature_stride = feature_stride
        self.depth_bins, self.grid = depth_bins, grid
        self.kernel_backend = kernel_backend
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, BevPoolIndices] = OrderedDict()

    def frustum(self, device, dtype=torch.float32) -> torch.Tensor:
        """(D, h, w, 3) points (u, v, depth) at the centres of the feature cells, in processed-image pixels."""
        height, width = self.feature_size
        stride = self.feature_stride
        v = torch.arange(height, device=device, dtype=dtype) * stride + (stride - 1) / 2
        u = torch.arange(width, device=device, dtype=dtype) * stride + (stride - 1) / 2
        d = torch.tensor(self.depth_bins.centers, device=device, dtype=dtype)
        grid_d, grid_v, grid_u = torch.meshgrid(d, v, u, indexing="ij")
        return torch.stack([grid_u, grid_v, grid_d], -1)

    def points_ego(self, intrinsics, ego_from_camera, processed_from_original,
                   augmented_ego_from_ego=None) -> torch.Tensor:
        """(B, N, D, h, w, 3) frustum points in the (augmented) ego frame. Inputs (B, N, 3|4, 3|4)."""
        geometry = torch.float64  # metres far from the camera: keep the chain exact
        frustum = self.frustum(intrinsics.device, geometry)  # (D, h, w, 3)
        pixels = torch.cat([frustum[..., :2], torch.ones_like(frustum[..., :1])], -1)  # processed image
        # (B, N, 3, 3) processed pixels to camera rays: (processed_from_original @ intrinsics)^-1
        camera_rays = invert_3x3(processed_from_original.to(geometry) @ intrinsics.to(geometry))
        rays = torch.einsum("bnij,dhwj->bndhwi", camera_rays, pixels)  # z = 1 in the camera frame
        points_camera = rays * frustum[..., 2:3]  # (B, N, D, h, w, 3)
        transform = ego_from_camera.to(geometry)
        if augmented_ego_from_ego is not None:
            transform = augmented_ego_from_ego.to(geometry)[:, None] @ transform
        return torch.einsum("bnij,bndhwj->bndhwi", transform[..., :3, :3], points_camera) + \
            transform[:, :, None, None, None, :3, 3]

    def indices(self, intrinsics, ego_from_camera, processed_from_original,
                augmented_ego_from_ego=None) -> BevPoolIndices:
        """Pooling indices for a camera geometry. At inference they are cached by geometry (a fixed rig hits
        the cache every frame); in training, where augmentation makes every geometry new, they are
        computed directly, without the host copy the cache key needs."""
        if self.training:
            return self._compute_indices(intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego)
        parts = [intrinsics, ego_from_camera, processed_from_original]
        parts += [augmented_ego_from_ego] if augmented_ego_from_ego is not None else []
        key = b"".join(p.detach().to("cpu", torch.float64).contiguous().numpy().tobytes() for p in parts)
        key += str(intrinsics.shape).encode() + str(intrinsics.device).encode()
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        indices = self._compute_indices(intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego)
        self._cache[key] = indices
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return indices

    def cell_index(self, intrinsics, ego_from_camera, processed_from_original,
                   augmented_ego_from_ego=None) -> torch.Tensor:
        """(B, N, D, h, w) the flat BEV cell of every frustum point, -1 outside the grid."""
        return self.grid.cell_of(self.points_ego(intrinsics, ego_from_camera, processed_from_original,
                                                 augmented_ego_from_ego))

    @torch.no_grad()
    def _compute_indices(self, intrinsics, ego_from_camera, processed_from_original,
                         augmented_ego_from_ego) -> BevPoolIndices:
        cells = self.cell_index(intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego)
        return pool_indices(cells, self.grid.num_cells)

    def forward(self, depth: torch.Tensor, context: torch.Tensor, intrinsics: torch.Tensor,
                ego_from_camera: torch.Tensor, processed_from_original: torch.Tensor,
                augmented_ego_from_ego: torch.Tensor | None = None) -> torch.Tensor:
        """B batch, N views, D bins, C channels, h x w features, Y x X BEV.

        depth: (B, N, D, h, w) probabilities; context: (B, N, C, h, w); intrinsics, processed_from_original:
        (B, N, 3, 3); ego_from_camera: (B, N, 4, 4); augmented_ego_from_ego: (B, 4, 4) or None.
        Returns (B, C, Y, X)."""
        if torch.compiler.is_exporting():  # ONNX / torch.export: the geometry is a graph input, not a cache key
            cells = self.cell_index(intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego)
            return scatter_pool(depth, context, cells, self.grid.size)
        indices = self.indices(intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego)
        return bev_pool(depth, context, indices, self.grid.size, backend=self.kernel_backend)

    def splat_views(self, depth_logits: torch.Tensor, context: torch.Tensor, intrinsics: torch.Tensor,
                    ego_from_camera: torch.Tensor, processed_from_original: torch.Tensor,
                    augmented_ego_from_ego: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The depth net's per-view outputs, (B*N, D, h, w) logits and (B*N, C, h, w) context, to BEV:
        returns (B, C, Y, X) and the logits as (B, N, D, h, w)."""
        batch, views = intrinsics.shape[:2]
        depth_logits = depth_logits.view(batch, views, *depth_logits.shape[1:])
        context = context.view(batch, views, *context.shape[1:])
        bev = self(depth_logits.softmax(2), context=context, intrinsics=intrinsics, ego_from_camera=ego_from_camera,
                   processed_from_original=processed_from_original, augmented_ego_from_ego=augmented_ego_from_ego)
        return bev, depth_logits


class BevDownsample(nn.Module):
    """The official x2 downsampling of the pooled grid: conv-BN-ReLU, stride-2 conv-BN-ReLU, conv-BN-ReLU."""

    def __init__(self, channels: int, factor: int = 2):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"BEV downsampling factor must be a power of two, got {factor}")
        layers: list[nn.Module] = [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
                                   nn.ReLU(True)]
        for _ in range(factor.bit_length() - 1):
            layers += [nn.Conv2d(channels, channels, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(channels),
                       nn.ReLU(True)]
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(True)]
        self.layers = nn.Sequential(*layers)

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        return self.layers(bev)
