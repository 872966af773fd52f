"""Quickstart: the whole GeoMIM chain on a small synthetic driving world, on a CPU.

    python examples/quickstart.py                      # into outputs/quickstart, 15 minutes on 2 CPU cores
    python examples/quickstart.py --out DIR --seed 1 --finetune-steps 600

1. write a synthetic nuScenes v1.0-mini world (no download) and load it with the official devkit;
2. train the pillar CenterPoint LiDAR teacher (examples/train_lidar_teacher.py);
3. GeoMIM pretraining: reconstruct the teacher's BEV features from masked images (examples/pretrain.py);
4. finetune the BEV detector twice with the same budget and seed, from a random encoder and from the
   GeoMIM encoder (examples/finetune_detection.py);
5. score both with the devkit on mini_val and print NDS and mAP side by side.

Every stage is the example script a user runs on real data, started as its own process with the
command printed; a stage whose result is already in ``--out`` is skipped, so an interrupted
quickstart continues where it stopped. The tiny preset and these budgets make a demonstration,
not a benchmark: the numbers come from 16 validation keyframes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shlex
import subprocess
import sys
import time

from geomim_hf.synthetic.nuscenes_writer import write_nuscenes
from geomim_hf.synthetic.cli import positive_int
from geomim_hf.visualize import plot_detections, plot_nuscenes_sample

EXAMPLES = os.path.dirname(os.path.abspath(__file__))
VERSION = "v1.0-mini"
REPORTED = ("NDS", "mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/quickstart", help="output folder")
    parser.add_argument("--scenes", type=positive_int, default=10, help="scenes (at most 10, the mini split; "
                        "the first two are mini_val)")
    parser.add_argument("--samples-per-scene", type=positive_int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="world, teacher, pretraining and finetuning seed")
    parser.add_argument("--workers", type=positive_int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--teacher-steps", type=positive_int, default=300)
    parser.add_argument("--pretrain-steps", type=positive_int, default=500)
    parser.add_argument("--finetune-steps", type=positive_int, default=300)
    parser.add_argument("--world-only", action="store_true", help="stop after writing and drawing the world")
    args = parser.parse_args(argv)
    if not 3 <= args.scenes <= 10:
        parser.error("--scenes: 3 to 10 (v1.0-mini holds 10 scenes; the first two form mini_val)")
    return args


def write_world(args, dataroot: str) -> float:
    """Write the world unless it is there; returns seconds."""
    if os.path.isfile(os.path.join(dataroot, VERSION, "sample.json")):
        print(f"using the synthetic world already in {dataroot}")
        return 0.0
    started = time.perf_counter()
    summary = write_nuscenes(dataroot, num_scenes=args.scenes, samples_per_scene=args.samples_per_scene,
                             seed=args.seed, version=VERSION, workers=args.workers)
    print(f"wrote a synthetic nuScenes world to {dataroot} in {time.perf_counter() - started:.1f} s: "
          + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return time.perf_counter() - started


def describe_world(args, dataroot: str) -> None:
    """What the official devkit sees in the world, and one picture of it."""
    from nuscenes import NuScenes
    from nuscenes.eval.detection.utils import category_to_detection_name
    from nuscenes.utils.splits import create_splits_scenes

    nusc = NuScenes(version=VERSION, dataroot=dataroot, verbose=False)
    splits = create_splits_scenes()
    for split in ("mini_train", "mini_val"):
        scenes = [s["name"] for s in nusc.scene if s["name"] in splits[split]]
        print(f"{split}: {len(scenes)} scenes {scenes}")
    per_class = collections.Counter(category_to_detection_name(a["category_name"]) for a in nusc.sample_annotation)
    print("annotations per class: " + ", ".join(f"{k} {v}" for k, v in sorted(per_class.items())))
    picture = plot_nuscenes_sample(nusc, nusc.sample[len(nusc.sample) // 2]["token"],
                                   os.path.join(args.out, "sample.png"))
    print(f"drew one sample (6 cameras and the LiDAR BEV, boxes from the devkit) to {picture}")


def run_stage(name: str, script: str, output_dir: str, arguments: list[str], done_file: str) -> float:
    """Run one example script as a user would, unless its result is already there; returns seconds."""
    if os.path.isfile(os.path.join(output_dir, done_file)):
        print(f"\n== {name}: already done in {output_dir}")
        return 0.0
    command = [sys.executable, os.path.join(EXAMPLES, script), "--output-dir", output_dir, *arguments]
    print(f"\n== {name}\n$ {shlex.join(command)}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return time.perf_counter() - started


def comparison_table(metrics: dict[str, dict]) -> str:
    """Metric rows, one column per finetuned detector."""
    names = list(metrics)
    lines = [f"{'':8}" + "".join(f"{name:>16}" for name in names)]
    for key in REPORTED:
        lines.append(f"{key:8}" + "".join(f"{metrics[name][key]:>16.4f}" for name in names))
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    dataroot = os.path.join(args.out, "nuscenes")
    world_seconds = write_world(args, dataroot)
    describe_world(args, dataroot)
    if args.world_only:
        return

    data = ["--dataroot", dataroot, "--version", VERSION, "--train-split", "mini_train", "--seed", str(args.seed),
            "--num-workers", str(args.workers), "--checkpointing-steps", "0", "--logging-steps", "25"]
    teacher_dir, pretrain_dir = os.path.join(args.out, "teacher"), os.path.join(args.out, "geomim")
    finetune = [*data, "--val-split", "mini_val", "--model-config", "geomim-tiny", "--max-steps",
                str(args.finetune_steps), "--learning-rate", "1e-3", "--warmup-steps", "50"]
    detectors = {"from scratch": os.path.join(args.out, "detector_scratch"),
                 "GeoMIM": os.path.join(args.out, "detector_geomim")}
    # (name, script, output folder, arguments, the file that marks it done). The teacher takes keyframe
    # points only (no sweeps): cheap pillars on a CPU. The tiny preset learns at 1e-3 over a short warmup
    # (Swin-B's recipe: 2e-4, 500 steps).
    stages = [
        ("1/4 LiDAR teacher", "train_lidar_teacher.py", teacher_dir,
         [*data, "--val-split", "mini_val", "--max-steps", str(args.teacher_steps), "--sweeps", "0"], "metrics.json"),
        ("2/4 GeoMIM pretraining", "pretrain.py", pretrain_dir,
         [*data, "--model-config", "geomim-tiny", "--teacher", teacher_dir, "--max-steps", str(args.pretrain_steps),
          "--sweeps", "0", "--learning-rate", "1e-3", "--warmup-steps", "50"], "pretrain_summary.json"),
        ("3/4 detection finetuning from a random encoder", "finetune_detection.py", detectors["from scratch"],
         [*finetune, "--init", "scratch"], "metrics.json"),
        ("4/4 detection finetuning from the GeoMIM encoder", "finetune_detection.py", detectors["GeoMIM"],
         [*finetune, "--init", pretrain_dir], "metrics.json"),
    ]
    seconds = {"world": world_seconds, **{stage[0]: run_stage(*stage) for stage in stages}}

    metrics = {}
    for name, folder in detectors.items():
        with open(os.path.join(folder, "metrics.json")) as handle:
            metrics[name] = json.load(handle)
    with open(os.path.join(teacher_dir, "metrics.json")) as handle:
        teacher = json.load(handle)
    print(f"\nLiDAR teacher on mini_val: NDS {teacher['NDS']:.4f}, mAP {teacher['mAP']:.4f}")
    print(f"camera detectors on mini_val (devkit, {args.finetune_steps} finetuning steps each, seed {args.seed}):")
    print(comparison_table(metrics))
    total = time.perf_counter() - started
    print(f"this run took {total / 60:.1f} min: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items() if v))
    summary = {"seed": args.seed, "seconds": round(total, 1),
               "stage_seconds": {k: round(v, 1) for k, v in seconds.items()}, "teacher": teacher, **metrics}
    with open(os.path.join(args.out, "quickstart_summary.json"), "w") as handle:
        json.dump(summary, handle, indent=2)
    picture = draw_detections(detectors["GeoMIM"], dataroot, os.path.join(args.out, "detections.png"))
    print(f"\nsummary in {os.path.join(args.out, 'quickstart_summary.json')}; the GeoMIM detector's boxes on one "
          f"mini_val keyframe, through pipeline('bev-object-detection'), in {picture}; more with\n"
          f"$ python examples/evaluate.py --model {detectors['GeoMIM']} --dataroot {dataroot} --version {VERSION} "
          f"--split mini_val --plot 4")


def draw_detections(detector_dir: str, dataroot: str, path: str, score_threshold: float = 0.1) -> str:
    """A user's view of the result: the detector as a pipeline on the middle mini_val keyframe's cameras (with the
    previous keyframe), its boxes drawn against the ground truth."""
    import numpy as np
    from transformers import pipeline

    from geomim_hf.data import load_nuscenes
    from geomim_hf.data.geometry import invert_rigid

    detector = pipeline("bev-object-detection", model=detector_dir)
    rows = load_nuscenes(dataroot, VERSION, "mini_val", classes=detector.model.config.class_names)
    tokens = {token: index for index, token in enumerate(rows["sample_token"])}
    row = rows[len(rows) // 2]
    sample = {key: row[key] for key in ("images", "intrinsics", "ego_from_camera")}
    if row["prev_sample_token"] in tokens:
        previous = rows[tokens[row["prev_sample_token"]]]
        sample.update(prev_images=previous["images"], prev_intrinsics=previous["intrinsics"],
                      prev_ego_from_camera=previous["ego_from_camera"],
                      ego_from_prev_ego=invert_rigid(np.asarray(row["global_from_ego"]))
                      @ np.asarray(previous["global_from_ego"]))
    found = detector(sample, score_threshold=score_threshold)
    return plot_detections({**sample, **{key: row[key] for key in ("boxes", "camera_names", "lidar_points",
                                                                   "ego_from_lidar", "sample_token")}},
                           found, path, score_threshold=score_threshold)


if __name__ == "__main__":
    main()
