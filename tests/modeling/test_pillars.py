import torch

from geomim_hf.modeling.grids import BevGrid
from geomim_hf.modeling.pillars import PillarEncoder, PillarFeatureNet, decorate_points, hard_voxelization_keep


def test_pillar_features_are_the_max_over_each_pillars_points():
    torch.manual_seed(0)
    encoder = PillarEncoder(BevGrid((-4.0, 4.0), (-2.0, 2.0), 1.0, z_range=(-3.0, 3.0)), pillar_channels=8,
                            backbone_channels=(8, 8), backbone_layers=(1, 1), backbone_strides=(1, 2),
                            neck_channels=4, neck_stride=1).eval()
    points = torch.cat([torch.rand(2, 50, 3) * torch.tensor([10.0, 5.0, 8.0]) - torch.tensor([5.0, 2.5, 4.0]),
                        torch.rand(2, 50, 2)], -1)
    mask = torch.rand(2, 50) > 0.2
    pillars = encoder.scatter(points, mask)
    assert pillars.shape == (2, 8, 4, 8)
    expected = torch.zeros_like(pillars)
    for b in range(2):  # per pillar: the points in it, the PFN features, the max
        for row in range(4):
            for column in range(8):
                x0, y0 = -4.0 + column, -2.0 + row
                p = points[b][mask[b]]
                inside = (p[:, 0] >= x0) & (p[:, 0] < x0 + 1) & (p[:, 1] >= y0) & (p[:, 1] < y0 + 1) & \
                    (p[:, 2] >= -3) & (p[:, 2] < 3)
                if not inside.any():
                    continue
                q = p[inside]
                features = torch.cat([q, q[:, :3] - q[:, :3].mean(0), q[:, :2] - torch.tensor([x0 + 0.5, y0 + 0.5])],
                                     1)
                pfn = torch.relu(encoder.pfn.norm(encoder.pfn.linear(features)))
                expected[b, :, row, column] = pfn.max(0).values
    torch.testing.assert_close(pillars, expected, atol=1e-5, rtol=1e-5)
    _, stages, neck = encoder(points, mask)
    assert [s.shape[-2:] for s in stages] == [(4, 8), (2, 4)] and neck.shape == (2, 8, 4, 8)


def test_mmdet3d_point_decoration_hand_case():
    """mmdetection3d's PillarFeatureNet (legacy=False): x, y, z, intensity, lag, offsets to the pillar's
    point mean, offsets to the pillar centre in x, y and z."""
    points = torch.tensor([[0.05, -0.02, -1.5, 10.0, 0.0], [0.15, -0.18, 0.5, 20.0, 0.05],
                           [0.10, -0.10, -0.5, 30.0, 0.1]])
    centers = torch.tensor([[0.1, -0.1, -1.0]]).expand(3, 3)  # pillar (ix 256, iy 255) of 0.2 m over +-51.2, z [-5, 3]
    features, counts = decorate_points(points, torch.zeros(3, dtype=torch.long), 1, centers)
    expected = torch.tensor([  # the mean is (0.1, -0.1, -0.5)
        [0.05, -0.02, -1.5, 10.0, 0.0, -0.05, 0.08, -1.0, -0.05, 0.08, -0.5],
        [0.15, -0.18, 0.5, 20.0, 0.05, 0.05, -0.08, 1.0, 0.05, -0.08, 1.5],
        [0.10, -0.10, -0.5, 30.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]])
    torch.testing.assert_close(features, expected)
    assert counts.tolist() == [3.0]


def test_pillar_centres_with_z_on_the_mmdet3d_grid():
    """Single-point pillars through a PFN that copies its input out (weights [I; -I], identity BN):
    the pillar map shows each point's 11 features, centre offsets included."""
    encoder = PillarEncoder(BevGrid((-51.2, 51.2), (-51.2, 51.2), 0.2, z_range=(-5.0, 3.0)), pillar_channels=22,
                            backbone_channels=(8,), backbone_layers=(0,), backbone_strides=(2,), neck_channels=4,
                            neck_stride=2, center_z=True, max_points_per_pillar=20, norm_eps=1e-3).eval()
    with torch.no_grad():
        encoder.pfn.linear.weight.copy_(torch.cat([torch.eye(11), -torch.eye(11)]))
    points = torch.tensor([[[-51.1, 51.15, 2.9, 7.0, 0.2], [0.13, -0.01, -4.0, 1.0, 0.0]]])
    with torch.no_grad():
        pillars = encoder.scatter(points, None)[0] * (1 + 1e-3) ** 0.5  # undo BN's 1/sqrt(var + eps)
    recovered = pillars[:11] - pillars[11:]  # relu(f) - relu(-f) = f
    torch.testing.assert_close(recovered[:, 511, 0], torch.tensor(  # centre (-51.1, 51.1, -1.0)
        [-51.1, 51.15, 2.9, 7.0, 0.2, 0.0, 0.0, 0.0, 0.0, 0.05, 3.9]), atol=1e-5, rtol=0)
    torch.testing.assert_close(recovered[:, 255, 256], torch.tensor(  # centre (0.1, -0.1, -1.0)
        [0.13, -0.01, -4.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.03, 0.09, -3.0]), atol=1e-5, rtol=0)
    assert torch.nonzero(pillars.abs().sum(0)).tolist() == [[255, 256], [511, 0]]  # nothing anywhere else


def test_unfilled_point_slots_enter_the_max():
    """Hard voxelization pads a pillar to max_points_per_pillar with zero points; after BN's shift they
    are not zero and join the max, but only in pillars that have free slots."""
    pfn = PillarFeatureNet(2, max_points_per_pillar=3, eps=1e-3).eval()
    with torch.no_grad():
        pfn.linear.weight.zero_()
        pfn.linear.weight[0, 3], pfn.linear.weight[1, 3] = 1.0, -1.0  # +-intensity
        pfn.norm.bias.fill_(0.5)
    points = torch.zeros(5, 5)
    points[:, 3] = torch.tensor([2.0, 3.0, 1.0, 2.0, 3.0])
    pillar = torch.tensor([0, 0, 1, 1, 1])  # pillar 0: 2 points, a free slot; pillar 1: full
    with torch.no_grad():
        features = pfn(points, pillar, 2, torch.zeros(5, 2))
    scale = (1 + 1e-3) ** -0.5
    torch.testing.assert_close(features, torch.tensor([[3 * scale + 0.5, 0.5],  # 0.5: the empty slot
                                                       [3 * scale + 0.5, 0.0]]))  # relu(-scale + 0.5) = 0


def test_hard_voxelization_keeps_what_mmcv_keeps():
    """Against mmcv's algorithm point by point: a pillar opens at its first point while the sample has
    room, and takes points until it is full."""
    generator = torch.Generator().manual_seed(0)
    sample = torch.sort(torch.randint(0, 2, (300,), generator=generator)).values  # points are sample-major
    pillar = sample * 50 + torch.randint(0, 12, (300,), generator=generator)
    for max_points, max_pillars in ((3, 5), (None, 4), (5, None)):
        expected = []
        for b in range(2):
            opened, counts = [], {}
            for p in pillar[sample == b].tolist():
                if p not in counts:
                    if max_pillars is not None and len(opened) >= max_pillars:
                        expected.append(False)
                        continue
                    opened.append(p)
                    counts[p] = 0
                kept = max_points is None or counts[p] < max_points
                counts[p] += kept
                expected.append(kept)
        actual = hard_voxelization_keep(pillar, sample, 100, max_points, max_pillars)
        assert actual.tolist() == expected, (max_points, max_pillars)
