"""What an encoder's features hold, without training a detector: a ridge probe of LiDAR depth per token.

    python examples/probe_encoder.py --dataroot S/nuscenes --encoders random:geomim-small S/pretrain/geomim-seed0 \
        --fit-split train_track --eval-split train_detect --json E/probe.json

For each encoder (a pretraining or ``GeoMIMModel`` folder, or ``random:PRESET`` for a randomly initialised one,
seeded by ``--seed``), frozen and in eval mode, the stride-16 features of every camera token that holds a LiDAR
point are fitted by ridge regression to the log of that token's LiDAR depth on ``--fit-split`` and scored on
``--eval-split`` (R^2; 1 is exact, 0 is predicting the fit split's mean). Also, on the eval split, the features'
effective rank (the exponential of the entropy of their covariance spectrum) and their varying share (the part of
their mean square that changes from token to token: near 0 for an encoder that gives every token the same vector,
whatever the image). Same images, tokens and probe for every encoder; no image augmentation. The ridge penalty
is chosen on the fit split alone (its keyframes halved).

Depth from one token is what a camera detector's depth net must get right first; a frozen encoder whose
features hold less of it than random features do has lost information the detector needs.
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
from tqdm.auto import tqdm

from geomim_hf import GeoMIMConfig, GeoMIMImageProcessor, GeoMIMModel
from geomim_hf.data import load_nuscenes, make_dataloader

STRIDE = 16  # the stage every preset has at stride 16 (index 2): pretraining's decoder reads it
PENALTIES = (1e-3, 1e-2, 1e-1, 1.0, 10.0)  # ridge penalties tried, times the mean feature variance x tokens


def load_encoder(spec: str, seed: int) -> GeoMIMModel:
    if spec.startswith("random:"):
        config = GeoMIMConfig.from_preset(spec.split(":", 1)[1])
        torch.manual_seed(seed)
    else:
        config = GeoMIMConfig.from_pretrained(spec)
    config.out_indices = (2,)
    if config.stage_strides[2] != STRIDE:
        raise ValueError(f"{spec}: stage 2 has stride {config.stage_strides[2]}, the probe reads stride {STRIDE}")
    if spec.startswith("random:"):
        return GeoMIMModel(config).eval()
    return GeoMIMModel.from_pretrained(spec, config=config).eval()


def token_batches(dataroot, version, split, image_size, batch_size, num_workers, max_samples):
    """(pixel_values (B, N, 3, H, W), depth (B, N, h, w)) batches of a split, unaugmented."""
    rows = load_nuscenes(dataroot, version, split, sweeps=0)
    if max_samples and len(rows) > max_samples:
        rows = rows.select(torch.linspace(0, len(rows) - 1, max_samples).long().tolist())
    processor = GeoMIMImageProcessor(image_size=image_size, depth_stride=STRIDE)
    loader = make_dataloader(rows, processor, batch_size, training=False, num_workers=num_workers,
                             return_depth=True, input_names=("pixel_values", "depth_labels"))
    return [(batch["pixel_values"], batch["depth_labels"]) for batch in tqdm(loader, desc=f"loading {split}")]


@torch.no_grad()
def features_and_targets(encoder: GeoMIMModel, batches) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, C) float64 features of the tokens with a LiDAR depth, and (T,) their log depths."""
    features, targets = [], []
    for pixel_values, depth in batches:
        feature_map = encoder(pixel_values).feature_maps[0]  # (B, N, C, h, w)
        if feature_map.shape[-2:] != depth.shape[-2:]:
            raise ValueError(f"features {tuple(feature_map.shape[-2:])} and depth maps {tuple(depth.shape[-2:])} "
                             "differ in size")
        valid = depth > 0  # (B, N, h, w)
        features.append(feature_map.permute(0, 1, 3, 4, 2)[valid].double())
        targets.append(depth[valid].double().log())
    return torch.cat(features), torch.cat(targets)


def ridge(features: torch.Tensor, targets: torch.Tensor, penalty: float):
    """Weights and bias of ridge regression on standardised features; returns a predict function."""
    mean, std = features.mean(0), features.std(0).clamp(min=1e-8)
    x = (features - mean) / std
    gram = x.T @ x + penalty * len(x) * torch.eye(x.shape[1], dtype=x.dtype)
    weights = torch.linalg.solve(gram, x.T @ (targets - targets.mean()))
    return lambda f: ((f - mean) / std) @ weights + targets.mean()


def r_squared(predicted: torch.Tensor, targets: torch.Tensor, reference_mean: torch.Tensor) -> float:
    return float(1 - ((predicted - targets) ** 2).sum() / ((targets - reference_mean) ** 2).sum())


def effective_rank(features: torch.Tensor) -> float:
    centred = features - features.mean(0)
    spectrum = torch.linalg.eigvalsh(centred.T @ centred / len(centred)).clamp(min=0)
    p = spectrum / spectrum.sum()
    return float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))


def varying_share(features: torch.Tensor) -> float:
    """trace(covariance) / mean squared norm of (T, C) features: 1 - |mean|^2 / E|f|^2."""
    return float((features - features.mean(0)).pow(2).sum(-1).mean() / features.pow(2).sum(-1).mean())


def probe(fit: tuple[torch.Tensor, torch.Tensor], evaluation: tuple[torch.Tensor, torch.Tensor],
          fit_halves: tuple[torch.Tensor, torch.Tensor]) -> dict:
    """The penalty with the best R^2 from one half of the fit tokens to the other, then refitted on all of them."""
    (x, y), (x_eval, y_eval) = fit, evaluation
    first, second = fit_halves
    scores = {p: r_squared(ridge(x[first], y[first], p)(x[second]), y[second], y[first].mean()) for p in PENALTIES}
    penalty = max(scores, key=scores.get)
    return {"depth_r2": r_squared(ridge(x, y, penalty)(x_eval), y_eval, y.mean()), "penalty": penalty,
            "penalty_scores": scores, "effective_rank": effective_rank(x_eval),
            "varying_share": varying_share(x_eval), "channels": x.shape[1],
            "fit_tokens": len(x), "eval_tokens": len(x_eval)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-trainval")
    parser.add_argument("--encoders", nargs="+", required=True, help="folders, or random:PRESET")
    parser.add_argument("--fit-split", default="train_track")
    parser.add_argument("--eval-split", default="train_detect")
    parser.add_argument("--max-samples", type=int, default=0, help="at most this many keyframes per split (0: all)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="of the random encoders")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    encoders = {spec: load_encoder(spec, args.seed) for spec in args.encoders}
    sizes = {tuple(e.config.image_size) for e in encoders.values()}
    if len(sizes) != 1:
        raise ValueError(f"--encoders take images of different sizes {sorted(sizes)}: the probe needs one")
    image_size = sizes.pop()
    fit_batches = token_batches(args.dataroot, args.version, args.fit_split, image_size, args.batch_size,
                                args.num_workers, args.max_samples)
    eval_batches = token_batches(args.dataroot, args.version, args.eval_split, image_size, args.batch_size,
                                 args.num_workers, args.max_samples)
    results = {}
    for spec, encoder in encoders.items():
        fit = features_and_targets(encoder, fit_batches)
        # The penalty is chosen between the fit split's halves: tokens come in keyframe order, so the halves are
        # different keyframes (mostly different scenes).
        halves = (torch.arange(len(fit[0]) // 2), torch.arange(len(fit[0]) // 2, len(fit[0])))
        results[spec] = probe(fit, features_and_targets(encoder, eval_batches), halves)
        print(f"{spec}: depth R^2 {results[spec]['depth_r2']:.3f}, effective rank "
              f"{results[spec]['effective_rank']:.1f} of {results[spec]['channels']} channels, varying share "
              f"{results[spec]['varying_share']:.3f}", flush=True)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump({"image_size": image_size, "stride": STRIDE, "fit_split": args.fit_split,
                       "eval_split": args.eval_split, "seed": args.seed,
                       "encoders": {k: {n: (v if not isinstance(v, float) or math.isfinite(v) else None)
                                        for n, v in r.items()} for k, r in results.items()}}, handle, indent=2)


if __name__ == "__main__":
    main()
