"""What the converters share: safe checkpoint reading, the conversion report, and strict assignment
into our models (every tensor accounted for; nothing silently partial)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pickle

import torch
import torch.nn.functional as F


class UnsafeCheckpointError(RuntimeError):
    """The checkpoint holds pickled objects other than tensors and plain containers."""


def load_state_dict(path: str, *, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: ``.safetensors``, or a PyTorch pickle read with ``weights_only=True``.

    A training checkpoint's weights are found under ``key`` or, by default, the first of ``state_dict``,
    ``model``, ``module`` that holds a dict (mmcv, MMEngine, timm and DeiT-style trainers).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise UnsafeCheckpointError(
            f"{path} holds pickled objects that are not tensors, and pickles can run code: refused (geomim-hf reads "
            "PyTorch checkpoints only with torch.load(weights_only=True)). If you trust its source, re-save just its "
            "tensors, e.g. torch.save({k: v for k, v in state_dict.items()}, 'clean.pth'), or convert it to "
            f"safetensors. Details: {str(error).splitlines()[0]}") from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: expected a dict of tensors, found {type(checkpoint).__name__}")
    candidates = [key] if key else ["state_dict", "model", "module"]
    for name in candidates:
        if isinstance(checkpoint.get(name), dict):
            checkpoint = checkpoint[name]
            break
    else:
        if key:
            raise KeyError(f"{path}: no dict under {key!r}; top-level keys: {sorted(checkpoint)[:20]}")
    tensors = {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ValueError(f"{path}: no tensors found (top-level keys: {sorted(checkpoint)[:20]})")
    return tensors


def resize_relative_position_bias_table(table: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    """A ((2a-1)(2b-1), heads) Swin bias table resized bicubically to another window, as timm and mmdet
    do when a checkpoint moves to a new window size."""
    rows = (2 * window[0] - 1) * (2 * window[1] - 1)
    if table.shape[0] == rows:
        return table
    side = round(table.shape[0] ** 0.5)
    if side * side != table.shape[0]:
        raise ValueError(f"relative position bias table of {table.shape[0]} rows is not from a square window: "
                         "resizing needs the source window's shape")
    grid = table.T.reshape(1, table.shape[1], side, side).float()
    resized = F.interpolate(grid, size=(2 * window[0] - 1, 2 * window[1] - 1), mode="bicubic", align_corners=False)
    return resized.reshape(table.shape[1], rows).T.to(table.dtype).contiguous()


def downsample_to_next_stage(key: str, stages: str) -> str:
    """``<stages>.i.downsample.*`` -> ``<stages>.{i+1}.downsample.*``. The original Swin release, timm < 0.9 and
    mmdet hold the patch merging at the end of stage i; timm >= 0.9 and ours at the start of stage i + 1."""
    parts = key.split(".")
    if parts[0] == stages and len(parts) > 2 and parts[2] == "downsample":
        parts[1] = str(int(parts[1]) + 1)
    return ".".join(parts)


@dataclasses.dataclass
class ConversionReport:
    """Where every source tensor went. ``unused``: source keys not converted, with the reason;
    ``initialised``: target keys the source cannot provide, with the reason; ``notes``: what the
    converter found out about the source (e.g. a detected weight layout)."""

    source: str
    converted: dict[str, str] = dataclasses.field(default_factory=dict)  # target key -> source key
    unused: dict[str, str] = dataclasses.field(default_factory=dict)
    initialised: dict[str, str] = dataclasses.field(default_factory=dict)
    notes: dict[str, str] = dataclasses.field(default_factory=dict)

    def write(self, path: str) -> None:
        with open(path, "w") as handle:
            json.dump(dataclasses.asdict(self), handle, indent=2)

    def summary(self) -> str:
        return (f"{len(self.converted)} tensors converted, {len(self.initialised)} initialised, "
                f"{len(self.unused)} source tensors unused")


def find_prefix(state_dict: dict[str, torch.Tensor], prefixes, probe: str, source: str, what: str,
                question: str) -> str:
    """The first of ``prefixes`` under which ``probe`` is a checkpoint key (where a wrapper model keeps the
    part we convert); otherwise an error naming ``what`` was looked for, where, and ``question``."""
    for prefix in prefixes:
        if prefix + probe in state_dict:
            return prefix
    raise KeyError(f"{source}: no {what} found (looked for {probe} under {[p or '<root>' for p in prefixes]}); "
                   f"{question}")


def split_checkpoint(state_dict: dict[str, torch.Tensor], prefix: str, other_parts: dict[str, str],
                     report: ConversionReport) -> tuple[dict[str, tuple[str, torch.Tensor]], list[str]]:
    """Sort a checkpoint's keys: those under ``prefix``, returned as ``{name without prefix: (key,
    tensor)}``; those starting with a key of ``other_parts`` (prefix -> reason), recorded as unused with
    their reason; and the rest, returned as unknown (for :func:`refuse_unknown`)."""
    inside, unknown = {}, []
    for key, value in state_dict.items():
        if reason := next((why for part, why in other_parts.items() if key.startswith(part)), None):
            report.unused[key] = reason
        elif key.startswith(prefix):
            inside[key[len(prefix):]] = (key, value)
        else:
            unknown.append(key)
    return inside, unknown


def checkpoint_parser(doc: str, checkpoint_help: str, config_default: str | None,
                      config_help: str) -> argparse.ArgumentParser:
    """The command line of a converter that reads one checkpoint file: ``--checkpoint``,
    ``--checkpoint-key``, ``--config`` and ``--output-dir``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help=checkpoint_help)
    parser.add_argument("--checkpoint-key", default=None, help="where the weights are in the file (default: "
                        "state_dict, model or module)")
    parser.add_argument("--config", default=config_default, help=config_help)
    parser.add_argument("--output-dir", required=True)
    return parser


def save_conversion(model, report: ConversionReport, output_dir: str, extra: str = "") -> None:
    """What every converter's command line ends with: the ``save_pretrained`` folder, its
    ``conversion_report.json``, a one-line summary and the reasons source tensors were left out."""
    model.save_pretrained(output_dir)
    report.write(os.path.join(output_dir, "conversion_report.json"))
    print(f"{report.source} -> {output_dir}: {report.summary()}{extra}")
    left = sorted(set(report.unused.values()))
    if left:
        print("not converted (see conversion_report.json):\n  " + "\n  ".join(left))


def assign(model: torch.nn.Module, converted: dict[str, torch.Tensor], report: ConversionReport,
           allowed_new: dict[str, str]) -> None:
    """Load ``converted`` into ``model`` strictly: every converted key must exist with the same shape, and
    every model key not converted must start with a prefix of ``allowed_new`` (prefix -> reason)."""
    expected = model.state_dict()
    unknown = sorted(set(converted) - set(expected))
    if unknown:
        raise KeyError(f"{report.source}: converted keys the model does not have: {unknown[:10]}"
                       f"{' ...' if len(unknown) > 10 else ''}")
    wrong = [f"{k}: source {tuple(v.shape)} vs model {tuple(expected[k].shape)}" for k, v in converted.items()
             if v.shape != expected[k].shape]
    if wrong:
        raise ValueError(f"{report.source}: shape mismatch (is the config the checkpoint's?): " + "; ".join(wrong[:10]))
    missing = []
    for key in sorted(set(expected) - set(converted)):
        reason = next((why for prefix, why in allowed_new.items() if key.startswith(prefix)), None)
        if reason is None:
            missing.append(key)
        else:
            report.initialised[key] = reason
    if missing:
        raise KeyError(f"{report.source}: refusing a partial conversion, the checkpoint has no source for "
                       f"{len(missing)} model tensors: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.items()}, strict=False)


def refuse_unknown(source: str, unknown: list[str]) -> None:
    """Source tensors that match no rule mean the checkpoint is not the layout the converter knows."""
    if unknown:
        raise KeyError(f"{source}: refusing the conversion, {len(unknown)} source tensors match no known key: "
                       f"{sorted(unknown)[:10]}{' ...' if len(unknown) > 10 else ''}")
