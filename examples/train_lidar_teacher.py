"""Train the pillar CenterPoint LiDAR teacher whose BEV features GeoMIM reconstructs, and evaluate it
with the nuScenes devkit.

    accelerate launch examples/train_lidar_teacher.py --dataroot DIR --version v1.0-mini \
        --train-split mini_train --val-split mini_val --model-config geomim-tiny --output-dir OUT --max-steps 2000

The teacher's target stage is laid out on the student's target grid (``--model-config``), so its
features are the pretraining target as they are. The final teacher is saved with
``save_pretrained`` in ``OUT``, its devkit metrics in ``OUT/metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
from accelerate.logging import get_logger

from geomim_hf import GeoMIMConfig, GeoMIMImageProcessor
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.evaluation import evaluate_detector
from geomim_hf.hub import create_model_card
from geomim_hf.configuration_lidar_teacher import TEACHER_PRESETS, GeoMIMLidarTeacherConfig
from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher
from geomim_hf.training import (
    TrainingLog,
    add_training_arguments,
    compile_regions,
    make_accelerator,
    make_schedule,
    optimizer_step,
    resume,
    save_checkpoint,
    training_batches,
    training_summary,
)

logger = get_logger(__name__)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_training_arguments(parser, max_steps=2000, batch_size=4, learning_rate=2e-3, warmup_steps=100,
                           logging_steps=50)
    parser.add_argument("--val-split", default="val", help="evaluated with the devkit at the end ('' to skip)")
    parser.add_argument("--model-config", default="geomim-tiny", help="the student preset whose target grid to match")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args.output_dir, args.mixed_precision, args.gradient_accumulation_steps,
                                   args.report_to, args.seed)
    student = GeoMIMConfig.from_preset(args.model_config)
    config = GeoMIMLidarTeacherConfig.for_student(student, **TEACHER_PRESETS.get(args.model_config, {}))
    model = GeoMIMLidarTeacher(config)
    logger.info(f"teacher: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, pillars "
                f"{config.pillar_size} m, target stage {config.target_channels} x {student.target_grid.size}",
                main_process_only=True)

    with accelerator.main_process_first():
        train_rows = load_nuscenes(args.dataroot, args.version, args.train_split, sweeps=args.sweeps,
                                   classes=config.class_names)
    processor = GeoMIMImageProcessor()  # only its BEV augmentation is used: rotate, scale, mirror
    loader = make_dataloader(train_rows, processor, args.batch_size, training=True, num_workers=args.num_workers,
                             seed=args.seed, with_images=False, input_names=model.model_input_names)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = make_schedule(optimizer, accelerator, args.warmup_steps, args.max_steps)
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    accelerator.init_trackers("geomim_lidar_teacher", config=vars(args))
    if args.torch_compile:
        compile_regions(accelerator.unwrap_model(model), args.torch_compile)

    start_step = resume(accelerator, args.output_dir, args.resume_from_checkpoint)

    model.train()
    log = TrainingLog(accelerator, args.output_dir, args.max_steps, start_step, "teacher", args.logging_steps,
                      ("heatmap_loss", "regression_loss"))
    started = time.perf_counter()
    for step, epoch, batch in training_batches(accelerator, loader, start_step, args.max_steps):
        with accelerator.accumulate(model):
            out = model(**batch)
            optimizer_step(accelerator, model, optimizer, schedule, out.loss, args.max_grad_norm)
        log.update(step, epoch, out, schedule.get_last_lr()[0])
        if not accelerator.sync_gradients:
            continue  # the rest happens once per optimizer step
        if args.checkpointing_steps and (step + 1) % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args.output_dir, step + 1, {"epoch": epoch})
    log.close()
    train_seconds = time.perf_counter() - started

    accelerator.wait_for_everyone()
    model = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        model.save_pretrained(args.output_dir)
        metrics = {"train_seconds": round(train_seconds, 1), "steps": args.max_steps}
        if args.val_split:
            metrics.update(evaluate_detector(model, args.dataroot, args.version, args.val_split, args.output_dir,
                                             GeoMIMImageProcessor(), sweeps=args.sweeps, batch_size=args.batch_size))
        with open(os.path.join(args.output_dir, "metrics.json"), "w") as handle:
            json.dump(metrics, handle, indent=2)
        create_model_card(args.output_dir, metrics=metrics if args.val_split else None, eval_version=args.version,
                          eval_split=args.val_split, training=training_summary(
                              args, accelerator, train_seconds, schedule))
    accelerator.end_training()


if __name__ == "__main__":
    main()
