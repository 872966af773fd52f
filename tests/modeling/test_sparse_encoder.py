"""modeling/sparse_encoder.py against independent computations: a Python loop for the voxelization,
dense ``conv3d`` on the active sites for the sparse convolutions and the whole encoder, hand-made cases for
densification."""

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from geomim_hf.modeling.sparse_encoder import (
    SparseConv3d,
    SparseEncoder,
    densify_bev,
    hard_voxelize,
    require_spconv,
)

try:
    require_spconv()
    HAS_SPCONV = True
except ImportError:
    HAS_SPCONV = False
needs_spconv = pytest.mark.skipif(not HAS_SPCONV, reason='spconv 2 is not installed (pip install "geomim-hf[sparse]", '
                                  "Linux x86_64 CPU wheels; or a spconv-cuXXX wheel)")

RANGE, VOXEL = (-2.0, -1.5, -1.0, 2.0, 1.5, 1.0), (0.5, 0.5, 0.25)  # an 8 x 6 x 8 grid


def voxelize_loop(points, point_cloud_range, voxel_size, max_points, max_voxels):
    """BEVFusion's CPU kernel, point by point (voxelization_cpu.cpp), after the strict range filter."""
    shape = [round((point_cloud_range[3 + i] - point_cloud_range[i]) / voxel_size[i]) for i in range(3)]
    low = torch.tensor(point_cloud_range[:3])
    voxel_of, coords, members = {}, [], []
    for point in points:
        xyz = point[:3]
        if not all(point_cloud_range[i] < xyz[i].item() < point_cloud_range[3 + i] for i in range(3)):
            continue
        coord = tuple(int(c) for c in torch.floor((xyz - low) / torch.tensor(voxel_size)).tolist())
        if not all(0 <= c < n for c, n in zip(coord, shape)):
            continue
        if coord not in voxel_of:
            if len(coords) >= max_voxels:
                continue
            voxel_of[coord] = len(coords)
            coords.append(coord)
            members.append([])
        if len(members[voxel_of[coord]]) < max_points:
            members[voxel_of[coord]].append(point)
    means = torch.stack([torch.stack(m).mean(0) for m in members])
    return means, torch.tensor(coords), torch.tensor([len(m) for m in members])


def test_hard_voxelize_matches_the_point_by_point_kernel():
    gen = torch.Generator().manual_seed(0)
    # Clustered points so voxels overflow max_points; some outside the range on every side.
    centres = torch.rand(30, 3, generator=gen) * 5 - 2.5
    points = centres[torch.randint(0, 30, (600,), generator=gen)] + 0.2 * torch.randn(600, 3, generator=gen)
    points = torch.cat([points, torch.rand(600, 2, generator=gen)], 1)  # (P, 5) x, y, z, intensity, lag
    for max_points, max_voxels in ((5, 1000), (3, 40)):
        features, coords, counts = hard_voxelize(points, RANGE, VOXEL, max_points, max_voxels)
        expected = voxelize_loop(points, RANGE, VOXEL, max_points, max_voxels)
        assert torch.equal(coords, expected[1]) and torch.equal(counts, expected[2])
        torch.testing.assert_close(features, expected[0])
    assert counts.max() == 3 and len(coords) == 40  # both limits were hit
    assert hard_voxelize(points[:0], RANGE, VOXEL, 5, 10)[1].shape == (0, 3)


def test_densify_folds_z_into_channels_hand_made():
    features = torch.tensor([[10.0, 20.0], [1.0, 2.0]])  # (V, C=2)
    sites = torch.tensor([[0, 2, 1, 1], [1, 0, 2, 0]])  # (batch, x, y, z) in an X=3, Y=4, Z=2 grid
    bev = densify_bev(features, sites, (3, 4, 2), batch_size=2)
    expected = torch.zeros(2, 4, 4, 3)  # (B, C * Z, Y, X): channel c * Z + z
    expected[0, 0 * 2 + 1, 1, 2], expected[0, 1 * 2 + 1, 1, 2] = 10.0, 20.0
    expected[1, 0 * 2 + 0, 2, 0], expected[1, 1 * 2 + 0, 2, 0] = 1.0, 2.0
    assert torch.equal(bev, expected)


def test_missing_spconv_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "spconv", None)  # import spconv now fails
    monkeypatch.setitem(sys.modules, "spconv.pytorch", None)
    with pytest.raises(ImportError, match=r'pip install "geomim-hf\[sparse\]"'):
        require_spconv()
    conv = SparseConv3d(2, 3, 3, padding=1, submanifold=True)  # built and loadable without spconv
    assert conv.weight.shape == (3, 3, 3, 3, 2)
    with pytest.raises(ImportError, match=r"geomim-hf\[sparse\]"):
        conv(None)


def _random_sites(gen, shape, count, batch_size=1):
    flat = torch.randperm(batch_size * math.prod(shape), generator=gen)[:count]
    sites = torch.stack(torch.unravel_index(flat, (batch_size, *shape)), 1)  # (V, 4) batch, x, y, z
    return sites.int()


def _dense(features, sites, shape, batch_size=1):
    grid = features.new_zeros(batch_size, features.shape[1], *shape)  # (B, C, X, Y, Z)
    sites = sites.long()
    grid[sites[:, 0], :, sites[:, 1], sites[:, 2], sites[:, 3]] = features
    return grid


def _torch_weight(weight):
    """Ours (out, kx, ky, kz, in) -> conv3d's (out, in, kx, ky, kz) on (B, C, X, Y, Z) grids."""
    return weight.permute(0, 4, 1, 2, 3)


@needs_spconv
@pytest.mark.parametrize("kernel, stride, padding",
                         [(3, 1, 1), (3, 2, 1), (3, 2, (1, 1, 0)), ((1, 1, 3), (1, 1, 2), 0)])
def test_sparse_conv_equals_dense_conv3d_at_active_sites(kernel, stride, padding):
    spconv = require_spconv()
    gen = torch.Generator().manual_seed(1)
    shape = (32, 24, 17)
    sites = _random_sites(gen, shape, 1500, batch_size=2)
    features = torch.randn(len(sites), 4, generator=gen)
    submanifold = stride == 1
    conv = SparseConv3d(4, 5, kernel, stride, padding, submanifold=submanifold)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
    dense_in = _dense(features, sites, shape, 2)
    expected = F.conv3d(dense_in, _torch_weight(conv.weight.detach()), stride=stride, padding=padding)
    # Active outputs: the input's sites (submanifold) or every site a kernel placement reaches from one.
    occupancy = (dense_in.abs().sum(1, keepdim=True) > 0).float()
    reach = F.conv3d(occupancy, torch.ones(1, 1, *conv.kernel_size), stride=stride, padding=padding)[:, 0] > 0
    active = (occupancy[:, 0] > 0) if submanifold else reach
    for _ in range(4):  # spconv's multi-threaded CPU strided conv went wrong on some calls only
        with torch.no_grad():
            out = conv(spconv.SparseConvTensor(features, sites, list(shape), 2))
        out_sites = out.indices.long()
        assert list(out.spatial_shape) == list(expected.shape[2:])
        assert len(out_sites) == int(active.sum())
        assert active[out_sites[:, 0], out_sites[:, 1], out_sites[:, 2], out_sites[:, 3]].all()
        torch.testing.assert_close(out.features,
                                   expected[out_sites[:, 0], :, out_sites[:, 1], out_sites[:, 2], out_sites[:, 3]],
                                   atol=1e-5, rtol=1e-5)


ENCODER = dict(in_channels=5, base_channels=4, output_channels=6,
               encoder_channels=((4, 4, 6), (6, 6, 8), (8, 8, 8), (8, 8)), downsample_paddings=(1, 1, (1, 1, 0)))


def dense_encoder(encoder, features, sites, shape, batch_size):
    """The encoder on dense grids: conv3d everywhere, then keep the active sites (a submanifold conv keeps
    its input's, a strided conv reaches every site a kernel placement touches), BatchNorm and ReLU there."""
    x = _dense(features, sites, shape, batch_size)
    mask = (x.abs().sum(1, keepdim=True) > 0).float()  # (B, 1, X, Y, Z)

    def norm(y, bn, mask):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        shift = bn.bias - bn.running_mean * scale
        return (y * scale[None, :, None, None, None] + shift[None, :, None, None, None]) * mask

    def conv(y, layer, mask):
        out = F.conv3d(y, _torch_weight(layer.weight), stride=layer.stride, padding=layer.padding)
        if not layer.submanifold:
            mask = (F.conv3d(mask, torch.ones(1, 1, *layer.kernel_size), stride=layer.stride,
                             padding=layer.padding) > 0).float()
        return out * mask, mask

    x, mask = conv(x, encoder.stem.conv, mask)
    x = F.relu(norm(x, encoder.stem.norm, mask))
    for stage in encoder.stages:
        for block in stage.blocks:
            y, _ = conv(x, block.conv1, mask)
            y = F.relu(norm(y, block.norm1, mask))
            y, _ = conv(y, block.conv2, mask)
            x = F.relu(norm(y, block.norm2, mask) + x)
        if stage.downsample is not None:
            x, mask = conv(x, stage.downsample.conv, mask)
            x = F.relu(norm(x, stage.downsample.norm, mask))
    x, mask = conv(x, encoder.out_conv.conv, mask)
    x = F.relu(norm(x, encoder.out_conv.norm, mask))  # (B, C, X, Y, Z)
    B, C, X, Y, Z = x.shape
    return x.permute(0, 1, 4, 3, 2).reshape(B, C * Z, Y, X)


@needs_spconv
def test_encoder_equals_a_dense_computation():
    gen = torch.Generator().manual_seed(2)
    shape = (16, 12, 41)  # BEVFusion's structure (4 stages, z 41 -> 21 -> 11 -> 5 -> 2) on a small grid
    encoder = SparseEncoder(sparse_shape=shape, **ENCODER).eval()
    with torch.no_grad():
        for name, tensor in encoder.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=gen) + 0.5)
            elif tensor.is_floating_point():
                tensor.copy_(torch.randn(tensor.shape, generator=gen) * (0.3 if name.endswith("weight") else 0.1))
    sites = _random_sites(gen, (16, 12, 40), 150, batch_size=2)
    features = torch.randn(len(sites), 5, generator=gen)
    with torch.no_grad():
        actual = encoder(features, sites, batch_size=2)
        expected = dense_encoder(encoder, features, sites, shape, 2)
    assert actual.shape == (2, 6 * 2, 2, 2) == expected.shape  # (B, C * Z, Y, X)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)
    assert encoder.output_shape == (2, 2, 2) and encoder.out_channels == 12


def test_encoder_refuses_blocks_that_change_width():
    with pytest.raises(ValueError, match=r"encoder_channels stage 1 \(6, 7, 8\)"):
        SparseEncoder(sparse_shape=(16, 12, 41),
                      **{**ENCODER, "encoder_channels": ((4, 4, 6), (6, 7, 8), (8, 8, 8), (8, 8))})
