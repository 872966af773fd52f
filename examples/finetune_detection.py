"""Finetune a GeoMIM encoder in the BEVDet4D/BEVDepth-style detector and evaluate it with the devkit.

    accelerate launch examples/finetune_detection.py --dataroot DIR --version v1.0-mini --train-split mini_train \
        --val-split mini_val --init OUT/geomim --output-dir OUT/detector --max-steps 2000

``--init`` is a GeoMIM checkpoint folder (the pretrained encoder loads, the detector heads start
fresh) or ``scratch`` for a randomly initialised encoder with ``--model-config``. ``--dataset waymo`` trains on a
Waymo v2 root instead (its five cameras at their own resolutions and its three classes, against the camera-synced
boxes, scored with LET-3D-AP; the config records the classes and camera count): a nuScenes-pretrained encoder
initialises it as it does a nuScenes detector. The official
recipe: class-balanced sampling (CBGS), EMA of the weights with BEVDet's warm-up ramp (evaluated
and saved), AdamW 2e-4 with weight decay 0.05, layer-wise learning-rate decay 0.8 over the encoder
blocks, 200 warmup steps, gradient clipping at 5, drop path 0.2. The final (EMA) detector is saved
with ``save_pretrained`` in ``OUT``, its devkit metrics in ``OUT/metrics.json`` and its model card
in ``OUT/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from accelerate.logging import get_logger
from torch.optim.swa_utils import AveragedModel

from geomim_hf import GeoMIMConfig, GeoMIMImageProcessor
from geomim_hf.data import load_nuscenes, load_waymo, make_dataloader
from geomim_hf.data.classes import WAYMO_CLASSES
from geomim_hf.data.maps import MapRasterizer
from geomim_hf.data.pipeline import class_balanced_indices
from geomim_hf.evaluation import evaluate_detector, evaluate_segmenter
from geomim_hf.evaluation.waymo import evaluate_waymo_detector
from geomim_hf.hub import create_model_card
from geomim_hf.modeling_geomim import GeoMIMForBEVDetection, GeoMIMForBEVSegmentation
from geomim_hf.training import (
    TrainingLog,
    add_training_arguments,
    compile_regions,
    ema_multi_avg_fn,
    make_accelerator,
    make_schedule,
    optimizer_step,
    record_curve_point,
    resume,
    save_checkpoint,
    training_batches,
    training_summary,
)

logger = get_logger(__name__)


@dataclass(frozen=True)
class Task:
    """What differs between finetuning the detector and the map segmenter (the rest is one loop)."""

    name: str
    model_class: type
    losses: tuple[str, ...]  # logged beside the total
    headline: str  # the metric logged on the way
    map_masks: bool  # the rows carry the devkit's map masks
    class_balanced: bool  # CBGS by default (it balances the boxes' classes)
    evaluate: Callable  # (model, args, output_dir, processor, verbose) -> metrics


# Waymo's split folders; the nuScenes names stand for them too, so the defaults work for both.
WAYMO_SPLITS = {"train": "training", "val": "validation"}
WAYMO_CAMERAS = 5
WAYMO_HEADLINE = "LET-3D-APL/LEVEL_2"


def dataset_split(args, split: str) -> str:
    return WAYMO_SPLITS.get(split, split) if args.dataset == "waymo" else split


def load_rows(args, split: str, classes, map_masks: bool = False):
    """The rows of a split of --dataset: nuScenes keyframes, or Waymo frames with their camera-synced boxes."""
    if args.dataset == "waymo":
        return load_waymo(args.dataroot, dataset_split(args, split), sweeps=args.sweeps, classes=classes,
                          boxes="camera")
    return load_nuscenes(args.dataroot, args.version, split, sweeps=args.sweeps, classes=classes, map_masks=map_masks)


def _evaluate_detection(model, args, output_dir, processor, verbose=True) -> dict:
    if args.dataset == "waymo":
        return evaluate_waymo_detector(model, args.dataroot, dataset_split(args, args.val_split), processor,
                                       batch_size=args.batch_size, verbose=verbose)
    return evaluate_detector(model, args.dataroot, args.version, args.val_split, output_dir, processor, sweeps=0,
                             batch_size=args.batch_size, verbose=verbose)


def _evaluate_segmentation(model, args, output_dir, processor, verbose=True) -> dict:
    return evaluate_segmenter(model, args.dataroot, args.version, args.val_split, processor,
                              batch_size=args.batch_size, verbose=verbose)


DETECTION = Task("detection", GeoMIMForBEVDetection, ("heatmap_loss", "regression_loss", "attribute_loss",
                                                      "depth_loss"), "NDS", False, True, _evaluate_detection)
SEGMENTATION = Task("segmentation", GeoMIMForBEVSegmentation, ("segmentation_loss", "depth_loss"), "mIoU", True,
                    False, _evaluate_segmentation)


def parse_args(argv=None, description: str = __doc__):
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    add_training_arguments(parser, max_steps=2000, batch_size=4, learning_rate=2e-4, warmup_steps=200,
                           logging_steps=20, datasets=("nuscenes", "waymo"))
    # BEVDepth supervises depth with the keyframe's own points: merged sweeps smear moving objects.
    parser.set_defaults(max_grad_norm=5.0, weight_decay=0.05, sweeps=0)
    parser.add_argument("--val-split", default="val", help="evaluated with the devkit at the end ('' to skip)")
    parser.add_argument("--init", default="scratch", help="a GeoMIM checkpoint folder, or 'scratch'")
    parser.add_argument("--model-config", default="geomim-tiny",
                        help="for --init scratch: a preset name or a folder with config.json")
    parser.add_argument("--head-config", default=None,
                        help="with --init DIR: take the finetuned model's own fields (the config's det_* and seg_*: "
                        "neck, depth net, BEV grid, heads, losses) from this preset or folder instead of DIR's "
                        "config (which may predate some of them)")
    parser.add_argument("--layer-decay", type=float, default=0.8)
    parser.add_argument("--drop-path-rate", type=float, default=0.2)
    parser.add_argument("--ema-decay", type=float, default=0.999, help="0 disables the EMA")
    parser.add_argument("--ema-ramp-steps", type=float, default=2000.0, help="the EMA decay's warm-up (BEVDet)")
    parser.add_argument("--no-cbgs", action="store_true", help="plain uniform sampling instead of CBGS "
                        "(class-balanced over the boxes' classes; detection)")
    parser.add_argument("--no-temporal", action="store_true", help="no previous keyframe (BEVDet instead of 4D)")
    parser.add_argument("--eval-steps", type=int, nargs="*", default=[],
                        help="also score the model on --val-split after these steps (a learning curve, in "
                        "OUT/learning_curve.json; the final step is always scored)")
    parser.add_argument("--out-indices", type=int, nargs="+", default=None,
                        help="encoder stages the detector reads (e.g. 1 2 3 for stride-8 features over an encoder "
                        "pretrained with 2 3); default: the config's")
    parser.add_argument("--freeze-encoder", action="store_true",
                        help="frozen-encoder probing: train everything but the encoder")
    return parser.parse_args(argv)


def build_model(args, task: Task = DETECTION):
    overrides = GeoMIMConfig.from_preset_or_folder(args.head_config).finetuning_fields() if args.head_config else {}
    overrides.update({"drop_path_rate": args.drop_path_rate, "det_temporal": not args.no_temporal})
    if args.dataset == "waymo":  # the config records what the detector was trained on
        overrides.update({"class_names": WAYMO_CLASSES, "num_views": WAYMO_CAMERAS})
    if args.out_indices:
        overrides["out_indices"] = tuple(args.out_indices)
    if args.init == "scratch":
        config = GeoMIMConfig.from_preset_or_folder(args.model_config)
        config.update(overrides)
        return task.model_class(config)
    if not args.head_config:  # a checkpoint older than a field gets the class default, not its preset's value
        with open(os.path.join(args.init, "config.json")) as handle:
            saved = json.load(handle)
        missing = [name for name in GeoMIMConfig().finetuning_fields() if name not in saved]
        if missing:
            logger.warning(f"{args.init}/config.json has no {', '.join(missing)}: GeoMIMConfig's defaults apply; "
                           "--head-config PRESET takes them from a preset")
    # The pretrained encoder loads; the neck, depth net, BEV encoder and head are new (logged).
    return task.model_class.from_pretrained(args.init, **overrides)


def main(argv=None, task: Task = DETECTION, description: str = __doc__) -> None:
    """Finetune for ``task`` (``examples/finetune_segmentation.py`` runs this with :data:`SEGMENTATION`)."""
    args = parse_args(argv, description)
    if args.dataset == "waymo" and task.map_masks:
        raise SystemExit("--dataset waymo: the Waymo release has no map; BEV map segmentation trains on nuScenes")
    accelerator = make_accelerator(args.output_dir, args.mixed_precision, args.gradient_accumulation_steps,
                                   args.report_to, args.seed)
    model = build_model(args, task)
    if args.freeze_encoder:
        model.freeze_encoder()
    config = model.config
    with accelerator.main_process_first():
        rows = load_rows(args, args.train_split, config.class_names, map_masks=task.map_masks)
    processor = GeoMIMImageProcessor(image_size=config.image_size, depth_stride=model.feature_stride,
                                     jpeg_draft=not args.full_jpeg_decode)
    cbgs = task.class_balanced and not args.no_cbgs
    indices = None if not cbgs else class_balanced_indices(rows.with_format(None)["labels"],
                                                               len(config.class_names), args.seed)
    # The BEV rotation and scale move the map masks: they are drawn again at the augmented pose.
    rasterizer = MapRasterizer(args.dataroot, config.segmentation_grid, config.seg_class_names) \
        if task.map_masks else None
    loader = make_dataloader(rows, processor, args.batch_size, training=True, num_workers=args.num_workers,
                             seed=args.seed, return_depth=True, temporal=config.det_temporal, indices=indices,
                             input_names=model.model_input_names, map_rasterizer=rasterizer)
    optimizer = torch.optim.AdamW(model.parameter_groups(args.learning_rate, args.weight_decay, args.layer_decay),
                                  lr=args.learning_rate)
    schedule = make_schedule(optimizer, accelerator, args.warmup_steps, args.max_steps)
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    ema = None
    if args.ema_decay > 0:
        ema = AveragedModel(accelerator.unwrap_model(model),
                            multi_avg_fn=ema_multi_avg_fn(args.ema_decay, args.ema_ramp_steps),
                            use_buffers=True)
        accelerator.register_for_checkpointing(ema)
    accelerator.init_trackers(f"geomim_{task.name}", config=vars(args))
    if args.torch_compile:  # after the EMA's copy, which stays eager
        compile_regions(accelerator.unwrap_model(model), args.torch_compile)
    logger.info(f"{task.name}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {len(rows)} "
                f"keyframes, {len(loader)} batches per epoch", main_process_only=True)

    start_step = resume(accelerator, args.output_dir, args.resume_from_checkpoint)
    model.train()
    log = TrainingLog(accelerator, args.output_dir, args.max_steps, start_step, "finetuning", args.logging_steps,
                      task.losses)
    started = time.perf_counter()
    for step, epoch, batch in training_batches(accelerator, loader, start_step, args.max_steps):
        with accelerator.accumulate(model):
            out = model(**batch)
            optimizer_step(accelerator, model, optimizer, schedule, out.loss, args.max_grad_norm)
        log.update(step, epoch, out, schedule.get_last_lr()[-1])
        if not accelerator.sync_gradients:
            continue  # the rest happens once per optimizer step
        if ema is not None:
            ema.update_parameters(accelerator.unwrap_model(model))
        if step + 1 in args.eval_steps and step + 1 < args.max_steps and args.val_split:
            score_on_the_way(args, accelerator, ema.module if ema is not None else accelerator.unwrap_model(model),
                             processor, step + 1, task)
        if args.checkpointing_steps and (step + 1) % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args.output_dir, step + 1, {"epoch": epoch})
    log.close()
    seconds = time.perf_counter() - started

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = ema.module if ema is not None else accelerator.unwrap_model(model)
        final.save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        metrics = {"train_seconds": round(seconds, 1), "steps": args.max_steps, "init": args.init}
        if args.val_split:
            metrics.update(task.evaluate(final, args, args.output_dir, processor))
            record_curve_point(args.output_dir, args.max_steps, metrics)
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
        waymo = args.dataset == "waymo"  # (the evaluation dataset follows from the metrics; datasets also without)
        create_model_card(args.output_dir, metrics=metrics if args.val_split else None,
                          eval_version="v2" if waymo else args.version, eval_split=dataset_split(args, args.val_split),
                          datasets=("waymo_open_dataset",) if waymo else ("nuscenes",), training=training_summary(
                              args, accelerator, seconds, schedule, init=args.init, cbgs=cbgs,
                              ema=f"{args.ema_decay} (ramp {args.ema_ramp_steps:g})", layer_decay=args.layer_decay,
                              temporal=config.det_temporal, frozen_encoder=args.freeze_encoder))
    accelerator.end_training()


def score_on_the_way(args, accelerator, model, processor, step: int, task: Task = DETECTION) -> None:
    """Score the model being trained (the EMA where there is one) on the validation split."""
    if accelerator.is_main_process:
        folder = os.path.join(args.output_dir, f"eval-{step}")
        os.makedirs(folder, exist_ok=True)
        metrics = task.evaluate(model, args, folder, processor, verbose=False)
        record_curve_point(args.output_dir, step, metrics)
        headline = WAYMO_HEADLINE if args.dataset == "waymo" else task.headline
        logger.info(f"step {step}: {headline} {metrics[headline]:.4f} on {args.val_split}", main_process_only=True)
    accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
