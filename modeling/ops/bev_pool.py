"""BEV pooling for Lift-Splat-Shoot, as a ``torch.library`` custom op.

Every frustum point (view n, depth bin d, pixel h, w) carries ``depth[d] * context[:]`` into one
BEV cell; the op sums them per cell without materialising the (B, N, D, H, W, C) lifted tensor
(the BEVPoolv2 idea). Two implementations: a pure-PyTorch reference that runs anywhere and is what
the tests compare against, and a Triton kernel for CUDA (also runnable on the CPU under
``TRITON_INTERPRET=1``). Both are differentiable in depth and context, and work with
``torch.compile`` and bf16 (accumulation is in float32).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)
_announced: set[tuple[str, str, str]] = set()

BACKENDS = ("auto", "torch", "triton")


@dataclass(frozen=True)
class BevPoolIndices:
    """Which depth and context entries feed which BEV cell, sorted by cell.

    ranks_depth: (M,) flat index into depth (B, N, D, H, W); ranks_context: (M,) flat index into the
    context rows (B, N, H, W); ranks_cell: (M,) flat index into the output (B, Y * X), ascending;
    interval_starts, interval_lengths: (I,) runs of equal ``ranks_cell``; num_cells: B * Y * X.
    """

    ranks_depth: torch.Tensor
    ranks_context: torch.Tensor
    ranks_cell: torch.Tensor
    interval_starts: torch.Tensor
    interval_lengths: torch.Tensor
    num_cells: int

    def to(self, device) -> "BevPoolIndices":
        return BevPoolIndices(*(t.to(device) for t in (self.ranks_depth, self.ranks_context, self.ranks_cell,
                                                         self.interval_starts, self.interval_lengths)),
                              self.num_cells)


def pool_indices(cell_index: torch.Tensor, cells_per_sample: int) -> BevPoolIndices:
    """Build :class:`BevPoolIndices` from the cell of every frustum point.

    cell_index: (B, N, D, H, W) long, the flat BEV cell (y * X + x) of each point, -1 outside the grid.
    """
    batch, views, depth_bins, height, width = cell_index.shape
    flat = cell_index.reshape(-1)
    ranks_depth = torch.nonzero(flat >= 0).squeeze(1)
    b, rest = ranks_depth // (views * depth_bins * height * width), ranks_depth % (views * depth_bins * height * width)
    n, rest = rest // (depth_bins * height * width), rest % (depth_bins * height * width)
    pixel = rest % (height * width)
    ranks_context = (b * views + n) * height * width + pixel
    ranks_cell = b * cells_per_sample + flat[ranks_depth]
    order = torch.argsort(ranks_cell, stable=True)
    ranks_depth, ranks_context, ranks_cell = ranks_depth[order], ranks_context[order], ranks_cell[order]
    if len(ranks_cell):
        starts = torch.nonzero(torch.diff(ranks_cell, prepend=ranks_cell[:1] - 1) != 0).squeeze(1)
        lengths = torch.diff(starts, append=torch.tensor([len(ranks_cell)], device=starts.device))
    else:
        starts = lengths = ranks_cell.new_zeros(0)
    return BevPoolIndices(ranks_depth, ranks_context, ranks_cell, starts, lengths, batch * cells_per_sample)


# Reference implementation ---------------------------------------------------------------------


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """Half types accumulate in float32; float32 and float64 in themselves."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _forward_torch(depth, context, ranks_depth, ranks_context, ranks_cell, num_cells):
    accumulate = accumulation_dtype(context.dtype)
    contributions = depth.to(accumulate)[ranks_depth, None] * context.to(accumulate)[ranks_context]  # (M, C)
    out = torch.zeros(num_cells, context.shape[1], dtype=accumulate, device=context.device)
    return out.index_add_(0, ranks_cell, contributions).to(context.dtype)


def _backward_torch(grad_out, depth, context, ranks_depth, ranks_context, ranks_cell):
    accumulate = accumulation_dtype(context.dtype)
    grad_rows = grad_out.to(accumulate)[ranks_cell]  # (M, C)
    grad_depth = torch.zeros(depth.shape, dtype=accumulate, device=depth.device)
    grad_depth[ranks_depth] = (grad_rows * context.to(accumulate)[ranks_context]).sum(1)
    grad_context = torch.zeros(context.shape, dtype=accumulate, device=context.device)
    grad_context.index_add_(0, ranks_context, grad_rows * depth.to(accumulate)[ranks_depth, None])
    return grad_depth.to(depth.dtype), grad_context.to(context.dtype)


# The op -----------------------------------------------------------------------------------------


@torch.library.custom_op("geomim::bev_pool", mutates_args=())
def bev_pool_op(
    depth: torch.Tensor,
    context: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_context: torch.Tensor,
    ranks_cell: torch.Tensor,
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
    num_cells: int,
    backend: str,
) -> torch.Tensor:
    """depth: (P_d,) flat; context: (P_c, C) rows. Returns (num_cells, C)."""
    if backend == "triton":
        from .bev_pool_triton import forward_triton

        return forward_triton(depth, context, ranks_depth, ranks_context, ranks_cell, interval_starts,
                              interval_lengths, num_cells, accumulation_dtype(context.dtype))
    return _forward_torch(depth, context, ranks_depth, ranks_context, ranks_cell, num_cells)


@bev_pool_op.register_fake
def _(depth, context, ranks_depth, ranks_context, ranks_cell, interval_starts, interval_lengths, num_cells, backend):
    return context.new_empty((num_cells, context.shape[1]))


@torch.library.custom_op("geomim::bev_pool_backward", mutates_args=())
def bev_pool_backward_op(
    grad_out: torch.Tensor,
    depth: torch.Tensor,
    context: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_context: torch.Tensor,
    ranks_cell: torch.Tensor,
    backend: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .bev_pool_triton import backward_triton

        return backward_triton(grad_out, depth, context, ranks_depth, ranks_context, ranks_cell,
                               accumulation_dtype(context.dtype))
    return _backward_torch(grad_out, depth, context, ranks_depth, ranks_context, ranks_cell)


@bev_pool_backward_op.register_fake
def _(grad_out, depth, context, ranks_depth, ranks_context, ranks_cell, backend):
    return torch.empty_like(depth), torch.empty_like(context)


def _setup_context(ctx, inputs, output):
    depth, context, ranks_depth, ranks_context, ranks_cell, _, _, _, backend = inputs
    ctx.save_for_backward(depth, context, ranks_depth, ranks_context, ranks_cell)
    ctx.backend = backend


def _backward(ctx, grad_out):
    depth, context, ranks_depth, ranks_context, ranks_cell = ctx.saved_tensors
    grad_depth, grad_context = bev_pool_backward_op(grad_out.contiguous(), depth, context, ranks_depth,
                                                    ranks_context, ranks_cell, ctx.backend)
    return grad_depth, grad_context, None, None, None, None, None, None, None


bev_pool_op.register_autograd(_backward, setup_context=_setup_context)


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` picks Triton on CUDA when it imports, else the PyTorch reference."""
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
    out = bev_pool_op(depth.reshape(-1), rows.contiguous(), indices.ranks_depth, indices.ranks_context,
                      indices.ranks_cell, indices.interval_starts, indices.interval_lengths, indices.num_cells,
                      resolve_backend(backend, context.device))
    return out.reshape(batch, grid_size[0], grid_size[1], channels).permute(0, 3, 1, 2).contiguous()
