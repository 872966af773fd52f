"""The command line: write a synthetic driving world in the nuScenes v1.0 or Waymo v2 (parquet) format.

    python -m geomim_hf.synthetic --format nuscenes --out DIR --scenes 10 --samples-per-scene 10
    python -m geomim_hf.synthetic --format waymo --out DIR --scenes 4 --samples-per-scene 20
"""

from __future__ import annotations

import argparse
import os
import time

def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m geomim_hf.synthetic",
        description="Write a synthetic driving world in the nuScenes v1.0 or Waymo v2 (parquet) format.",
    )
    parser.add_argument("--format", required=True, choices=["nuscenes", "waymo"])
    parser.add_argument("--out", required=True, help="output directory (the dataroot)")
    parser.add_argument("--scenes", type=positive_int, default=10)
    parser.add_argument("--samples-per-scene", type=positive_int, default=10,
                        help="keyframes per scene (nuScenes, 2 Hz) or frames per segment (Waymo, 10 Hz)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--version", default="v1.0-mini", choices=["v1.0-mini", "v1.0-trainval"],
                        help="nuScenes version; mini holds at most 10 scenes (its real scene names)")
    parser.add_argument("--camera-sweeps", type=non_negative_int, default=1,
                        help="nuScenes non-key camera frames between keyframes (real data: 5)")
    parser.add_argument("--lidar-sweeps", type=non_negative_int, default=4,
                        help="nuScenes non-key LiDAR sweeps between keyframes (real data: 9)")
    parser.add_argument("--validation-segments", type=non_negative_int, default=None,
                        help="Waymo: how many of the segments (the first ones) go to validation, the rest to "
                        "training (default: two, or all if fewer)")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.format == "nuscenes" and args.version == "v1.0-mini" and args.scenes > 10:
        parser.error(f"--scenes {args.scenes}: v1.0-mini has 10 scene names; use --version v1.0-trainval for more")
    if args.format == "waymo" and (args.validation_segments or 0) > args.scenes:
        parser.error(f"--validation-segments {args.validation_segments}: more than the {args.scenes} --scenes")
    if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
        parser.error(f"--out {args.out} exists and is not empty; pass --overwrite to write into it")
    started = time.perf_counter()
    if args.format == "nuscenes":
        from .nuscenes_writer import write_nuscenes

        summary = write_nuscenes(args.out, num_scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                                 seed=args.seed, version=args.version, camera_sweeps=args.camera_sweeps,
                                 lidar_sweeps=args.lidar_sweeps, workers=args.workers)
    else:
        from .waymo_writer import write_waymo

        summary = write_waymo(args.out, num_segments=args.scenes, frames_per_segment=args.samples_per_scene,
                              seed=args.seed, workers=args.workers, validation_segments=args.validation_segments)
    print(f"wrote a synthetic {args.format} world to {os.path.abspath(args.out)} in "
          f"{time.perf_counter() - started:.1f} s")
    for key, value in summary.items():
        print(f"  {key}: {value}")
    return 0
