"""Lift-Splat pooling speed: our ``bev_pool`` (Triton kernel and PyTorch reference) against the
original Lift-Splat-Shoot pooling (materialise the lifted (B, N, D, h, w, C) tensor, sort by cell,
cumulative-sum trick), in the same run, forward + backward, on the frustum of a nuScenes camera rig.

    python benchmarks/bev_pool.py                      # GPU: both GeoMIM shapes, fp32 and bf16
    python benchmarks/bev_pool.py --device cpu --batch 1 --iters 3

The peer is LSS's published algorithm written here in PyTorch (their code is not a dependency);
BEVDepth/BEVPoolv2 ship CUDA kernels of the same idea as ours (no materialised tensor).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from geomim_hf import GeoMIMConfig
from geomim_hf.data.geometry import make_transform
from geomim_hf.synthetic.sensors import NUSCENES_CAMERAS, camera_rotation
from geomim_hf.modeling.ops import bev_pool
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


def time_ms(function, device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(iters):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / iters * 1000


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = GeoMIMConfig.from_preset("geomim-swin-b")
    # (name, depth bins, context channels, BEV grid): finetuning's and pretraining's splats.
    shapes = [("detection (59 bins, 80 ch, 128x128)", config.detection_depth_bins, config.det_context_channels,
               config.detection_grid),
              ("pretraining (118 bins, 80 ch, 360x360)", config.pretraining_depth_bins, config.context_channels,
               config.pretraining_grid)]
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    backends = ["triton", "torch"] if device.type == "cuda" else ["torch"]
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, batch {args.batch} x 6 "
          f"views, image {tuple(config.image_size)}, forward + backward, mean of {args.iters} after {args.warmup}")
    print(f"{'shape':40} {'dtype':9} {'LSS cumsum ms':>14} " + " ".join(f"{'ours ' + b + ' ms':>16}" for b in backends)
          + " " + " ".join(f"{'LSS / ' + b:>14}" for b in backends))
    for name, bins, channels, grid in shapes:
        splat = LiftSplat(config.image_size, 16, depth_bins=bins, grid=grid)
        geometry = nuscenes_geometry(args.batch, config.image_size, device)
        cells = grid.cell_of(splat.points_ego(*geometry))  # (B, N, D, h, w)
        indices = splat.indices(*geometry)
        generator = torch.Generator(device=device).manual_seed(0)
        for dtype in dtypes:
            depth = torch.rand(cells.shape, generator=generator, device=device).softmax(2).to(dtype).requires_grad_()
            context = torch.randn(*cells.shape[:2], channels, *cells.shape[3:], generator=generator,
                                  device=device).to(dtype).requires_grad_()
            weights = torch.randn(args.batch, channels, *grid.size, device=device, dtype=dtype)

            def step(pool):
                (pool() * weights).sum().backward()

            peer = lambda: lss_cumsum_pool(depth, context, cells, grid.size)  # noqa: E731
            expected = peer().float()
            times = {"LSS": time_ms(lambda: step(peer), device, args.warmup, args.iters)}
            for backend in backends:
                ours = lambda: bev_pool(depth, context, indices, grid.size, backend=backend)  # noqa: E731
                torch.testing.assert_close(ours().float(), expected, atol=5e-2 if dtype == torch.bfloat16 else 1e-3,
                                           rtol=2e-2 if dtype == torch.bfloat16 else 1e-4)
                times[backend] = time_ms(lambda: step(ours), device, args.warmup, args.iters)
            print(f"{name:40} {str(dtype).removeprefix('torch.'):9} {times['LSS']:>14.2f} "
                  + " ".join(f"{times[b]:>16.2f}" for b in backends) + " "
                  + " ".join(f"{times['LSS'] / times[b]:>13.1f}x" for b in backends), flush=True)


if __name__ == "__main__":
    main()
