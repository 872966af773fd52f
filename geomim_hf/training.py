"""What the training scripts share: the learning-rate schedule, atomic checkpoints that resume
exactly, and the Accelerate set-up. Scripts stay flat; this file holds only what two of them need."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, GradientAccumulationPlugin, ProjectConfiguration, set_seed

logger = get_logger(__name__)

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def add_training_arguments(parser, *, max_steps: int, batch_size: int, learning_rate: float, warmup_steps: int,
                           logging_steps: int, datasets: tuple[str, ...] = ("nuscenes",)) -> None:
    """The flags every training script takes: data source, schedule, precision, checkpoints, trackers.
    Defaults that differ between scripts are passed in, and the datasets the script reads."""
    parser.add_argument("--dataset", default="nuscenes", choices=list(datasets),
                        help="nuScenes (--version, splits train/val) or Waymo v2 (splits training/validation; "
                        "'train' and 'val' name them too)")
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--train-split", default="train")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--sweeps", type=int, default=9, help="earlier LiDAR sweeps merged into each keyframe")
    parser.add_argument("--max-steps", type=int, default=max_steps,
                        help="optimizer steps, each over --gradient-accumulation-steps batches")
    parser.add_argument("--batch-size", type=int, default=batch_size, help="per process")
    parser.add_argument("--learning-rate", type=float, default=learning_rate)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=warmup_steps, help="optimizer steps")
    parser.add_argument("--gradient-accumulation-steps", type=int, default=1)
    parser.add_argument("--max-grad-norm", type=float, default=35.0)
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"])
    parser.add_argument("--torch-compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the model's fixed-shape regions (see compile_regions); BACKEND "
                        "defaults to inductor")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--full-jpeg-decode", action="store_true",
                        help="decode JPEGs in full before resizing (default: at a reduced DCT scale, faster; see "
                        "GeoMIMImageProcessor's jpeg_draft)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpointing-steps", type=int, default=500,
                        help="optimizer steps between checkpoints; 0: none")
    parser.add_argument("--resume-from-checkpoint", default=None, help="a checkpoint folder or 'latest'")
    parser.add_argument("--logging-steps", type=int, default=logging_steps, help="optimizer steps between loss logs")
    parser.add_argument("--report-to", default="none", help="an Accelerate tracker: tensorboard, wandb, ... or none")


def training_summary(args, accelerator: Accelerator, seconds: float, schedule=None, **extra) -> dict:
    """How a run trained, for its model card: the data, the schedule and the time it took. ``steps`` are
    optimizer steps, each over ``gradient_accumulation_steps`` batches; given the run's ``schedule``,
    also the optimizer steps it took (resumed runs included) and the learning rate it ended at."""
    summary = {"data": f"{args.dataset} {args.version} {args.train_split} ({args.sweeps} sweeps)",
               "steps": args.max_steps,
               "batch size": f"{args.batch_size} x {accelerator.num_processes} processes x "
               f"{args.gradient_accumulation_steps} accumulation", "optimizer": f"AdamW, lr {args.learning_rate}, "
               f"weight decay {args.weight_decay}, {args.warmup_steps} warmup steps, cosine",
               "mixed precision": args.mixed_precision, "seed": args.seed, "train seconds": round(seconds, 1)}
    if schedule is not None:  # a prepared scheduler steps once per process and optimizer step
        summary["optimizer_steps"] = getattr(schedule, "scheduler", schedule).last_epoch // accelerator.num_processes
        summary["final_learning_rate"] = schedule.get_last_lr()[0]
    return {**summary, **extra}


def compile_regions(model: torch.nn.Module, backend: str = "inductor") -> list[str]:
    """``torch.compile`` in place the submodules a model lists in ``_compile_regions``: the parts whose
    shapes are fixed by the config (encoder, decoder, depth net, BEV encoder, heads). Lifting and pooling
    stay eager: their index tensors change size with every augmented geometry, and compiling them would
    recompile every step. In place (``nn.Module.compile``), so parameter names, checkpoints and
    ``save_pretrained`` are those of the eager model. Returns the regions compiled."""
    regions = getattr(model, "_compile_regions", ())
    if not regions:
        raise ValueError(f"{type(model).__name__} lists no _compile_regions: --torch-compile does not support it")
    backends = torch._dynamo.list_backends(exclude_tags=())
    if backend not in backends:
        raise ValueError(f"--torch-compile backend {backend!r} is not one of {backends}")
    compiled = []
    for name in regions:  # a region the config did not build (e.g. the pixel objective's BEV head) is absent
        try:
            module = model.get_submodule(name)
        except AttributeError:
            continue
        module.compile(backend=backend)
        compiled.append(name)
    return compiled


def cosine_lr_lambda(warmup_steps: int, total_steps: int, warmup_start: float = 1 / 3, final: float = 1e-3):
    """Multiplier of the base learning rate at a step: linear warmup from ``warmup_start``, then cosine
    down to ``final`` (the official GeoMIM schedule: from lr/3 over 500 iterations, to 1e-3 lr)."""

    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return warmup_start + (1 - warmup_start) * step / max(warmup_steps, 1)
        progress = min((step - warmup_steps) / max(total_steps - warmup_steps, 1), 1.0)
        return final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress))

    return multiplier


def make_schedule(optimizer, accelerator: Accelerator, warmup_steps: int, max_steps: int):
    """The cosine schedule, counted in scheduler steps: Accelerate steps a prepared scheduler once per
    process and optimizer step."""
    processes = accelerator.num_processes
    return torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lr_lambda(warmup_steps * processes,
                                                                         max_steps * processes))


def ema_multi_avg_fn(decay: float, ramp_steps: float = 2000.0):
    """``AveragedModel``'s EMA update with the warm-up ramp of BEVDet's EMA (from YOLOX): the n-th update
    uses ``decay * (1 - exp(-n / ramp_steps))``, so a short run averages its trained weights instead of
    keeping most of the random initialisation (a flat 0.999 keeps 0.999**n of it)."""
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
    if ramp_steps <= 0:
        raise ValueError(f"EMA ramp_steps must be positive, got {ramp_steps}")

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        weight = 1.0 - decay * (1.0 - math.exp(-float(num_averaged) / ramp_steps))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:  # integer buffers (BatchNorm's num_batches_tracked) follow the model
            torch._foreach_copy_(averaged, current)

    return update


def optimizer_step(accelerator: Accelerator, model, optimizer, schedule, loss: torch.Tensor,
                   max_grad_norm: float) -> None:
    """Backward, clip when the gradients are synchronised, step; inside ``accelerator.accumulate``."""
    accelerator.backward(loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    schedule.step()
    optimizer.zero_grad()


class TrainingLog:
    """A progress bar, the tracker logs and a JSON-lines loss history (``loss_history.jsonl``), all on
    the main process; a resumed run continues the history from its checkpoint's step. Called after
    every batch; every ``logging_steps`` optimizer steps (and at the last) it records ``loss`` and the
    output's ``loss_names``, each the mean over the step's accumulated batches, with the learning rate
    and the epoch."""

    def __init__(self, accelerator: Accelerator, output_dir: str, total: int, initial: int, description: str,
                 logging_steps: int, loss_names: tuple[str, ...]):
        from tqdm.auto import tqdm

        self.accelerator, self.total, self.logging_steps = accelerator, total, logging_steps
        self.loss_names = ("loss", *loss_names)
        self.path = os.path.join(output_dir, "loss_history.jsonl")
        self.progress = tqdm(total=total, initial=initial, desc=description, disable=not accelerator.is_main_process)
        self.history = None
        if accelerator.is_main_process:
            # A run resumed at step ``initial`` keeps the history up to its checkpoint; what a stopped run
            # logged after it (or all of it, on a fresh start) is replaced by the steps run again.
            kept = []
            if initial and os.path.isfile(self.path):
                kept = [line for line in open(self.path) if json.loads(line)["step"] <= initial]
            with open(self.path + ".partial", "w") as handle:
                handle.writelines(kept)
            os.replace(self.path + ".partial", self.path)
            self.history = open(self.path, "a")
        self.sums, self.batches = None, 0  # the current optimizer step's losses so far

    def update(self, step: int, epoch: int, output, learning_rate: float) -> None:
        """After a batch of optimizer step ``step`` (0-based): add its losses; once the step is taken,
        advance the bar and, when due, record the means under step + 1."""
        losses = [getattr(output, name).detach() for name in self.loss_names]
        self.sums = losses if self.sums is None else [a + b for a, b in zip(self.sums, losses)]
        self.batches += 1
        if not self.accelerator.sync_gradients:
            return
        sums, batches = self.sums, self.batches
        self.sums, self.batches = None, 0
        self.progress.update(1)
        if (step + 1) % self.logging_steps and step + 1 != self.total:
            return
        logs = {name: (value / batches).item() for name, value in zip(self.loss_names, sums)}
        logs.update(lr=learning_rate, epoch=epoch)
        self.accelerator.log(logs, step=step + 1)
        self.progress.set_postfix(loss=f"{logs['loss']:.4f}")
        if self.history:
            self.history.write(json.dumps({"step": step + 1, **logs}) + "\n")
            self.history.flush()

    def close(self) -> None:
        self.progress.close()
        if self.history:
            self.history.close()


def make_accelerator(output_dir: str, mixed_precision: str, gradient_accumulation_steps: int, report_to: str | None,
                     seed: int) -> Accelerator:
    """Accelerator with seedable data order (resume replays the same batches) and trackers."""
    os.makedirs(output_dir, exist_ok=True)
    if gradient_accumulation_steps < 1:
        raise ValueError(f"--gradient-accumulation-steps must be at least 1, got {gradient_accumulation_steps}")
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        # Every optimizer step sums exactly this many batches, across epoch ends too (training_batches).
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=gradient_accumulation_steps,
                                                                sync_with_dataloader=False),
        log_with=None if report_to in (None, "none") else report_to,
        project_config=ProjectConfiguration(project_dir=output_dir, logging_dir=os.path.join(output_dir, "logs")),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
    )
    set_seed(seed, device_specific=False)
    return accelerator


def save_checkpoint(accelerator: Accelerator, output_dir: str, step: int, state: dict, keep: int = 2) -> str:
    """Write ``checkpoint-{step}`` atomically: everything goes to a temporary folder that is renamed
    into place only once complete, so a stop mid-write never leaves a checkpoint that looks whole.
    Keeps the newest ``keep`` checkpoints."""
    final = os.path.join(output_dir, f"checkpoint-{step}")
    partial = final + ".partial"
    if accelerator.is_main_process and os.path.isdir(partial):
        shutil.rmtree(partial)
    accelerator.wait_for_everyone()
    accelerator.save_state(partial)
    if accelerator.is_main_process:
        with open(os.path.join(partial, "trainer_state.json"), "w") as handle:
            json.dump({**state, "step": step}, handle)
        if os.path.isdir(final):
            shutil.rmtree(final)
        os.replace(partial, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: str) -> list[str]:
    """Complete checkpoints, oldest first."""
    if not os.path.isdir(output_dir):
        return []
    found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := CHECKPOINT_PATTERN.match(name))]
    return [os.path.join(output_dir, name) for _, name in sorted(found)]


def resolve_resume(output_dir: str, resume_from: str | None) -> str | None:
    """``latest`` picks the newest complete checkpoint in ``output_dir``; a path must be one."""
    if resume_from is None:
        return None
    if resume_from == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    if not os.path.isfile(os.path.join(resume_from, "trainer_state.json")):
        raise FileNotFoundError(f"--resume-from-checkpoint {resume_from} is not a complete checkpoint "
                                f"(no trainer_state.json); complete ones in {output_dir}: {list_checkpoints(output_dir)}")
    return resume_from


def load_checkpoint(accelerator: Accelerator, path: str) -> dict:
    """Restore model, optimizer, scheduler and RNG states; returns the saved trainer state."""
    accelerator.load_state(path)
    with open(os.path.join(path, "trainer_state.json")) as handle:
        return json.load(handle)


def resume(accelerator: Accelerator, output_dir: str, resume_from: str | None) -> int:
    """Restore a checkpoint when asked (a folder or ``latest``); returns the step to continue from."""
    path = resolve_resume(output_dir, resume_from)
    if path is None:
        return 0
    step = load_checkpoint(accelerator, path)["step"]
    logger.info(f"resumed from {path} at step {step}", main_process_only=True)
    return step


def training_batches(accelerator: Accelerator, dataloader, start_step: int, max_steps: int):
    """Yield ``(step, epoch, batch)`` for the optimizer steps ``start_step .. max_steps - 1``: each
    optimizer step takes ``accelerator.gradient_accumulation_steps`` batches, all yielded under its
    ``step``, so steps, schedule and checkpoints count optimizer steps whatever the accumulation. Each
    epoch reseeds the data order and the augmentations (``set_epoch``), and a resumed run skips the
    batches already seen this epoch. Needs the accelerator of :func:`make_accelerator`, whose
    accumulation runs across epoch ends (with Accelerate's default, an epoch's last batch would force
    a short step)."""
    accumulation = accelerator.gradient_accumulation_steps
    batches_per_epoch = len(dataloader)
    index = start_step * accumulation  # the next batch to yield, counted from the run's start
    total = max_steps * accumulation
    while index < total:
        epoch, seen = divmod(index, batches_per_epoch)
        dataloader.set_epoch(epoch)
        dataset = getattr(dataloader, "dataset", None)
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        loader = accelerator.skip_first_batches(dataloader, seen) if seen else dataloader
        for batch in loader:
            yield index // accumulation, epoch, batch
            index += 1
            if index == total:
                return


def move_batch(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


def record_curve_point(output_dir: str, step: int, metrics: dict) -> None:
    """Add the held-out scores after ``step`` (a finetuning's devkit metrics, a pretraining's losses) to
    ``learning_curve.json`` ({step: scores}; a step scored again is replaced), atomically."""
    path = os.path.join(output_dir, "learning_curve.json")
    curve = json.load(open(path)) if os.path.isfile(path) else {}
    curve[str(step)] = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    with open(path + ".partial", "w") as handle:
        json.dump(dict(sorted(curve.items(), key=lambda kv: int(kv[0]))), handle, indent=2)
    os.replace(path + ".partial", path)
