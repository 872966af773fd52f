"""Run the frozen LiDAR teacher once over a split and cache its BEV features (the pretraining
targets) as one safetensors file per sample, so pretraining needs no teacher forward.

``TEACHER_DIR`` holds either LiDAR teacher (pillar CenterPoint or BEVFusion's sparse encoder).

    python examples/cache_teacher_features.py --teacher TEACHER_DIR --dataroot DIR --version v1.0-mini \
        --split mini_train --output-dir OUT/teacher_features
    accelerate launch examples/pretrain.py ... --teacher TEACHER_DIR --teacher-features OUT/teacher_features
"""

from __future__ import annotations

import argparse
import os

import torch
from tqdm.auto import tqdm

from geomim_hf import GeoMIMImageProcessor
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.teacher_cache import write_features, write_index
from geomim_hf.teachers import load_teacher


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--teacher", required=True, help="folder of a LiDAR teacher (save_pretrained)")
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--split", default="train")
    parser.add_argument("--sweeps", type=int, default=9)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    teacher = load_teacher(args.teacher).to(args.device)
    # Only the points are read (no boxes), so the class list does not matter here.
    rows = load_nuscenes(args.dataroot, args.version, args.split, sweeps=args.sweeps)
    loader = make_dataloader(rows, GeoMIMImageProcessor(), args.batch_size, with_targets=False, with_images=False,
                             input_names=teacher.model_input_names)
    tokens = iter(rows["sample_token"])  # unshuffled: the batches follow the rows
    os.makedirs(args.output_dir, exist_ok=True)
    with torch.no_grad():
        for batch in tqdm(loader, desc="caching teacher features"):
            features = teacher.bev_features(**{k: v.to(args.device) for k, v in batch.items()})
            for bev in features:
                write_features(args.output_dir, next(tokens), bev)
    config, grid = teacher.config, teacher.config.target_grid
    write_index(args.output_dir, {"teacher": os.path.abspath(args.teacher), "split": args.split,
                                  "sweeps": args.sweeps, "samples": len(rows), "x_range": list(grid.x_range),
                                  "y_range": list(grid.y_range), "channels": config.target_channels,
                                  "resolution": grid.resolution})
    print(f"cached teacher features of {len(rows)} samples in {args.output_dir}")


if __name__ == "__main__":
    main()
