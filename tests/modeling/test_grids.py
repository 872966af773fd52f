"""modeling/grids.py: BevGrid and DepthBins against brute-force loops over their cells and bins."""

import math

import pytest
import torch

from geomim_hf.modeling.grids import BevGrid, DepthBins


def _brute_cell(grid: BevGrid, x: float, y: float, z: float) -> int:
    """The cell whose half-open square holds (x, y), found by trying every cell; -1 if none or z outside."""
    if not grid.z_range[0] <= z < grid.z_range[1]:
        return -1
    rows, columns = grid.size
    for iy in range(rows):
        for ix in range(columns):
            x0, y0 = grid.x_range[0] + ix * grid.resolution, grid.y_range[0] + iy * grid.resolution
            if x0 <= x < x0 + grid.resolution and y0 <= y < y0 + grid.resolution:
                return iy * columns + ix
    return -1


def test_cell_of_is_the_brute_force_cell():
    # Asymmetric extents and a z slab, so a swapped x/y or a missed bound shows.
    grid = BevGrid((-3.0, 5.0), (-2.0, 1.0), 0.5, z_range=(-1.0, 2.0))
    assert grid.size == (6, 16) and grid.num_cells == 96
    generator = torch.Generator().manual_seed(0)
    points = torch.rand(400, 3, generator=generator, dtype=torch.float64) * torch.tensor([10.0, 5.0, 4.0],
                                                                                       dtype=torch.float64)
    points -= torch.tensor([4.0, 2.5, 1.5], dtype=torch.float64)
    # Points exactly on cell edges and on the grid's own bounds (max is outside: cells are half-open).
    edges = torch.tensor([[-3.0, -2.0, 0.0], [5.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, -1.5, 0.0], [1.0, 0.0, 2.0],
                          [1.0, 0.0, -1.0]], dtype=torch.float64)
    points = torch.cat([points, edges])
    expected = torch.tensor([_brute_cell(grid, *p) for p in points.tolist()])
    assert torch.equal(grid.cell_of(points), expected)
    assert (expected >= 0).sum() > 100 and (expected < 0).sum() > 100  # both cases exercised
    columns, rows, inside = grid.cell_coordinates(points)
    assert torch.equal(inside, expected >= 0)
    assert torch.equal((rows * grid.size[1] + columns)[inside], expected[inside])


def test_cell_centers_fall_in_their_own_cells():
    grid = BevGrid((-3.0, 5.0), (-2.0, 1.0), 0.5)
    x, y = grid.cell_centers(dtype=torch.float64)
    assert x.shape == (16,) and y.shape == (6,)
    centers = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], -1).reshape(-1, 2)
    points = torch.cat([centers, torch.zeros(len(centers), 1, dtype=torch.float64)], -1)
    assert torch.equal(grid.cell_of(points), torch.arange(grid.num_cells))
    assert x[0].item() == -2.75 and y[-1].item() == 0.75


def test_a_coarsened_grid_merges_factor_by_factor_blocks():
    fine = BevGrid((-4.0, 4.0), (-2.0, 2.0), 0.5)
    coarse = fine.coarsened(4)
    assert coarse.size == (fine.size[0] // 4, fine.size[1] // 4) and coarse.resolution == 2.0
    x, y = fine.cell_centers(dtype=torch.float64)
    centers = torch.stack(torch.meshgrid(y, x, indexing="ij")[::-1], -1).reshape(-1, 2)
    points = torch.cat([centers, torch.zeros(len(centers), 1, dtype=torch.float64)], -1)
    rows, columns = torch.meshgrid(torch.arange(fine.size[0]), torch.arange(fine.size[1]), indexing="ij")
    expected = (rows // 4 * coarse.size[1] + columns // 4).reshape(-1)
    assert torch.equal(coarse.cell_of(points), expected)


@pytest.mark.parametrize("kwargs, field", [
    ({"x_range": (1.0, -1.0), "y_range": (-1.0, 1.0), "resolution": 0.5}, "x_range"),
    ({"x_range": (-1.0, 1.0), "y_range": (2.0, 2.0), "resolution": 0.5}, "y_range"),
    ({"x_range": (-1.0, 1.0), "y_range": (-1.0, 1.0), "resolution": 0.0}, "resolution"),
    ({"x_range": (-1.0, 1.0), "y_range": (-1.0, 1.0), "resolution": 0.5, "z_range": (3.0, -3.0)}, "z_range"),
])
def test_a_bad_grid_is_refused_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        BevGrid(**kwargs)


def test_depth_bin_index_is_the_brute_force_bin():
    bins = DepthBins(1.0, 60.0, 0.5)
    assert bins.count == 118 and len(bins.centers) == 118
    depths = torch.cat([torch.linspace(-2.0, 65.0, 1001, dtype=torch.float64),
                        torch.tensor([0.0, 1.0, 59.5, 60.0, 0.999], dtype=torch.float64)])

    def brute(depth: float) -> int:
        if depth <= 0:
            return -1
        return next((k for k in range(bins.count) if 1.0 + k * 0.5 <= depth < 1.0 + (k + 1) * 0.5), -1)

    expected = torch.tensor([brute(d) for d in depths.tolist()])
    assert torch.equal(bins.index_of(depths), expected)
    # Each bin's centre lies in that bin.
    assert torch.equal(bins.index_of(torch.tensor(bins.centers, dtype=torch.float64)), torch.arange(bins.count))
    assert math.isclose(bins.centers[0], 1.25) and math.isclose(bins.centers[-1], 59.75)


def test_bad_depth_bins_are_refused():
    for bad in ((0.0, 10.0, 1.0), (5.0, 4.0, 1.0), (1.0, 10.0, 0.0)):
        with pytest.raises(ValueError, match="depth bins"):
            DepthBins(*bad)
