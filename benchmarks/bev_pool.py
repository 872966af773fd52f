"""Lift-Splat pooling speed: our ``bev_pool`` (Triton kernels and sparse PyTorch products) against BEVPoolv2, the
algorithm BEVDet/BEVDepth ship, and the original Lift-Splat-Shoot cumsum pooling, in the same run; forward and
forward + backward, fp32 and bf16 (CUDA), at finetuning's and pretraining's splat; beside the DRAM floor.

    python benchmarks/bev_pool.py                                  # GPU: both shapes, batch 1 and 4, fp32 and bf16
    python benchmarks/bev_pool.py --device cpu --batch 1 --iters 3 --json out/bev_pool.json

The peers are their published algorithms written here (their code is not a dependency):

- **BEVPoolv2** (Huang and Huang, 2022; BEVDet's ``bev_pool_v2``): frustum points sorted by BEV cell once per
  geometry, intervals of equal cells; forward, one program per (interval, channel block) summing depth x context
  without materialising the lifted tensor; backward, the points sorted again by context row on every call and one
  program per row interval, which writes the row's context gradient and its points' depth gradients. In Triton on
  CUDA; elsewhere in PyTorch (the interval sums as ``segment_reduce``).
- **LSS cumsum**: the lifted (B, N, D, h, w, C) tensor materialised, sorted by cell, summed with the
  cumulative-sum trick.

The DRAM floor is the bytes a pooling must move (depth, context and the sorted indices read once, the BEV map
written once; forward + backward: the gradients as well) over the device's copy bandwidth, measured here. Every
implementation is checked against ours before it is timed.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import device_name, synchronize, write_json  # benchmarks/common.py, beside this script
from geomim_hf import GeoMIMConfig
from geomim_hf.data.geometry import camera_rotation, make_transform
from geomim_hf.synthetic.sensors import NUSCENES_CAMERAS
from geomim_hf.modeling.ops import bev_pool
from geomim_hf.modeling.ops.bev_pool import BevPoolIndices, accumulation_dtype
from geomim_hf.modeling.view_transformer import LiftSplat


def nuscenes_geometry(batch: int, image_size: tuple[int, int], device):
    """intrinsics, ego_from_camera, processed_from_original (B, 6, ...) of the nuScenes rig, images resized
    from 1600 x 900 and bottom-cropped to ``image_size`` as the image processor does."""
    height, width = image_size
    scale = width / 1600
    crop_top = 900 * scale - height
    processed_from_original = torch.tensor([[scale, 0, 0], [0, scale, -crop_top], [0, 0, 1]], dtype=torch.float32)
    intrinsics, ego_from_camera = [], []
    for _, position, yaw, focal, (cx, cy) in NUSCENES_CAMERAS:
        intrinsics.append(torch.tensor([[focal, 0, cx], [0, focal, cy], [0, 0, 1]], dtype=torch.float32))
        ego_from_camera.append(torch.tensor(make_transform(camera_rotation(np.deg2rad(yaw)), np.array(position)),
                                            dtype=torch.float32))
    views = len(NUSCENES_CAMERAS)
    return (torch.stack(intrinsics).expand(batch, -1, -1, -1).to(device),
            torch.stack(ego_from_camera).expand(batch, -1, -1, -1).to(device),
            processed_from_original.expand(batch, views, -1, -1).to(device))


def lss_cumsum_pool(depth, context, cell_index, grid_size):
    """The LSS peer: lifted = depth x context materialised, points outside dropped, sorted by cell,
    summed per cell with the cumulative-sum trick. depth (B, N, D, h, w), context (B, N, C, h, w),
    cell_index (B, N, D, h, w) from ``BevGrid.cell_of``. Returns (B, C, Y, X)."""
    batch, views, channels = context.shape[:3]
    lifted = depth.unsqueeze(-1) * context.permute(0, 1, 3, 4, 2).unsqueeze(2)  # (B, N, D, h, w, C)
    cells_per_sample = grid_size[0] * grid_size[1]
    batch_index = torch.arange(batch, device=depth.device).view(batch, 1, 1, 1, 1).expand_as(cell_index)
    ranks = (batch_index * cells_per_sample + cell_index).reshape(-1)
    keep = cell_index.reshape(-1) >= 0
    ranks, features = ranks[keep], lifted.reshape(-1, channels)[keep]
    order = ranks.argsort()
    ranks, features = ranks[order], features[order]
    sums = features.float().cumsum(0)
    last = torch.ones_like(ranks, dtype=torch.bool)
    last[:-1] = ranks[1:] != ranks[:-1]
    sums, ranks = sums[last], ranks[last]
    sums = torch.cat([sums[:1], sums[1:] - sums[:-1]])
    out = torch.zeros(batch * cells_per_sample, channels, device=depth.device, dtype=torch.float32)
    out[ranks] = sums
    return out.to(context.dtype).view(batch, *grid_size, channels).permute(0, 3, 1, 2)


def bevpool_v2_torch(depth, context, indices: BevPoolIndices, grid_size):
    """BEVPoolv2 in PyTorch: each interval's depth x context summed with ``segment_reduce`` (autograd gives the
    backward). depth (B, N, D, h, w), context (B, N, C, h, w). Returns (B, C, Y, X)."""
    batch, views, channels, height, width = context.shape
    accumulate = accumulation_dtype(context.dtype)
    rows = context.permute(0, 1, 3, 4, 2).reshape(-1, channels).to(accumulate)
    contributions = depth.reshape(-1).to(accumulate)[indices.ranks_depth, None] * rows[indices.ranks_context]
    sums = torch.segment_reduce(contributions, "sum", lengths=indices.interval_lengths)  # (I, C)
    out = torch.zeros(indices.num_cells, channels, dtype=accumulate, device=context.device)
    out[indices.ranks_cell[indices.interval_starts]] = sums
    return out.to(context.dtype).view(batch, *grid_size, channels).permute(0, 3, 1, 2)


def bevpool_v2_triton_function():
    """BEVPoolv2's CUDA kernels as Triton kernels in an autograd function (built on first use: Triton is only
    imported where it runs)."""
    import triton
    import triton.language as tl

    @triton.jit
    def forward_kernel(depth_ptr, feat_ptr, ranks_depth_ptr, ranks_feat_ptr, ranks_bev_ptr, starts_ptr,
                       lengths_ptr, out_ptr, channels, BLOCK_C: tl.constexpr):
        interval = tl.program_id(0)
        channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        keep = channel < channels
        start, length = tl.load(starts_ptr + interval), tl.load(lengths_ptr + interval)
        total = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for point in range(start, start + length):
            weight = tl.load(depth_ptr + tl.load(ranks_depth_ptr + point)).to(tl.float32)
            row = tl.load(ranks_feat_ptr + point).to(tl.int64)
            total += weight * tl.load(feat_ptr + row * channels + channel, mask=keep, other=0.0).to(tl.float32)
        cell = tl.load(ranks_bev_ptr + start).to(tl.int64)
        tl.store(out_ptr + cell * channels + channel, total, mask=keep)

    @triton.jit
    def backward_kernel(grad_out_ptr, depth_ptr, feat_ptr, ranks_depth_ptr, ranks_feat_ptr, ranks_bev_ptr,
                        starts_ptr, lengths_ptr, depth_grad_ptr, feat_grad_ptr, channels, BLOCK_C: tl.constexpr):
        """One program per interval of points sharing a context row (bev_pool_v2_grad_kernel)."""
        interval = tl.program_id(0)
        channel = tl.arange(0, BLOCK_C)
        keep = channel < channels
        start, length = tl.load(starts_ptr + interval), tl.load(lengths_ptr + interval)
        row = tl.load(ranks_feat_ptr + start).to(tl.int64)
        feat = tl.load(feat_ptr + row * channels + channel, mask=keep, other=0.0).to(tl.float32)
        feat_grad = tl.zeros((BLOCK_C,), dtype=tl.float32)
        for point in range(start, start + length):
            cell = tl.load(ranks_bev_ptr + point).to(tl.int64)
            rank_depth = tl.load(ranks_depth_ptr + point)
            grad = tl.load(grad_out_ptr + cell * channels + channel, mask=keep, other=0.0).to(tl.float32)
            tl.store(depth_grad_ptr + rank_depth, tl.sum(grad * feat, axis=0))
            feat_grad += grad * tl.load(depth_ptr + rank_depth).to(tl.float32)
        tl.store(feat_grad_ptr + row * channels + channel, feat_grad, mask=keep)

    class BevPoolV2(torch.autograd.Function):
        @staticmethod
        def forward(ctx, depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths, num_cells):
            channels = feat.shape[1]
            out = torch.zeros(num_cells, channels, dtype=torch.float32, device=feat.device)
            block = min(triton.next_power_of_2(channels), 128)
            forward_kernel[(len(starts), triton.cdiv(channels, block))](
                depth, feat, ranks_depth, ranks_feat, ranks_bev, starts, lengths, out, channels, BLOCK_C=block)
            ctx.save_for_backward(depth, feat, ranks_depth, ranks_feat, ranks_bev)
            return out.to(feat.dtype)

        @staticmethod
        def backward(ctx, grad_out):
            depth, feat, ranks_depth, ranks_feat, ranks_bev = ctx.saved_tensors
            # BEVPoolv2 sorts the points by context row on every backward.
            order = ranks_feat.argsort()
            ranks_depth, ranks_feat, ranks_bev = ranks_depth[order], ranks_feat[order], ranks_bev[order]
            starts = torch.nonzero(torch.diff(ranks_feat, prepend=ranks_feat[:1] - 1) != 0).squeeze(1)
            lengths = torch.diff(starts, append=starts.new_tensor([len(ranks_feat)]))
            depth_grad = torch.zeros(depth.shape, dtype=torch.float32, device=depth.device)
            feat_grad = torch.zeros(feat.shape, dtype=torch.float32, device=feat.device)
            channels = feat.shape[1]
            backward_kernel[(len(starts),)](grad_out.contiguous(), depth, feat, ranks_depth, ranks_feat, ranks_bev,
                                            starts, lengths, depth_grad, feat_grad, channels,
                                            BLOCK_C=triton.next_power_of_2(channels))
            return depth_grad.to(depth.dtype), feat_grad.to(feat.dtype), None, None, None, None, None, None

    def pool(depth, context, indices: BevPoolIndices, grid_size):
        batch, views, channels, height, width = context.shape
        rows = context.permute(0, 1, 3, 4, 2).reshape(-1, channels).contiguous()
        out = BevPoolV2.apply(depth.reshape(-1), rows, indices.ranks_depth, indices.ranks_context,
                              indices.ranks_cell, indices.interval_starts, indices.interval_lengths,
                              indices.num_cells)
        return out.view(batch, *grid_size, channels).permute(0, 3, 1, 2)

    return pool


def copy_bandwidth(device, bytes_: int = 2**28) -> float:
    """Bytes per second of a device-to-device copy (read + write counted)."""
    source = torch.empty(bytes_ // 4, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    seconds = time_ms(lambda: target.copy_(source), device, warmup=2, iters=5) / 1000
    return 2 * bytes_ / seconds


def floor_bytes(depth, context, indices: BevPoolIndices, grid_size, backward: bool) -> int:
    """What a pooling must move: depth, context and the sorted indices read, the BEV map written; with the
    backward, the BEV gradient read again with depth and context, and their gradients written."""
    index_bytes = sum(t.numel() * t.element_size() for t in (indices.ranks_depth, indices.ranks_context,
                                                               indices.ranks_cell, indices.interval_starts,
                                                               indices.interval_lengths))
    inputs = depth.numel() * depth.element_size() + context.numel() * context.element_size()
    output = context.shape[0] * context.shape[2] * grid_size[0] * grid_size[1] * context.element_size()
    forward = inputs + index_bytes + output
    return forward + (output + inputs + index_bytes + inputs if backward else 0)


def time_ms(function, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        function()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(iters):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / iters * 1000


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--shapes", nargs="+", default=["detection", "pretraining"],
                        choices=["detection", "pretraining"])
    parser.add_argument("--no-lss", action="store_true", help="leave out the LSS cumsum peer (slow, memory-hungry)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = GeoMIMConfig.from_preset("geomim-swin-b")
    # Finetuning's and pretraining's splats: (depth bins, context channels, BEV grid).
    shapes = {"detection": (config.detection_depth_bins, config.det_context_channels, config.detection_grid),
              "pretraining": (config.pretraining_depth_bins, config.context_channels, config.pretraining_grid)}
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    cuda = device.type == "cuda"
    bandwidth = copy_bandwidth(device)
    print(f"{device_name(device)}; copy bandwidth {bandwidth / 1e9:.1f} GB/s; 6 views, image {tuple(config.image_size)}, "
          f"stride 16; mean of {args.iters} after {args.warmup}; ms, forward / forward + backward")
    implementations = {f"ours ({backend})": (lambda backend: lambda d, c, i, g: bev_pool(d, c, i, g, backend=backend))(
        backend) for backend in (["triton", "torch"] if cuda else ["torch"])}
    implementations["BEVPoolv2 (triton)" if cuda else "BEVPoolv2 (torch)"] = \
        bevpool_v2_triton_function() if cuda else bevpool_v2_torch
    rows = []
    for shape in args.shapes:
        bins, channels, grid = shapes[shape]
        splat = LiftSplat(config.image_size, 16, depth_bins=bins, grid=grid)
        for batch in args.batch:
            geometry = nuscenes_geometry(batch, config.image_size, device)
            cells = grid.cell_of(splat.points_ego(*geometry))  # (B, N, D, h, w)
            indices = splat.indices(*geometry)
            generator = torch.Generator(device=device).manual_seed(0)
            for dtype in dtypes:
                depth = torch.rand(cells.shape, generator=generator, device=device).softmax(2).to(dtype)
                context = torch.randn(*cells.shape[:2], channels, *cells.shape[3:], generator=generator,
                                      device=device).to(dtype)
                depth.requires_grad_(), context.requires_grad_()
                weights = torch.randn(batch, channels, *grid.size, device=device, dtype=dtype)
                tolerance = dict(atol=5e-2, rtol=2e-2) if dtype == torch.bfloat16 else dict(atol=1e-3, rtol=1e-4)

                def gradients(pool):
                    depth.grad = context.grad = None
                    (pool().float() * weights).sum().backward()
                    return depth.grad.float(), context.grad.float()

                candidates = {name: (lambda f: lambda: f(depth, context, indices, grid.size))(f)
                              for name, f in implementations.items()}
                if not args.no_lss:
                    candidates["LSS cumsum"] = lambda: lss_cumsum_pool(depth, context, cells, grid.size)
                reference_name = next(iter(candidates))
                expected, expected_grads = candidates[reference_name]().float(), gradients(candidates[reference_name])
                timings = {}
                for name, pool in candidates.items():  # every implementation agrees with ours before it is timed
                    torch.testing.assert_close(pool().float(), expected, **tolerance, msg=name)
                    for grad, reference in zip(gradients(pool), expected_grads):
                        torch.testing.assert_close(grad, reference, **tolerance, msg=f"{name} gradient")

                    def forward(pool=pool):
                        with torch.no_grad():
                            pool()

                    def forward_backward(pool=pool):
                        depth.grad = context.grad = None
                        (pool() * weights).sum().backward()

                    timings[name] = (time_ms(forward, device, args.warmup, args.iters),
                                     time_ms(forward_backward, device, args.warmup, args.iters))
                floors = tuple(floor_bytes(depth, context, indices, grid.size, backward) / bandwidth * 1000
                               for backward in (False, True))
                peer = next(name for name in timings if name.startswith("BEVPoolv2"))
                ours = next(iter(timings))
                row = {"shape": shape, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
                       "ms": {name: {"forward": f, "forward_backward": fb} for name, (f, fb) in timings.items()},
                       "floor_ms": {"forward": floors[0], "forward_backward": floors[1]},
                       "ours_over_bevpoolv2_forward_backward": timings[ours][1] / timings[peer][1],
                       "ours_forward_over_floor": timings[ours][0] / floors[0]}
                rows.append(row)
                print(f"\n{shape} ({bins.count} bins, {channels} ch, {grid.size[0]}x{grid.size[1]}), batch {batch}, "
                      f"{row['dtype']}: floor {floors[0]:.2f} / {floors[1]:.2f}")
                for name, (f, fb) in timings.items():
                    print(f"  {name:22} {f:>10.2f} / {fb:>10.2f}")
                print(f"  {ours} / {peer}, forward + backward: {row['ours_over_bevpoolv2_forward_backward']:.2f}x; "
                      f"{ours} forward / floor: {row['ours_forward_over_floor']:.1f}x", flush=True)
    results = {"device": device_name(device), "copy_bandwidth_gb_s": bandwidth / 1e9, "iters": args.iters, "rows": rows}
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
