"""Triton kernels of the BEV pooling op (see :mod:`.bev_pool`). Imported only when used, so the
package runs without Triton; ``TRITON_INTERPRET=1`` runs them on the CPU for testing."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

@triton.jit
def _forward_kernel(depth_ptr, context_ptr, ranks_depth_ptr, ranks_context_ptr, ranks_cell_ptr, starts_ptr,
                    lengths_ptr, out_ptr, channels, BLOCK_C: tl.constexpr, ACCUMULATE: tl.constexpr):
    """One program per (interval of points sharing a cell, block of channels): no atomics."""
    interval = tl.program_id(0)
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channel < channels
    start = tl.load(starts_ptr + interval)
    length = tl.load(lengths_ptr + interval)
    accumulator = tl.zeros((BLOCK_C,), dtype=ACCUMULATE)
    for point in range(start, start + length):
        weight = tl.load(depth_ptr + tl.load(ranks_depth_ptr + point)).to(ACCUMULATE)
        row = tl.load(ranks_context_ptr + point).to(tl.int64)
        values = tl.load(context_ptr + row * channels + channel, mask=channel_mask, other=0.0).to(ACCUMULATE)
        accumulator += weight * values
    cell = tl.load(ranks_cell_ptr + start).to(tl.int64)
    tl.store(out_ptr + cell * channels + channel, accumulator, mask=channel_mask)


@triton.jit
def _backward_kernel(grad_out_ptr, depth_ptr, context_ptr, ranks_depth_ptr, ranks_context_ptr, ranks_cell_ptr,
                     grad_depth_ptr, grad_context_ptr, num_points, channels, BLOCK_P: tl.constexpr,
                     BLOCK_C: tl.constexpr, ACCUMULATE: tl.constexpr):
    """One program per block of points: the depth gradient is a per-point dot product (each depth
    entry feeds one point); context rows are shared by all depth bins of a pixel, so their
    gradient is accumulated atomically."""
    point = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    point_mask = point < num_points
    rank_depth = tl.load(ranks_depth_ptr + point, mask=point_mask, other=0).to(tl.int64)
    row = tl.load(ranks_context_ptr + point, mask=point_mask, other=0).to(tl.int64)
    cell = tl.load(ranks_cell_ptr + point, mask=point_mask, other=0).to(tl.int64)
    weight = tl.load(depth_ptr + rank_depth, mask=point_mask, other=0.0).to(ACCUMULATE)
    dot = tl.zeros((BLOCK_P,), dtype=ACCUMULATE)
    for channel_start in range(0, channels, BLOCK_C):
        channel = channel_start + tl.arange(0, BLOCK_C)
        mask = point_mask[:, None] & (channel < channels)[None, :]
        grad = tl.load(grad_out_ptr + cell[:, None] * channels + channel[None, :], mask=mask, other=0.0)
        grad = grad.to(ACCUMULATE)
        values = tl.load(context_ptr + row[:, None] * channels + channel[None, :], mask=mask, other=0.0)
        dot += tl.sum(grad * values.to(ACCUMULATE), axis=1)
        tl.atomic_add(grad_context_ptr + row[:, None] * channels + channel[None, :], grad * weight[:, None],
                      mask=mask)
    tl.store(grad_depth_ptr + rank_depth, dot, mask=point_mask)


_TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def forward_triton(depth, context, ranks_depth, ranks_context, ranks_cell, interval_starts, interval_lengths,
                   num_cells, accumulate: torch.dtype):
    channels = context.shape[1]
    out = torch.zeros((num_cells, channels), dtype=accumulate, device=context.device)
    if len(interval_starts):
        block = min(triton.next_power_of_2(channels), 128)
        grid = (len(interval_starts), triton.cdiv(channels, block))
        _forward_kernel[grid](depth.contiguous(), context.contiguous(), ranks_depth, ranks_context, ranks_cell,
                              interval_starts, interval_lengths, out, channels, BLOCK_C=block,
                              ACCUMULATE=_TRITON_DTYPES[accumulate])
    return out.to(context.dtype)


def backward_triton(grad_out, depth, context, ranks_depth, ranks_context, ranks_cell, accumulate: torch.dtype):
    channels = context.shape[1]
    grad_depth = torch.zeros(depth.shape, dtype=accumulate, device=depth.device)
    grad_context = torch.zeros(context.shape, dtype=accumulate, device=context.device)
    num_points = len(ranks_depth)
    if num_points:
        block_points, block_channels = 64, min(triton.next_power_of_2(channels), 64)
        _backward_kernel[(triton.cdiv(num_points, block_points),)](
            grad_out.contiguous(), depth.contiguous(), context.contiguous(), ranks_depth, ranks_context, ranks_cell,
            grad_depth, grad_context, num_points, channels, BLOCK_P=block_points, BLOCK_C=block_channels,
            ACCUMULATE=_TRITON_DTYPES[accumulate])
    return grad_depth.to(depth.dtype), grad_context.to(context.dtype)
