"""Is data the bottleneck? Samples per second of ``load_nuscenes`` + ``GeoMIMImageProcessor`` with
0, 1 and 2 DataLoader workers, against a peer in the same run: the plain nuscenes-devkit loop a
user would otherwise write (``get_sample_data`` per camera, PIL resize and crop, the devkit's
multi-sweep LiDAR), and beside it the pretraining step time of the tiny GeoMIM model.

    python benchmarks/data_loading.py                       # writes a small synthetic world first
    python benchmarks/data_loading.py --dataroot DIR --version v1.0-mini --split mini_train
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling, GeoMIMImageProcessor, random_cell_mask
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.synthetic.nuscenes_writer import write_nuscenes


def ours(rows, processor, workers: int, samples: int, batch_size: int) -> float:
    loader = make_dataloader(rows, processor, batch_size=batch_size, training=True, num_workers=workers,
                             return_depth=True)
    iterator = iter(loader)
    next(iterator)  # workers start and warm up outside the clock
    started, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += len(batch["sample_token"])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - started)


def devkit_loop(nusc, tokens, cameras, image_size, sweeps: int) -> float:
    """The peer: the devkit's own calls and a PIL resize + bottom crop to the same size."""
    from nuscenes.utils.data_classes import LidarPointCloud

    height, width = image_size
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    started = time.perf_counter()
    for token in tokens:
        sample = nusc.get("sample", token)
        views = []
        for channel in cameras:
            path, boxes, intrinsics = nusc.get_sample_data(sample["data"][channel])
            image = Image.open(path).convert("RGB")
            scale = width / image.width
            resized = image.resize((width, int(round(image.height * scale))), Image.BILINEAR)
            crop = resized.crop((0, resized.height - height, width, resized.height))
            views.append(((np.asarray(crop, np.float32) / 255 - mean) / std).transpose(2, 0, 1))
        np.stack(views)
        LidarPointCloud.from_file_multisweep(nusc, sample, "LIDAR_TOP", "LIDAR_TOP", nsweeps=sweeps + 1)
    return len(tokens) / (time.perf_counter() - started)


def model_step_seconds(batch: dict, steps: int = 5) -> float:
    """Seconds per pretraining step (forward, backward, AdamW) of the tiny preset on one processed
    batch, with teacher features of the target's shape."""
    config = GeoMIMConfig.from_preset("geomim-tiny", image_size=tuple(batch["pixel_values"].shape[-2:]))
    model = GeoMIMForMaskedBEVModeling(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(len(batch["pixel_values"]), config.target_channels, *config.target_grid.size)
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        out = model(**batch, teacher_features=teacher, bool_masked_pos=random_cell_mask(config, generator))
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        if step:  # the first step pays for allocation and caches
            times.append(time.perf_counter() - started)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataroot", help="a nuScenes-format dataroot; default: write a small synthetic world")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="mini_train")
    parser.add_argument("--samples", type=int, default=24, help="samples timed per setting")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--sweeps", type=int, default=4)
    parser.add_argument("--image-size", type=int, nargs=2, default=(64, 176),
                        help="processed size; the default is the tiny preset's, whose step is timed beside")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        dataroot = args.dataroot
        if dataroot is None:
            dataroot = os.path.join(scratch, "nuscenes")
            write_nuscenes(dataroot, num_scenes=4, samples_per_scene=10, workers=2)
        rows = load_nuscenes(dataroot, args.version, args.split, sweeps=args.sweeps,
                             cache_dir=os.path.join(scratch, "cache"))
        processor = GeoMIMImageProcessor(image_size=tuple(args.image_size), depth_stride=16)
        samples = min(args.samples, len(rows))

        from nuscenes import NuScenes

        nusc = NuScenes(args.version, dataroot, verbose=False)
        tokens = rows["sample_token"][:samples]
        peer = devkit_loop(nusc, tokens, rows[0]["camera_names"], tuple(args.image_size), args.sweeps)
        print(f"{len(rows)} samples of {args.split}, {args.sweeps} sweeps, images {args.image_size[0]}x"
              f"{args.image_size[1]}, batch {args.batch_size}, {os.cpu_count()} CPU cores")
        print(f"{'pipeline':<52} {'samples/s':>10} {'vs devkit':>10}")
        print(f"{'nuscenes-devkit loop (peer; no augmentation, no depth)':<52} {peer:>10.2f} {1.0:>9.2f}x")
        for workers in (0, 1, 2):
            rate = ours(rows, processor, workers, samples, args.batch_size)
            label = f"load_nuscenes + processor + depth, {workers} workers"
            print(f"{label:<52} {rate:>10.2f} {rate / peer:>9.2f}x")
        batch = next(iter(make_dataloader(rows, processor, batch_size=args.batch_size, training=True,
                                          return_depth=True, input_names=GeoMIMForMaskedBEVModeling.model_input_names)))
        step = model_step_seconds(batch)
        print(f"tiny model pretraining step, batch {args.batch_size}: {step:.3f} s = "
              f"{args.batch_size / step:.2f} samples/s (data is the bottleneck where the rows above are lower)")


if __name__ == "__main__":
    main()
