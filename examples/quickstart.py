"""Quickstart: write a small synthetic driving world in the nuScenes format, load it with the
official nuscenes-devkit, and draw one sample.

    python examples/quickstart.py                      # into outputs/quickstart
    python examples/quickstart.py --out DIR --scenes 10 --samples-per-scene 10

The world is the embedded default dataset of this project (no download needed); a user with the
real nuScenes points the same tools at their dataroot instead.
"""

from __future__ import annotations

import argparse
import collections
import os
import time

from geomim_hf.data.nuscenes_format import write_nuscenes
from geomim_hf.data.synthetic import positive_int
from geomim_hf.data.visualize import plot_nuscenes_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument("--scenes", type=positive_int, default=4, help="scenes (at most 10, the mini split)")
    parser.add_argument("--samples-per-scene", type=positive_int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    if args.scenes > 10:
        parser.error("--scenes: the v1.0-mini layout holds at most 10 scenes")

    dataroot = os.path.join(args.out, "nuscenes")
    version = "v1.0-mini"
    if os.path.isfile(os.path.join(dataroot, version, "sample.json")):
        print(f"using the synthetic world already in {dataroot}")
    else:
        started = time.perf_counter()
        summary = write_nuscenes(dataroot, num_scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                                 seed=args.seed, version=version, workers=args.workers)
        print(f"wrote a synthetic nuScenes world to {dataroot} in {time.perf_counter() - started:.1f} s: "
              + ", ".join(f"{k} {v}" for k, v in summary.items()))

    from nuscenes import NuScenes
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.splits import create_splits_scenes

    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    splits = create_splits_scenes()
    for split in ("mini_train", "mini_val"):
        scenes = [s["name"] for s in nusc.scene if s["name"] in splits[split]]
        print(f"{split}: {len(scenes)} scenes {scenes}")
    per_class = collections.Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    print("annotations per class: " + ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())))
    picture = plot_nuscenes_sample(nusc, nusc.sample[len(nusc.sample) // 2]["token"],
                                   os.path.join(args.out, "sample.png"))
    print(f"drew one sample (6 cameras and the LiDAR BEV, boxes from the devkit) to {picture}")


if __name__ == "__main__":
    main()
