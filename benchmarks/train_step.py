"""Where a training step's time goes: data, each part of the model's forward, backward and the optimizer, for
pretraining or detection finetuning, on the CPU or CUDA; and whether the data pipeline keeps up.

    python benchmarks/train_step.py --task detect --preset geomim-tiny                # writes a small world first
    python benchmarks/train_step.py --task pretrain --preset geomim-small --dataroot DIR --version v1.0-trainval \
        --split train --workers 0 1 2 --json out/train_step.json

Two measurements, from one run:

1. **The model on one batch held in memory** (no data loading): forward hooks time each top-level part of the
   model (the encoder, the neck or decoder, the depth net, Lift-Splat, split into pooling indices and the rest, the
   BEV encoder, the head); what the forward spends outside them is the loss. Then backward and the AdamW step. On
   CUDA every part boundary synchronises, so the parts add up to a slightly slower step than the plain one, which
   is timed too (and, on CUDA, checked for host syncs with ``torch.cuda.set_sync_debug_mode``).
2. **The training loop with the real loader** at each ``--workers``: the seconds a step waits for its batch
   (``next(loader)``) against the seconds it computes; and the loader alone, its samples/s beside the model's
   consumption (batch / step seconds). Data is the bottleneck where the wait is a large share of the step.

The pretraining step reads teacher features of the target's shape from the batch, as with a feature cache
(``examples/cache_teacher_features.py``, the study's setting), so no teacher runs in the step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from collections import defaultdict

import torch

from common import device_name, synchronize, write_json  # benchmarks/common.py, beside this script
from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling, GeoMIMImageProcessor, random_cell_mask
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.modeling_geomim import GeoMIMForBEVDetection
from geomim_hf.synthetic.nuscenes_writer import write_nuscenes


class PartTimer:
    """Seconds spent in each top-level child module's forward (and in Lift-Splat's pooling indices), summed over
    calls; a part called from inside another (none is, at the top level) would be counted twice."""

    def __init__(self, model: torch.nn.Module, device: torch.device):
        self.device, self.seconds, self.handles, self.enabled = device, defaultdict(float), [], False
        for name, module in model.named_children():
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))
        lift_splat = getattr(model, "lift_splat", None)
        if lift_splat is not None:  # the indices are a method, not a module: wrap it for the breakdown
            self.lift_splat, self.indices = lift_splat, lift_splat.indices

            def timed_indices(*args, **kwargs):
                started = self._now()
                result = self.indices(*args, **kwargs)
                if self.enabled:
                    self.seconds["lift_splat: pooling indices"] += self._now() - started
                return result

            lift_splat.indices = timed_indices
        self._started: dict[str, float] = {}

    def _now(self) -> float:
        synchronize(self.device)
        return time.perf_counter()

    def _start(self, name):
        def hook(module, args):
            if self.enabled:
                self._started[name] = self._now()
        return hook

    def _stop(self, name):
        def hook(module, args, output):
            if self.enabled:
                self.seconds[name] += self._now() - self._started.pop(name)
        return hook

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        if hasattr(self, "lift_splat"):
            del self.lift_splat.indices  # the instance attribute goes; the method shows again


def build(task: str, config: GeoMIMConfig, batch_size: int):
    """The model and the processor as the training scripts make them, and a function that turns a loader batch
    into the model's keyword arguments for step ``step``."""
    if task == "pretrain":
        model = GeoMIMForMaskedBEVModeling(config)
        processor = GeoMIMImageProcessor(image_size=config.image_size, bev_rotate_range=(0.0, 0.0),
                                         bev_scale_range=(1.0, 1.0), depth_stride=16)
        generator = torch.Generator().manual_seed(0)
        targets = torch.randn(batch_size, config.target_channels, *config.target_grid.size, generator=generator)

        def inputs(batch: dict, step: int, device) -> dict:
            mask = random_cell_mask(config, torch.Generator().manual_seed(step))
            return {**batch, "teacher_features": targets[:len(batch["pixel_values"])].to(device),
                    "bool_masked_pos": mask.to(device)}
        names = tuple(name for name in model.model_input_names if name != "teacher_features")
        return model, processor, inputs, dict(return_depth=True, with_targets=False, input_names=names)
    model = GeoMIMForBEVDetection(config)
    processor = GeoMIMImageProcessor(image_size=config.image_size, depth_stride=model.feature_stride)
    return model, processor, (lambda batch, step, device: batch), dict(
        return_depth=True, temporal=config.det_temporal, input_names=model.model_input_names)


def to_device(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def model_breakdown(model, optimizer, batch: dict, inputs, device, steps: int, warmup: int) -> dict:
    """Median seconds per part over ``steps`` steps on one batch; and the plain step, without hooks."""
    timer = PartTimer(model, device)
    records = []
    for step in range(warmup + steps):
        timer.seconds.clear()
        timer.enabled = step >= warmup
        kwargs = inputs(batch, step, device)
        started = timer._now()
        out = model(**kwargs)
        forward = timer._now()
        out.loss.backward()
        backward = timer._now()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        done = timer._now()
        if step >= warmup:
            parts = dict(timer.seconds)
            if "lift_splat: pooling indices" in parts:  # counted inside lift_splat's forward too
                parts["lift_splat"] -= parts["lift_splat: pooling indices"]
            parts["loss (the forward outside the parts)"] = (forward - started) - sum(parts.values())
            parts["backward"] = backward - forward
            parts["optimizer"] = done - backward
            records.append(parts)
    timer.remove()
    plain = []
    for step in range(warmup + steps):
        kwargs = inputs(batch, step, device)
        synchronize(device)
        started = time.perf_counter()
        model(**kwargs).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= warmup:
            plain.append(time.perf_counter() - started)
    breakdown = {name: statistics.median(r[name] for r in records) for name in records[0]}
    return {"parts": breakdown, "step_with_hooks": sum(breakdown.values()), "step": statistics.median(plain)}


def host_syncs(model, optimizer, batch: dict, inputs, device) -> int | None:
    """Host-device synchronisations in one training step (CUDA only): the warnings of sync debug mode."""
    if device.type != "cuda":
        return None
    kwargs = inputs(batch, 0, device)
    torch.cuda.synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            model(**kwargs).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(warning.message) for warning in caught)


def loop_with_loader(model, optimizer, loader, inputs, device, steps: int) -> dict:
    """The training loop as the scripts run it: seconds waiting for each batch against computing it."""
    iterator = iter(loader)
    next(iterator)  # the workers start outside the clock
    waits, computes = [], []
    for step in range(steps):
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        batch = to_device(batch, device)
        synchronize(device)
        fetched = time.perf_counter()
        model(**inputs(batch, step, device)).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        waits.append(fetched - started)
        computes.append(time.perf_counter() - fetched)
    return {"wait": statistics.mean(waits), "compute": statistics.mean(computes)}


def loader_alone(loader, batches: int) -> float:
    """Samples per second of the loader with nothing else running."""
    iterator = iter(loader)
    next(iterator)
    started, seen = time.perf_counter(), 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        seen += len(batch["pixel_values"])
    return seen / (time.perf_counter() - started)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", choices=("pretrain", "detect"), default="detect")
    parser.add_argument("--preset", default="geomim-tiny", help="a preset name or a folder with config.json")
    parser.add_argument("--out-indices", type=int, nargs="+", default=None,
                        help="detect: encoder stages the detector reads (the cpu study: 1 2 3)")
    parser.add_argument("--no-temporal", action="store_true", help="detect: without the previous keyframe")
    parser.add_argument("--dataroot", help="a nuScenes-format dataroot; default: write a small synthetic world")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--split", default="mini_train")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    config = GeoMIMConfig.from_preset_or_folder(args.preset)
    if args.task == "detect":
        config.update({"det_temporal": not args.no_temporal,
                       **({"out_indices": tuple(args.out_indices)} if args.out_indices else {})})
    model, processor, inputs, loader_options = build(args.task, config, args.batch_size)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    with tempfile.TemporaryDirectory() as scratch:
        dataroot = args.dataroot
        if dataroot is None:
            dataroot = os.path.join(scratch, "nuscenes")
            write_nuscenes(dataroot, num_scenes=4, samples_per_scene=4, workers=2)
        rows = load_nuscenes(dataroot, args.version, args.split, sweeps=0, classes=config.class_names,
                             cache_dir=os.path.join(scratch, "cache"))

        def loader(workers: int):
            return make_dataloader(rows, processor, args.batch_size, training=True, num_workers=workers,
                                   **loader_options)

        batch = to_device(next(iter(loader(0))), device)
        breakdown = model_breakdown(model, optimizer, batch, inputs, device, args.steps, args.warmup)
        syncs = host_syncs(model, optimizer, batch, inputs, device)
        pipeline = {}
        for workers in args.workers:
            pipeline[workers] = {**loop_with_loader(model, optimizer, loader(workers), inputs, device, args.steps),
                                 "loader_samples_per_s": loader_alone(loader(workers), args.steps)}

    step = breakdown["step"]
    print(f"{args.task}, {args.preset}, batch {args.batch_size}, image {tuple(config.image_size)}, {device_name(device)}; "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters; median of {args.steps} steps")
    print(f"\n{'part (one batch in memory)':44} {'ms':>9} {'share':>7}")
    total = breakdown["step_with_hooks"]
    for name, seconds in breakdown["parts"].items():
        print(f"{name:44} {seconds * 1e3:>9.1f} {seconds / total:>6.0%}")
    print(f"{'sum of the parts (synchronised at each)':44} {total * 1e3:>9.1f}")
    print(f"{'plain step':44} {step * 1e3:>9.1f}")
    if syncs is not None:
        print(f"host syncs in one step: {syncs}")
    consumption = args.batch_size / step
    print(f"\n{'workers':>7} {'wait ms':>9} {'compute ms':>11} {'wait share':>11} {'loader samples/s':>17} "
          f"{'model samples/s':>16} {'loader / model':>15}")
    for workers, row in pipeline.items():
        print(f"{workers:>7} {row['wait'] * 1e3:>9.1f} {row['compute'] * 1e3:>11.1f} "
              f"{row['wait'] / (row['wait'] + row['compute']):>10.0%} {row['loader_samples_per_s']:>17.2f} "
              f"{consumption:>16.2f} {row['loader_samples_per_s'] / consumption:>14.2f}x")
    results = {"task": args.task, "preset": args.preset, "batch_size": args.batch_size,
               "image_size": list(config.image_size), "device": device_name(device), "steps": args.steps,
               "parts_seconds": breakdown["parts"], "step_seconds": step,
               "step_with_hooks_seconds": total, "host_syncs": syncs,
               "pipeline": {str(k): v for k, v in pipeline.items()}, "model_samples_per_s": consumption}
    write_json(args.json, results)
    return results


if __name__ == "__main__":
    main()
