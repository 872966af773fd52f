import torch

from geomim_hf.modeling.pillars import PillarEncoder


def test_pillar_features_are_the_max_over_each_pillars_points():
    torch.manual_seed(0)
    encoder = PillarEncoder((-4.0, 4.0), (-2.0, 2.0), (-3.0, 3.0), pillar_size=1.0, pillar_channels=8,
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
