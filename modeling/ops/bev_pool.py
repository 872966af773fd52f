"""BEV pooling for Lift-Splat-Shoot, as a ``torch.library`` custom op.

Every frustum point (view n, depth bin d, pixel h, w) carries ``depth[d] * context[:]`` into one
BEV cell; the op sums them per cell without materialising the (B, N, D, H, W, C) lifted tensor
(the BEVPoolv2 idea). Both implementations work on the distinct (cell, context row) pairs that
:func:`pool_indices` computes once per camera geometry: sparse CSR products in PyTorch (anywhere), and
Triton kernels for CUDA (also runnable on the CPU under ``TRITON_INTERPRET=1``); the tests hold both to
a brute-force loop. Both are differentiable in depth and context, and work with ``torch.compile`` and
bf16 (accumulation is in float32).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)
_announced: set[tuple[str, str, str]] = set()

BACKENDS = ("auto", "torch", "triton")
# The CSR products used here are stable; torch warns once per process that sparse CSR support is beta.
warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")


@dataclass(frozen=True)
class BevPoolIndices:
    """Which depth and context entries feed which BEV cell, sorted by cell, then by context row.

    ranks_depth: (M,) flat index into depth (B, N, D, H, W); ranks_context: (M,) flat index into the
    context rows (B, N, H, W); ranks_cell: (M,) flat index into the output (B, Y * X), ascending;
    interval_starts, interval_lengths: (I,) runs of equal ``ranks_cell``; num_cells: B * Y * X.

    The same pooling as a sparse (cells x context rows) matrix, for the PyTorch implementation. Its E entries
    are the distinct (cell, row) pairs (two depth bins of one pixel can fall in one cell): point_entry (M,) the
    entry of each point; entry_offsets (B * Y * X + 1,) and entry_context (E,) its CSR row pointers and columns;
    transpose_order (E,), transpose_offsets (B * N * H * W + 1,) and transpose_cell (E,) the same for its
    transpose (entries in row-major order of the transpose).
    """

    ranks_depth: torch.Tensor
    ranks_context: torch.Tensor
    ranks_cell: torch.Tensor
    interval_starts: torch.Tensor
    interval_lengths: torch.Tensor
    point_entry: torch.Tensor
    entry_offsets: torch.Tensor
    entry_context: torch.Tensor
    transpose_order: torch.Tensor
    transpose_offsets: torch.Tensor
    transpose_cell: torch.Tensor
    num_cells: int

    def to(self, device) -> "BevPoolIndices":
        return BevPoolIndices(*(getattr(self, name).to(device) for name in TENSOR_FIELDS), self.num_cells)


TENSOR_FIELDS = ("ranks_depth", "ranks_context", "ranks_cell", "interval_starts", "interval_lengths", "point_entry",
                 "entry_offsets", "entry_context", "transpose_order", "transpose_offsets", "transpose_cell")


# What the op reads (the rest is BEVPoolv2's point-level layout: benchmarks/bev_pool.py's peer and the tests).
OP_FIELDS = ("ranks_depth", "point_entry", "entry_offsets", "entry_context", "transpose_order", "transpose_offsets",
             "transpose_cell")


def _offsets(sorted_keys: torch.Tensor, count: int) -> torch.Tensor:
    """CSR row pointers (count + 1,) of ascending keys in [0, count)."""
    return torch.cat([sorted_keys.new_zeros(1), torch.bincount(sorted_keys, minlength=count).cumsum(0)])


def _starts(sorted_keys: torch.Tensor) -> torch.Tensor:
    """(K,) bool: where a run of equal sorted keys begins."""
    return torch.diff(sorted_keys, prepend=sorted_keys[:1] - 1) != 0


def pool_indices(cell_index: torch.Tensor, cells_per_sample: int) -> BevPoolIndices:
    """Build :class:`BevPoolIndices` from the cell of every frustum point.

    cell_index: (B, N, D, H, W) long, the flat BEV cell (y * X + x) of each point, -1 outside the grid.
    """
    batch, views, depth_bins, height, width = cell_index.shape
    num_cells, num_rows = batch * cells_per_sample, batch * views * height * width
    flat = cell_index.reshape(-1)
    ranks_depth = torch.nonzero(flat >= 0).squeeze(1)
    b, rest = ranks_depth // (views * depth_bins * height * width), ranks_depth % (views * depth_bins * height * width)
    n, rest = rest // (depth_bins * height * width), rest % (depth_bins * height * width)
    pixel = rest % (height * width)
    ranks_context = (b * views + n) * height * width + pixel
    ranks_cell = b * cells_per_sample + flat[ranks_depth]
    key = ranks_cell * num_rows + ranks_context  # (cell, row), lexicographic
    order = torch.argsort(key, stable=True)
    ranks_depth, ranks_context, ranks_cell, key = (t[order] for t in (ranks_depth, ranks_context, ranks_cell, key))
    starts = torch.nonzero(_starts(ranks_cell)).squeeze(1)
    lengths = torch.diff(starts, append=starts.new_tensor([len(ranks_cell)]))
    new_entry = _starts(key)
    point_entry = new_entry.cumsum(0) - 1
    entry_cell, entry_context = ranks_cell[new_entry], ranks_context[new_entry]
    transpose_order = torch.argsort(entry_context * num_cells + entry_cell, stable=True)
    return BevPoolIndices(ranks_depth, ranks_context, ranks_cell, starts, lengths, point_entry,
                          _offsets(entry_cell, num_cells), entry_context, transpose_order,
                          _offsets(entry_context[transpose_order], num_rows), entry_cell[transpose_order], num_cells)


# PyTorch implementation -----------------------------------------------------------------------


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types accumulate in float32; float32 and float64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _weights(depth, ranks_depth, point_entry, num_entries: int, dtype) -> torch.Tensor:
    """(E,) the depth weight of each distinct (cell, row) entry: its points' depths summed."""
    return torch.zeros(num_entries, dtype=dtype, device=depth.device).index_add_(
        0, point_entry, depth.to(dtype)[ranks_depth])


def _forward_torch(weights, context, entry_offsets, entry_context, num_cells):
    """The pooling as a sparse (cells x context rows) matrix of entry weights times the context rows: CSR
    SpMM never materialises the (M, C) products (2 ms against 38 ms for BEVPoolv2's gather-and-sum at Swin-B's
    finetuning splat on 2 CPU cores, benchmarks/bev_pool.py)."""
    matrix = torch.sparse_csr_tensor(entry_offsets, entry_context, weights, size=(num_cells, context.shape[0]),
                                     check_invariants=False)  # valid by construction (pool_indices)
    with torch.autocast(context.device.type, enabled=False):  # the op accumulates in weights.dtype, not autocast's
        return (matrix @ context.to(weights.dtype)).to(context.dtype)


def _backward_torch(grad_out, weights, context, entry_offsets, entry_context, transpose_order, transpose_offsets,
                    transpose_cell):
    """grad_context = weights^T @ grad_out through the transpose's CSR; each entry's <grad_out[cell],
    context[row]>, a sampled dense-dense product on the weights' pattern. Returns (grad_context, dots (E,))."""
    grad, rows = grad_out.to(weights.dtype), context.to(weights.dtype)
    transpose = torch.sparse_csr_tensor(transpose_offsets, transpose_cell, weights[transpose_order],
                                        size=(rows.shape[0], grad.shape[0]), check_invariants=False)
    pattern = torch.sparse_csr_tensor(entry_offsets, entry_context, torch.ones_like(weights),
                                      size=(grad.shape[0], rows.shape[0]), check_invariants=False)
    with torch.autocast(grad.device.type, enabled=False):  # as the forward: in weights.dtype
        dots = torch.sparse.sampled_addmm(pattern, grad, rows.t(), beta=0.0).values()
        return (transpose @ grad).to(context.dtype), dots


# The op -----------------------------------------------------------------------------------------


@torch.library.custom_op("geomim::bev_pool", mutates_args=())
def bev_pool_op(
    depth: torch.Tensor,
    context: torch.Tensor,
    ranks_depth: torch.Tensor,
    point_entry: torch.Tensor,
    entry_offsets: torch.Tensor,
    entry_context: torch.Tensor,
    transpose_order: torch.Tensor,
    transpose_offsets: torch.Tensor,
    transpose_cell: torch.Tensor,
    num_cells: int,
    backend: str,
) -> torch.Tensor:
    """depth: (P_d,) flat; context: (P_c, C) rows; the rest as :class:`BevPoolIndices` (the transpose's for the
    backward). Returns (num_cells, C)."""
    weights = _weights(depth, ranks_depth, point_entry, len(entry_context), accumulation_dtype(context.dtype))
    if backend == "triton":
        from .bev_pool_triton import forward_triton

        return forward_triton(weights, context, entry_offsets, entry_context, num_cells, weights.dtype)
    return _forward_torch(weights, context, entry_offsets, entry_context, num_cells)


@bev_pool_op.register_fake
def _(depth, context, ranks_depth, point_entry, entry_offsets, entry_context, transpose_order, transpose_offsets,
      transpose_cell, num_cells, backend):
    return context.new_empty((num_cells, context.shape[1]))


@torch.library.custom_op("geomim::bev_pool_backward", mutates_args=())
def bev_pool_backward_op(
    grad_out: torch.Tensor,
    depth: torch.Tensor,
    context: torch.Tensor,
    ranks_depth: torch.Tensor,
    point_entry: torch.Tensor,
    entry_offsets: torch.Tensor,
    entry_context: torch.Tensor,
    transpose_order: torch.Tensor,
    transpose_offsets: torch.Tensor,
    transpose_cell: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    weights = _weights(depth, ranks_depth, point_entry, len(entry_context), accumulation_dtype(context.dtype))
    if backend == "triton":
        from .bev_pool_triton import backward_triton

        grad_context, dots = backward_triton(grad_out, weights, context, transpose_order, transpose_offsets,
                                             transpose_cell, weights.dtype)
    else:
        grad_context, dots = _backward_torch(grad_out, weights, context, entry_offsets, entry_context,
                                             transpose_order, transpose_offsets, transpose_cell)
    grad_depth = torch.zeros(depth.shape, dtype=weights.dtype, device=depth.device)
    grad_depth[ranks_depth] = dots[point_entry]  # every point of an entry has the entry's gradient
    return grad_depth.to(depth.dtype), grad_context


@bev_pool_backward_op.register_fake
def _(grad_out, depth, context, ranks_depth, point_entry, entry_offsets, entry_context, transpose_order,
      transpose_offsets, transpose_cell, backend):
    return torch.empty_like(depth), torch.empty_like(context)


def _setup_context(ctx, inputs, output):
    *tensors, _, backend = inputs
    ctx.save_for_backward(*tensors)
    ctx.backend = backend


def _backward(ctx, grad_out):
    grad_depth, grad_context = bev_pool_backward_op(grad_out.contiguous(), *ctx.saved_tensors, ctx.backend)
    return grad_depth, grad_context, *([None] * 9)


bev_pool_op.register_autograd(_backward, setup_context=_setup_context)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` picks Triton on CUDA when it imports, else the PyTorch implementation."""
    if backend not in BACKENDS:
        raise ValueError(f"kernel backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return "torch"
    try:
        import triton  # noqa: F401
    except ImportError as error:
        if backend == "triton":
            raise RuntimeError("kernel_backend='triton' needs the triton package (pip install triton); "
                               "use kernel_backend='torch' or 'auto' to run without it") from error
        return "torch"
    picked = "triton" if backend == "triton" or device.type == "cuda" else "torch"
    if (backend, device.type, picked) not in _announced:  # once per choice, not per forward
        _announced.add((backend, device.type, picked))
        logger.debug(f"bev_pool: kernel_backend={backend!r} on {device.type} runs the {picked} kernel")
    return picked


def bev_pool(depth: torch.Tensor, context: torch.Tensor, indices: BevPoolIndices, grid_size: tuple[int, int],
             backend: str = "auto") -> torch.Tensor:
    """Splat lifted features into the BEV grid.

    B batch, N views, D depth bins, C channels, H x W feature grid, Y x X BEV grid.
    depth: (B, N, D, H, W) per-pixel depth distribution; context: (B, N, C, H, W);
    indices: from :func:`pool_indices`. Returns (B, C, Y, X).
    """
    batch, views, channels, height, width = context.shape
    rows = context.permute(0, 1, 3, 4, 2).reshape(batch * views * height * width, channels)  # (B*N*H*W, C)
    out = bev_pool_op(depth.reshape(-1), rows.contiguous(), *(getattr(indices, name) for name in OP_FIELDS),
                      indices.num_cells, resolve_backend(backend, context.device))
    return out.reshape(batch, grid_size[0], grid_size[1], channels).permute(0, 3, 1, 2).contiguous()


def scatter_pool(depth: torch.Tensor, context: torch.Tensor, cell_index: torch.Tensor,
                 grid_size: tuple[int, int]) -> torch.Tensor:
    """The same pooling as :func:`bev_pool` from the cell of every frustum point, for exporters: one indexed add
    (ONNX ``ScatterElements``, reduction ``add``) with no sort, no precomputed indices and no custom op, so the
    geometry can be a graph input. It materialises the lifted (B * N*D*H*W, C) products that the op avoids, and
    their (B * N*D*H*W, C) int64 indices.

    Not ``index_put_``/``index_add`` (ONNX ``ScatterND``): onnxruntime's CPU ``ScatterND`` adds the index rows on
    several threads with an unguarded ``+=``, so points sharing a cell lose updates now and then (seen in CI: 3e-3 of
    a heatmap), while its ``ScatterElements`` gives each thread its own channels and adds their points in order.

    depth: (B, N, D, H, W); context: (B, N, C, H, W); cell_index: (B, N, D, H, W) long, the flat cell ``y * X + x``,
    -1 outside the grid. Returns (B, C, Y, X).
    """
    batch, views, channels, height, width = context.shape
    num_cells = grid_size[0] * grid_size[1]
    cells = torch.where(cell_index < 0, num_cells, cell_index).reshape(batch, -1)  # outside: one spill cell a sample
    rows = (cells + torch.arange(batch, device=cells.device)[:, None] * (num_cells + 1)).reshape(-1)  # (B * P,)
    lifted = depth.unsqueeze(3) * context.unsqueeze(2)  # (B, N, D, C, H, W)
    lifted = lifted.permute(0, 1, 2, 4, 5, 3).reshape(-1, channels).to(accumulation_dtype(context.dtype))
    out = lifted.new_zeros(batch * (num_cells + 1), channels).scatter_add_(0, rows[:, None].expand_as(lifted), lifted)
    out = out.view(batch, num_cells + 1, channels)[:, :num_cells]
    return out.to(context.dtype).reshape(batch, *grid_size, channels).permute(0, 3, 1, 2)
