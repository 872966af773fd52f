"""modeling/bev_resample.py on hand-made cases with known answers."""

import torch

from geomim_hf.modeling.bev_resample import resample_bev
from geomim_hf.modeling.grids import BevGrid


def test_resample_bev_hand_made():
    source = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)  # (B, C, Y=4, X=6), 1 m cells
    identity = torch.eye(4)[None]
    same = resample_bev(source, identity, BevGrid((-3, 3), (-2, 2), 1.0), BevGrid((-3, 3), (-2, 2), 1.0))
    torch.testing.assert_close(same, source)
    # Target = source moved +1 m in x: target column i shows source column i - 1; the first is outside.
    moved = identity.clone()
    moved[0, 0, 3] = 1.0
    shifted = resample_bev(source, moved, BevGrid((-3, 3), (-2, 2), 1.0), BevGrid((-3, 3), (-2, 2), 1.0))
    torch.testing.assert_close(shifted[..., 1:], source[..., :-1])
    torch.testing.assert_close(shifted[..., 0], torch.zeros_like(shifted[..., 0]))  # float32 sampling: ~1e-6
    # A quarter turn (target x = -source y, target y = source x) onto a 4 x 4 grid: exact cell permutation.
    square = source[..., 1:5]  # (1, 2, 4, 4) over x in (-2, 2)
    turned = torch.tensor([[[0.0, -1, 0, 0], [1, 0, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]])
    rotated = resample_bev(square, turned, BevGrid((-2, 2), (-2, 2), 1.0), BevGrid((-2, 2), (-2, 2), 1.0))
    # Target cell (row r, column c) at (x, y) = (c - 1.5, r - 1.5) is source (x', y') = (y, -x): row c', column r.
    expected = torch.stack([torch.stack([square[0, :, 3 - c, r] for c in range(4)], -1) for r in range(4)], -2)
    torch.testing.assert_close(rotated, expected[None])


def test_quarter_turn_and_shift_move_whole_cells():
    features = torch.randn(2, 3, 6, 6)
    quarter_turn = torch.eye(4).repeat(2, 1, 1)
    quarter_turn[:, :2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])  # target = source turned +90 degrees
    warped = resample_bev(features, quarter_turn, BevGrid((-3.0, 3.0), (-3.0, 3.0), 1.0), BevGrid((-3.0, 3.0), (-3.0, 3.0), 1.0))
    # Source cell (row y, column x) lands at target (x', y') = (-y, x): row x, column 5 - y.
    expected = torch.flip(features.transpose(-1, -2), dims=[-1])
    torch.testing.assert_close(warped, expected)
    shift = torch.eye(4).repeat(2, 1, 1)
    shift[:, 0, 3] = 1.0  # one cell along +x
    warped = resample_bev(features, shift, BevGrid((-3.0, 3.0), (-3.0, 3.0), 1.0), BevGrid((-3.0, 3.0), (-3.0, 3.0), 1.0))
    torch.testing.assert_close(warped[..., 1:], features[..., :-1])
    assert warped[..., 0].abs().max() < 1e-6  # off the source map: zeros
