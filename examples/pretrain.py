"""GeoMIM pretraining: reconstruct a frozen LiDAR teacher's BEV features from masked multi-view images.

    accelerate launch examples/pretrain.py --dataset nuscenes --dataroot DIR --version v1.0-mini \
        --train-split mini_train --model-config geomim-tiny --teacher TEACHER_DIR --output-dir OUT --max-steps 500

``--teacher`` is a folder of either LiDAR teacher: the pillar CenterPoint of
``examples/train_lidar_teacher.py`` or BEVFusion's sparse encoder of
``geomim_hf.convert.convert_bevfusion_lidar`` (the official target; needs ``geomim-hf[sparse]``).
Teacher targets are computed on the fly by the frozen teacher, or read from a cache written by
``examples/cache_teacher_features.py`` (``--teacher-features DIR``). As the official recipe, the BEV
augmentation is random flips of x and y, applied to student and teacher alike. Checkpoints are
written atomically every ``--checkpointing-steps``; ``--resume-from-checkpoint latest`` continues
exactly where a run stopped. The final model is saved with ``save_pretrained`` in ``OUT`` (its
encoder loads alone into ``GeoMIMModel`` and the detector), with the loss history and a plot.

The paper's baselines and ablations run on the same encoder, masks and data by flag:
``--objective pixel`` (MixMAE-style pixel reconstruction, no teacher), ``--objective depth`` (LiDAR
depth alone, no teacher), and for GeoMIM ``--no-cross-view``, ``--no-depth-branch`` and
``--loss-region masked``.

``--val-split`` scores the pretraining on held-out samples (unaugmented, fixed masks) at ``--eval-steps``
and at the end, in ``OUT/learning_curve.json``, beside the image-blind baseline fitted on the training
split (:class:`~geomim_hf.evaluation.pretraining.ImageBlindBaseline`): per target position the mean
target, per view and pixel the depth bins' frequencies. A held-out loss at the baseline's means the
encoder has read nothing from the images that the geometry alone did not give.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling, GeoMIMImageProcessor, GeoMIMModel, random_cell_mask
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.evaluation.pretraining import ImageBlindBaseline, evaluate_pretraining
from geomim_hf.hub import create_model_card
from geomim_hf.teacher_cache import TeacherFeatureCache
from geomim_hf.teachers import load_teacher
from geomim_hf.training import (
    TrainingLog,
    add_training_arguments,
    compile_regions,
    make_accelerator,
    make_schedule,
    move_batch,
    optimizer_step,
    record_curve_point,
    resume,
    save_checkpoint,
    training_batches,
    training_summary,
)

logger = get_logger(__name__)
# What the online teacher reads from a batch: popped before the student takes the rest.
TEACHER_INPUTS = ("lidar_points", "ego_from_lidar", "point_mask")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # The official recipe: batch 2 per GPU x 8, AdamW 2e-4, 500 warmup iterations.
    add_training_arguments(parser, max_steps=1000, batch_size=2, learning_rate=2e-4, warmup_steps=500,
                           logging_steps=10)
    parser.add_argument("--model-config", default="geomim-tiny", help="a preset name or a folder with config.json")
    parser.add_argument("--objective", default="geomim", choices=["geomim", "pixel", "depth"],
                        help="geomim: the teacher's BEV features (+ depth); pixel: MixMAE's normalised pixels; "
                        "depth: the LiDAR depth maps alone")
    parser.add_argument("--init-encoder", default=None,
                        help="start the encoder from this pretraining (or GeoMIMModel) folder, as the official GeoMIM "
                        "starts from MixMAE's; the decoder starts new. Its encoder architecture must be --model-config's")
    parser.add_argument("--no-cross-view", action="store_true", help="ablation: no Cross-View Attention")
    parser.add_argument("--no-depth-branch", action="store_true",
                        help="ablation: no camera-aware depth branch (depth from the semantic features)")
    parser.add_argument("--loss-region", default="all", choices=["all", "masked"],
                        help="BEV cells of the GeoMIM loss: all (official) or those the masked cells lift into")
    parser.add_argument("--teacher", default=None, help="folder of a LiDAR teacher (save_pretrained): a trained "
                        "GeoMIMLidarTeacher or a converted GeoMIMSparseTeacher; --objective geomim needs it")
    parser.add_argument("--teacher-features", default=None, help="cached targets (examples/cache_teacher_features.py)")
    parser.add_argument("--val-split", default=None,
                        help="held-out split scored at --eval-steps and at the end, beside the image-blind baseline "
                        "fitted on --train-split (with --teacher-features, the cache must hold both splits)")
    parser.add_argument("--eval-steps", type=int, nargs="*", default=[], help="steps to score --val-split after")
    parser.add_argument("--eval-samples", type=int, default=256,
                        help="at most this many samples of each split (evenly spaced) fit the baseline and are scored")
    args = parser.parse_args(argv)
    if args.objective == "geomim" and not args.teacher:
        parser.error("--objective geomim needs --teacher (a LiDAR teacher folder)")
    if args.eval_steps and not args.val_split:
        parser.error("--eval-steps needs --val-split")
    return args


def objective_overrides(args) -> dict:
    """The config fields the objective and ablation flags set."""
    overrides = {"pretrain_objective": args.objective, "reconstruction_region": args.loss_region}
    if args.no_cross_view:
        overrides.update(decoder_cross_view_layers=(), depth_branch_cross_view_layers=())
    if args.no_depth_branch:
        overrides["decoder_depth_branch"] = False
    return overrides


def load_encoder(model: GeoMIMForMaskedBEVModeling, folder: str) -> None:
    """The encoder (``model.geomim``) from a pretraining or GeoMIMModel folder; a different architecture is an
    error that names the folder and the first parameters that differ."""
    encoder = GeoMIMModel.from_pretrained(folder)
    ours = model.geomim.state_dict()
    theirs = encoder.state_dict()
    differ = sorted(name for name in ours.keys() | theirs.keys()
                    if name not in ours or name not in theirs or ours[name].shape != theirs[name].shape)
    if differ:
        raise ValueError(f"--init-encoder {folder}: its encoder is not the one --model-config builds; parameters "
                         f"missing or of another shape: {differ[:5]}{' ...' if len(differ) > 5 else ''}")
    model.geomim.load_state_dict(theirs)
    logger.info(f"encoder from {folder} ({len(theirs)} tensors); the decoder starts new", main_process_only=True)


LOSS_NAMES = {"geomim": ("reconstruction_loss", "depth_loss"), "pixel": ("reconstruction_loss",),
              "depth": ("depth_loss",)}


def main(argv=None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(args.output_dir, args.mixed_precision, args.gradient_accumulation_steps,
                                   args.report_to, args.seed)
    config = GeoMIMConfig.from_preset_or_folder(args.model_config)
    config.update(objective_overrides(args))
    config.validate_geometry()
    model = GeoMIMForMaskedBEVModeling(config)
    if args.init_encoder:
        load_encoder(model, args.init_encoder)
    teacher = cache = None
    if args.objective == "geomim":
        teacher = load_teacher(args.teacher)  # frozen, either kind
        teacher.config.check_student(config)
        cache = TeacherFeatureCache(args.teacher_features) if args.teacher_features else None
        if cache is not None:
            config.check_teacher(f"the teacher features in {args.teacher_features}", cache.grid, cache.channels)
    targets = "pixels" if args.objective == "pixel" else "LiDAR depth" if args.objective == "depth" else \
        "from " + args.teacher_features if cache else "by the frozen teacher"
    logger.info(f"student {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; objective "
                f"{args.objective}, targets {targets}", main_process_only=True)

    with accelerator.main_process_first():
        rows = load_nuscenes(args.dataroot, args.version, args.train_split, sweeps=args.sweeps,
                             classes=config.class_names)
    # Official pretraining augmentation: image resize/crop/flip/rotate, BEV flips only.
    processor = GeoMIMImageProcessor(image_size=config.image_size, bev_rotate_range=(0.0, 0.0),
                                     bev_scale_range=(1.0, 1.0), depth_stride=16, jpeg_draft=not args.full_jpeg_decode)
    # The batches hold the student's inputs (cached teacher features among them) and, for a teacher run
    # online, the LiDAR points it reads.
    online = teacher is not None and cache is None
    loader = make_dataloader(rows, processor, args.batch_size, training=True, num_workers=args.num_workers,
                             seed=args.seed, return_depth=True, with_targets=False, teacher_features=cache,
                             input_names=model.model_input_names + (TEACHER_INPUTS if online else ()))
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate, weight_decay=args.weight_decay)
    schedule = make_schedule(optimizer, accelerator, args.warmup_steps, args.max_steps)
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    if teacher is not None:
        teacher.to(accelerator.device)  # frozen: no DDP wrapper

    def with_targets(batch: dict) -> dict:
        """The student's inputs: a teacher run online turns the batch's LiDAR points into its features."""
        if online:
            with torch.no_grad():
                batch["teacher_features"] = teacher.bev_features(**{k: batch.pop(k) for k in TEACHER_INPUTS})
        return batch

    held_out = None
    if args.val_split and accelerator.is_main_process:
        held_out = HeldOut(args, accelerator.unwrap_model(model), rows, processor, cache, online, with_targets,
                           accelerator.device)
    accelerator.init_trackers("geomim_pretrain", config=vars(args))
    if args.torch_compile:
        compile_regions(accelerator.unwrap_model(model), args.torch_compile)

    start_step = resume(accelerator, args.output_dir, args.resume_from_checkpoint)

    model.train()
    log = TrainingLog(accelerator, args.output_dir, args.max_steps, start_step, "pretraining", args.logging_steps,
                      LOSS_NAMES[args.objective])
    started = time.perf_counter()
    for step, epoch, batch in training_batches(accelerator, loader, start_step, args.max_steps):
        # The mask is one draw per step, shared by the batch and the processes: seeded by the step.
        mask = random_cell_mask(config, torch.Generator().manual_seed(args.seed * 1_000_003 + step))
        batch = with_targets(batch)
        with accelerator.accumulate(model):
            out = model(**batch, bool_masked_pos=mask)
            optimizer_step(accelerator, model, optimizer, schedule, out.loss, args.max_grad_norm)
        log.update(step, epoch, out, schedule.get_last_lr()[0])
        if not accelerator.sync_gradients:
            continue  # the rest happens once per optimizer step
        if held_out is not None and step + 1 in args.eval_steps and step + 1 < args.max_steps:
            held_out.score(step + 1)
        if args.checkpointing_steps and (step + 1) % args.checkpointing_steps == 0:
            save_checkpoint(accelerator, args.output_dir, step + 1, {"epoch": epoch})
    log.close()
    seconds = time.perf_counter() - started

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(args.output_dir)
        processor.save_pretrained(args.output_dir)
        steps_run = max(args.max_steps - start_step, 1)
        summary = {"steps": args.max_steps, "seconds": round(seconds, 1), "seconds_per_step": seconds / steps_run}
        if held_out is not None:
            summary["held_out"] = {"split": args.val_split, **held_out.score(args.max_steps)}
        with open(os.path.join(args.output_dir, "pretrain_summary.json"), "w") as handle:
            json.dump(summary, handle, indent=2)
        plot_losses(log.path, os.path.join(args.output_dir, "loss_curve.png"),
                    os.path.join(args.output_dir, "learning_curve.json"))
        create_model_card(args.output_dir, training=training_summary(
            args, accelerator, seconds, schedule, objective=args.objective, teacher=args.teacher,
            mask_ratio=config.mask_ratio,
            **{"encoder init": args.init_encoder or "scratch", "loss region": args.loss_region,
               "cross-view attention": not args.no_cross_view, "depth branch": not args.no_depth_branch}))
        logger.info(f"saved the pretrained model to {args.output_dir} ({summary})", main_process_only=True)
    accelerator.end_training()


class HeldOut:
    """The held-out scoring of a pretraining (main process): the image-blind baseline fitted once on up to
    ``--eval-samples`` training samples, then :meth:`score` on as many ``--val-split`` samples, both unaugmented
    and in the order of their rows."""

    def __init__(self, args, model, train_rows, processor, cache, online: bool, with_targets, device):
        self.args, self.model, self.with_targets, self.device = args, model, with_targets, device
        with_points = TEACHER_INPUTS if online else ()

        def loader(rows):
            step = max(1, -(-len(rows) // args.eval_samples))  # evenly spaced, at most eval_samples
            return make_dataloader(rows.select(range(0, len(rows), step)), processor, args.batch_size,
                                   num_workers=args.num_workers, return_depth=True, with_targets=False,
                                   teacher_features=cache, input_names=model.model_input_names + with_points)

        self.baseline = ImageBlindBaseline(model)
        for batch in tqdm(loader(train_rows), desc="fitting the image-blind baseline"):
            self.baseline.update(with_targets(move_batch(batch, device)))
        held_out = load_nuscenes(args.dataroot, args.version, args.val_split, sweeps=args.sweeps,
                                 classes=model.config.class_names)
        self.loader = loader(held_out)

    def score(self, step: int) -> dict:
        batches = (self.with_targets(move_batch(batch, self.device)) for batch in self.loader)
        scores = evaluate_pretraining(self.model, batches, self.baseline, seed=self.args.seed)
        record_curve_point(self.args.output_dir, step, scores)
        logger.info(f"step {step} on {self.args.val_split}: " + ", ".join(
            f"{name} {value:.4f}" for name, value in scores.items() if name != "samples"), main_process_only=True)
        return scores


def plot_losses(history_path: str, path: str, curve_path: str | None = None) -> None:
    """The training losses by step and, where ``curve_path`` holds them, the held-out losses and their
    image-blind baselines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [json.loads(line) for line in open(history_path)]
    if not records:
        return
    curve = json.load(open(curve_path)) if curve_path and os.path.isfile(curve_path) else {}
    steps = np.array([r["step"] for r in records])
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for axis, key, title in ((axes[0], "reconstruction_loss", "reconstruction (MSE)"),
                             (axes[1], "depth_loss", "depth (BCE)")):
        if key not in records[0]:
            axis.set_visible(False)
            continue
        axis.plot(steps, [r[key] for r in records], label="training")
        if curve:
            held_out = sorted((int(step), scores) for step, scores in curve.items() if key in scores)
            axis.plot([s for s, _ in held_out], [c[key] for _, c in held_out], marker="o", label="held-out")
            axis.plot([s for s, _ in held_out], [c[key.replace("_loss", "_baseline")] for _, c in held_out],
                      linestyle="--", color="grey", label="held-out, image-blind baseline")
            axis.legend(fontsize=8)
        axis.set_xlabel("step")
        axis.set_title(title)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


if __name__ == "__main__":
    main()
