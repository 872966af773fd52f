"""Detector inference latency per sample (6 views of the nuScenes rig): ours against the same network pooling with
BEVPoolv2 (its published algorithm, ``benchmarks/bev_pool.py``'s peer), in the same run; fp32 or bf16, eager or
compiled, the pooling indices cached for the fixed rig (as at inference) or computed on every call.

    python benchmarks/inference.py                                                 # GPU: geomim-swin-b, 256 x 704
    python benchmarks/inference.py --preset geomim-tiny --device cpu --iters 5 --json out/inference.json

The network is the preset's detector without the previous frame (``--temporal`` adds it: the previous keyframe
runs through the encoder too). Both variants are checked to give the same heads before they are timed.
"""

from __future__ import annotations

import argparse
import os
import sys
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bev_pool import bevpool_v2_torch, bevpool_v2_triton_function, nuscenes_geometry  # noqa: E402
from common import device_name, median_seconds, write_json  # noqa: E402

from geomim_hf import GeoMIMConfig  # noqa: E402
from geomim_hf.modeling_geomim import GeoMIMForBEVDetection  # noqa: E402


def pool_with(model: GeoMIMForBEVDetection, pool) -> None:
    """Make the model's Lift-Splat pool with ``pool(depth, context, indices, grid_size)``."""
    def forward(self, depth, context, intrinsics, ego_from_camera, processed_from_original,
                augmented_ego_from_ego=None):
        indices = self.indices(intrinsics, ego_from_camera, processed_from_original, augmented_ego_from_ego)
        return pool(depth, context, indices, self.grid.size)
    model.lift_splat.forward = types.MethodType(forward, model.lift_splat)


def inputs(config: GeoMIMConfig, batch: int, device, temporal: bool) -> dict:
    intrinsics, ego_from_camera, processed_from_original = nuscenes_geometry(batch, config.image_size, device)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, config.num_views, 3, *config.image_size, generator=generator).to(device)
    sample = {"pixel_values": pixels, "intrinsics": intrinsics, "ego_from_camera": ego_from_camera,
              "processed_from_original": processed_from_original}
    if temporal:
        sample.update(prev_pixel_values=pixels.clone(), prev_intrinsics=intrinsics,
                      prev_ego_from_camera=ego_from_camera, prev_processed_from_original=processed_from_original,
                      ego_from_prev_ego=torch.eye(4, device=device).expand(batch, 4, 4))
    return sample


def latency(model, lift_splat, sample: dict, device, dtype: str, cached: bool, iters: int, warmup: int) -> float:
    """Median seconds per call of the model's forward (heads, no decoding); ``lift_splat``'s index cache is
    cleared before each call unless ``cached``."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def call():
        with torch.no_grad(), autocast:
            model(**sample)

    return median_seconds(call, device, iters, warmup, before=None if cached else lift_splat._cache.clear)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="geomim-swin-b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtypes", nargs="+", default=None, choices=("fp32", "bf16"),
                        help="default: fp32 and bf16 on CUDA, fp32 on the CPU")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    parser.add_argument("--temporal", action="store_true", help="with the previous keyframe (BEVDet4D)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtypes = args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    config = GeoMIMConfig.from_preset_or_folder(args.preset)
    config.det_temporal = args.temporal

    torch.manual_seed(0)
    ours = GeoMIMForBEVDetection(config).to(device).eval()
    peer = GeoMIMForBEVDetection(config).to(device).eval()
    peer.load_state_dict(ours.state_dict())
    pool_with(peer, bevpool_v2_triton_function() if cuda else bevpool_v2_torch)
    sample = inputs(config, args.batch, device, args.temporal)
    with torch.no_grad():  # the same heads before any timing
        expected, actual = peer(**sample), ours(**sample)
        for name in ("heatmap", "regression"):
            torch.testing.assert_close(getattr(actual, name), getattr(expected, name), atol=1e-3, rtol=1e-3)

    models = {"ours": ours, "BEVPoolv2 pooling": peer}
    if args.compile:
        models.update({f"{name}, compiled": torch.compile(model) for name, model in list(models.items())})
    results = {}
    for dtype in dtypes:
        for cached in (True, False):
            for name, model in models.items():
                lift_splat = (ours if name.startswith("ours") else peer).lift_splat
                key = f"{name}, {dtype}, indices {'cached' if cached else 'recomputed'}"
                results[key] = latency(model, lift_splat, sample, device, dtype, cached, args.iters, args.warmup)
    print(f"{args.preset} detector, batch {args.batch} x {config.num_views} views at {tuple(config.image_size)}"
          f"{', previous frame' if args.temporal else ''}, {device_name(device)}; median of {args.iters} after {args.warmup}")
    print(f"{'model':58} {'ms / sample':>12} {'vs BEVPoolv2 pooling':>21}")
    for key, seconds in results.items():
        peer_key = key.replace("ours", "BEVPoolv2 pooling", 1)
        ratio = f"{seconds / results[peer_key]:.2f}x" if key.startswith("ours") else ""
        print(f"{key:58} {seconds / args.batch * 1e3:>12.1f} {ratio:>21}")
    output = {"preset": args.preset, "batch": args.batch, "image_size": list(config.image_size),
              "temporal": args.temporal, "device": device_name(device), "iters": args.iters,
              "seconds_per_call": results}
    write_json(args.json, output)
    return output


if __name__ == "__main__":
    main()
