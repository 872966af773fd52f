"""Triton kernels of the BEV pooling op (see :mod:`.bev_pool`). Imported only when used, so the
package runs without Triton; ``TRITON_INTERPRET=1`` runs them on the CPU for testing.

Both work on the distinct (cell, context row) entries of :class:`.BevPoolIndices`, whose weights are the depths of
their points summed: the forward reads each cell's entries (sorted by cell), the backward each context row's
entries (the transpose's order, computed once per geometry in ``pool_indices``). Neither uses atomics, so the
gradients are deterministic, and the backward needs no sort (BEVPoolv2 sorts the points by context row on every
backward)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _forward_kernel(weights_ptr, context_ptr, entry_offsets_ptr, entry_context_ptr, out_ptr, channels,
                    BLOCK_C: tl.constexpr, ACCUMULATE: tl.constexpr):
    """One program per (cell, block of channels): out[cell] = sum over its entries of weight x context row."""
    cell = tl.program_id(0).to(tl.int64)
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channel < channels
    start = tl.load(entry_offsets_ptr + cell)
    stop = tl.load(entry_offsets_ptr + cell + 1)
    accumulator = tl.zeros((BLOCK_C,), dtype=ACCUMULATE)
    for entry in range(start, stop):
        weight = tl.load(weights_ptr + entry).to(ACCUMULATE)
        row = tl.load(entry_context_ptr + entry).to(tl.int64)
        values = tl.load(context_ptr + row * channels + channel, mask=channel_mask, other=0.0).to(ACCUMULATE)
        accumulator += weight * values
    tl.store(out_ptr + cell * channels + channel, accumulator, mask=channel_mask)


@triton.jit
def _backward_kernel(grad_out_ptr, weights_ptr, context_ptr, transpose_order_ptr, transpose_offsets_ptr,
                     transpose_cell_ptr, grad_context_ptr, dots_ptr, channels, BLOCK_C: tl.constexpr,
                     ACCUMULATE: tl.constexpr):
    """One program per context row: its gradient, sum over its entries of weight x grad_out[cell], and each
    entry's <grad_out[cell], context[row]> (the depth gradient of the entry's points). BLOCK_C covers every
    channel."""
    row = tl.program_id(0).to(tl.int64)
    channel = tl.arange(0, BLOCK_C)
    channel_mask = channel < channels
    values = tl.load(context_ptr + row * channels + channel, mask=channel_mask, other=0.0).to(ACCUMULATE)
    start = tl.load(transpose_offsets_ptr + row)
    stop = tl.load(transpose_offsets_ptr + row + 1)
    accumulator = tl.zeros((BLOCK_C,), dtype=ACCUMULATE)
    for position in range(start, stop):
        entry = tl.load(transpose_order_ptr + position)
        cell = tl.load(transpose_cell_ptr + position).to(tl.int64)
        grad = tl.load(grad_out_ptr + cell * channels + channel, mask=channel_mask, other=0.0).to(ACCUMULATE)
        accumulator += tl.load(weights_ptr + entry).to(ACCUMULATE) * grad
        tl.store(dots_ptr + entry, tl.sum(grad * values, axis=0))
    tl.store(grad_context_ptr + row * channels + channel, accumulator, mask=channel_mask)


_TRITON_DTYPES = {torch.float32: tl.float32, torch.float64: tl.float64}


def forward_triton(weights, context, entry_offsets, entry_context, num_cells, accumulate: torch.dtype):
    """weights: (E,) entry weights; context: (R, C) rows. Returns (num_cells, C) in context's dtype."""
    channels = context.shape[1]
    out = torch.empty((num_cells, channels), dtype=accumulate, device=context.device)
    if num_cells:
        block = min(triton.next_power_of_2(channels), 128)
        _forward_kernel[(num_cells, triton.cdiv(channels, block))](
            weights.contiguous(), context.contiguous(), entry_offsets, entry_context, out, channels, BLOCK_C=block,
            ACCUMULATE=_TRITON_DTYPES[accumulate])
    return out.to(context.dtype)


def backward_triton(grad_out, weights, context, transpose_order, transpose_offsets, transpose_cell,
                    accumulate: torch.dtype):
    """Returns grad_context (R, C) in context's dtype and the entries' dots (E,) in ``accumulate``."""
    rows, channels = context.shape
    grad_context = torch.empty((rows, channels), dtype=accumulate, device=context.device)
    dots = torch.zeros(len(weights), dtype=accumulate, device=context.device)
    if rows:
        _backward_kernel[(rows,)](grad_out.contiguous(), weights.contiguous(), context.contiguous(), transpose_order,
                                  transpose_offsets, transpose_cell, grad_context, dots, channels,
                                  BLOCK_C=triton.next_power_of_2(channels), ACCUMULATE=_TRITON_DTYPES[accumulate])
    return grad_context.to(context.dtype), dots
