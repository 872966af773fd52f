import logging
import sys

import pytest
import torch

from geomim_hf.modeling.ops import bev_pool, pool_indices, resolve_backend, scatter_pool
from tests.helpers import devices, skip_unless_kernel_runs

BACKENDS = ["torch", "triton"]  # triton runs under TRITON_INTERPRET=1 on the CPU (set in conftest)


def _problem(dtype=torch.float64, seed=0, shape=(2, 3, 5, 4, 6), channels=7, grid=(8, 9), device="cpu"):
    generator = torch.Generator().manual_seed(seed)
    batch, views, bins, height, width = shape
    depth = torch.rand(shape, generator=generator, dtype=dtype).to(device).requires_grad_()
    context = torch.randn(batch, views, channels, height, width, generator=generator, dtype=dtype).to(device)
    cells = torch.randint(-1, grid[0] * grid[1], shape, generator=generator).to(device)  # -1: outside the grid
    return depth, context.requires_grad_(), cells, grid


def _loop(depth, context, cells, grid):
    """Slow and obviously right."""
    batch, views, bins, height, width = depth.shape
    depth, context, cells = depth.cpu(), context.cpu(), cells.cpu()
    out = torch.zeros(batch, context.shape[2], grid[0] * grid[1], dtype=context.dtype)
    for b in range(batch):
        for n in range(views):
            for d in range(bins):
                for h in range(height):
                    for w in range(width):
                        cell = int(cells[b, n, d, h, w])
                        if cell >= 0:
                            out[b, :, cell] = out[b, :, cell] + depth[b, n, d, h, w] * context[b, n, :, h, w]
    return out.reshape(batch, -1, *grid)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", BACKENDS)
def test_bev_pool_matches_loop_in_values_and_gradients(backend, device):
    skip_unless_kernel_runs(backend, device)
    depth, context, cells, grid = _problem(device=device)
    indices = pool_indices(cells, grid[0] * grid[1])
    actual = bev_pool(depth, context, indices, grid, backend=backend)
    assert actual.device.type == device
    expected = _loop(depth, context, cells, grid).to(device)
    torch.testing.assert_close(actual, expected)
    weights = torch.randn_like(expected)
    grads = [torch.autograd.grad((t * weights).sum(), (depth, context)) for t in (actual, expected)]
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference)


def test_scatter_pool_matches_loop_in_values_and_gradients():
    """The exporters' pooling (every point scattered, a spill cell for the -1s) is the same sum as the loop's."""
    depth, context, cells, grid = _problem()
    actual = scatter_pool(depth, context, cells, grid)
    expected = _loop(depth, context, cells, grid)
    torch.testing.assert_close(actual, expected)
    weights = torch.randn_like(expected)
    grads = [torch.autograd.grad((t * weights).sum(), (depth, context)) for t in (actual, expected)]
    for ours, reference in zip(*grads):
        torch.testing.assert_close(ours, reference)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck(backend, device):
    skip_unless_kernel_runs(backend, device)
    depth, context, cells, grid = _problem(shape=(1, 2, 3, 2, 3), channels=3, grid=(3, 3), seed=1, device=device)
    indices = pool_indices(cells, 9)
    assert torch.autograd.gradcheck(lambda d, c: bev_pool(d, c, indices, grid, backend=backend), (depth, context))


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_accumulates_in_float32(backend, device):
    skip_unless_kernel_runs(backend, device)
    depth, context, cells, grid = _problem(dtype=torch.float32, shape=(1, 6, 30, 4, 11), channels=16, grid=(16, 16),
                                           device=device)
    cells = cells.clamp(max=3)  # many points per cell: where bf16 accumulation would drift
    indices = pool_indices(cells, grid[0] * grid[1])
    reference = bev_pool(depth, context, indices, grid, backend="torch")
    half = bev_pool(depth.bfloat16(), context.bfloat16(), indices, grid, backend=backend)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), reference, atol=0.5, rtol=2e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the model-scale kernel check runs on a GPU (the CPU "
                    "tests above cover the same code under the Triton interpreter)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_torch_at_model_scale_on_cuda(dtype):
    """Swin-B finetuning's shape (6 views, 59 depth bins, 16 x 44 features, 80 channels, 128 x 128 cells):
    long runs per cell and many intervals, where indexing or block-size mistakes would show."""
    depth, context, cells, grid = _problem(dtype=torch.float32, shape=(2, 6, 59, 16, 44), channels=80,
                                           grid=(128, 128), device="cuda")
    depth, context = depth.detach().to(dtype).requires_grad_(), context.detach().to(dtype).requires_grad_()
    indices = pool_indices(cells, grid[0] * grid[1])
    outputs, gradients = {}, {}
    for backend in BACKENDS:
        outputs[backend] = bev_pool(depth, context, indices, grid, backend=backend)
        gradients[backend] = torch.autograd.grad(outputs[backend].float().square().sum(), (depth, context))
    tolerance = dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=0.1, rtol=2e-2)
    torch.testing.assert_close(outputs["triton"], outputs["torch"], **tolerance)
    for ours, reference in zip(gradients["triton"], gradients["torch"]):
        torch.testing.assert_close(ours, reference, **tolerance)


def test_sparse_layout_is_a_valid_csr_of_the_points():
    """The PyTorch path's matrices satisfy torch's CSR invariants (sorted, distinct columns per row: two depth
    bins of one pixel in one cell merge into one entry), and each entry's weight is the depth summed over its
    points, recomputed by brute force."""
    depth, context, cells, grid = _problem(dtype=torch.float64, shape=(2, 2, 6, 3, 4), grid=(3, 3))
    cells = cells.clamp(max=4)  # crowded cells: many repeated (cell, row) pairs
    indices = pool_indices(cells, grid[0] * grid[1])
    rows, num_entries = 2 * 2 * 3 * 4, len(indices.entry_context)
    assert num_entries < len(indices.ranks_depth)  # some entries merge points
    torch.sparse_csr_tensor(indices.entry_offsets, indices.entry_context, torch.ones(num_entries),
                            size=(indices.num_cells, rows), check_invariants=True)
    torch.sparse_csr_tensor(indices.transpose_offsets, indices.transpose_cell, torch.ones(num_entries),
                            size=(rows, indices.num_cells), check_invariants=True)
    flat_depth, batch, views, bins, height, width = depth.detach().reshape(-1), *cells.shape
    expected = {}
    for point in torch.nonzero(cells.reshape(-1) >= 0).squeeze(1).tolist():
        b, n, d, pixel = point // (views * bins * height * width), point // (bins * height * width) % views, \
            point // (height * width) % bins, point % (height * width)
        key = (b * grid[0] * grid[1] + int(cells.reshape(-1)[point]), (b * views + n) * height * width + pixel)
        expected[key] = expected.get(key, 0.0) + float(flat_depth[point])
    entry_cells = torch.repeat_interleave(torch.arange(indices.num_cells), torch.diff(indices.entry_offsets))
    weights = torch.zeros(num_entries, dtype=torch.float64).index_add_(0, indices.point_entry,
                                                                        flat_depth[indices.ranks_depth])
    actual = {(int(c), int(r)): float(w) for c, r, w in zip(entry_cells, indices.entry_context, weights)}
    assert actual.keys() == expected.keys()
    assert all(abs(actual[k] - expected[k]) < 1e-12 for k in expected)


@pytest.mark.parametrize("device", devices())
def test_autocast_leaves_the_pooling_in_its_own_precision(device):
    """Under autocast (--mixed-precision bf16) the pooling of float32 inputs is the float32 pooling, forward
    and backward: the op accumulates in its weights' dtype (on the CPU, autocast's bf16 sparse matmul does
    not even exist)."""
    depth, context, cells, grid = _problem(dtype=torch.float32, device=device)
    indices = pool_indices(cells, grid[0] * grid[1])
    plain = bev_pool(depth, context, indices, grid, backend="torch")
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
        mixed = bev_pool(depth, context, indices, grid, backend="torch")
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
    weights = torch.randn_like(plain)
    for ours, reference in zip(*(torch.autograd.grad((t * weights).sum(), (depth, context)) for t in (mixed, plain))):
        torch.testing.assert_close(ours, reference)


def test_empty_grid_and_compile():
    depth, context, cells, grid = _problem(dtype=torch.float32)
    empty = pool_indices(torch.full_like(cells, -1), grid[0] * grid[1])
    assert bev_pool(depth, context, empty, grid, backend="torch").abs().sum() == 0
    indices = pool_indices(cells, grid[0] * grid[1])
    compiled = torch.compile(lambda d, c: bev_pool(d, c, indices, grid, backend="torch"), backend="aot_eager",
                             fullgraph=True)
    torch.testing.assert_close(compiled(depth, context), bev_pool(depth, context, indices, grid, backend="torch"))


def test_backend_resolution(monkeypatch, caplog):
    with caplog.at_level(logging.DEBUG, logger="geomim_hf.modeling.ops.bev_pool"):
        assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert "kernel_backend='auto' on cuda runs the triton kernel" in caplog.text
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    assert resolve_backend("triton", torch.device("cpu")) == "triton"
    with pytest.raises(ValueError, match="kernel backend must be one of"):
        resolve_backend("cuda", torch.device("cpu"))
    monkeypatch.setitem(sys.modules, "triton", None)  # as if triton were not installed
    with pytest.raises(RuntimeError, match=r"kernel_backend='triton' needs the triton package \(pip install triton\)"):
        resolve_backend("triton", torch.device("cuda"))
    assert resolve_backend("auto", torch.device("cuda")) == "torch"
