"""The image-blind baseline of pretraining and the held-out scores, against loops over samples and pixels."""

import math

import numpy as np
import pytest
import torch

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling
from geomim_hf.evaluation.pretraining import DEPTH_PSEUDO_COUNT, ImageBlindBaseline, evaluate_pretraining


def _model(objective: str) -> GeoMIMForMaskedBEVModeling:
    torch.manual_seed(0)
    return GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny", pretrain_objective=objective))


def _batches(model, count: int, batch_size: int, seed: int = 0) -> list[dict]:
    """Random inputs of the model's shapes: identity cameras do not matter for the BEV MSE (all cells)."""
    generator = torch.Generator().manual_seed(seed)
    config = model.config
    views, (height, width) = 6, config.image_size
    feature = (height // 16, width // 16)
    bins = config.pretraining_depth_bins
    batches = []
    for _ in range(count):
        depth = torch.rand(batch_size, views, *feature, generator=generator) * (bins.stop + 10.0) - 5.0
        depth[torch.rand(depth.shape, generator=generator) < 0.3] = 0.0  # cells without a LiDAR depth
        intrinsics = torch.tensor([[40.0, 0, width / 2], [0, 40.0, height / 2], [0, 0, 1]])
        ego_from_camera = torch.eye(4)
        ego_from_camera[:3, :3] = torch.tensor([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # camera looks along x
        ego_from_camera[2, 3] = 1.5
        batches.append({
            "pixel_values": torch.randn(batch_size, views, 3, height, width, generator=generator),
            "intrinsics": intrinsics.expand(batch_size, views, 3, 3).clone(),
            "ego_from_camera": ego_from_camera.expand(batch_size, views, 4, 4).clone(),
            "processed_from_original": torch.eye(3).expand(batch_size, views, 3, 3).clone(),
            "augmented_ego_from_ego": torch.eye(4).expand(batch_size, 4, 4).clone(),
            "teacher_features": torch.randn(batch_size, config.target_channels, *config.target_grid.size,
                                            generator=generator) * 3 + 1,
            "depth_labels": depth,
        })
    return batches


def _normalised_target(features: np.ndarray, patch: int, eps: float) -> np.ndarray:
    """One sample's (C, Y, X) features normalised per patch x patch block, block by block."""
    out = np.empty_like(features, dtype=np.float64)
    for y in range(0, features.shape[1], patch):
        for x in range(0, features.shape[2], patch):
            block = features[:, y:y + patch, x:x + patch].astype(np.float64)
            out[:, y:y + patch, x:x + patch] = (block - block.mean()) / math.sqrt(block.var() + eps)
    return out


def _depth_frequencies(batches, config) -> np.ndarray:
    """(N, h, w, D) smoothed frequencies of the bins, counted pixel by pixel."""
    bins = config.pretraining_depth_bins
    depths = np.concatenate([b["depth_labels"].numpy() for b in batches])  # (S, N, h, w)
    counts = np.full((*depths.shape[1:], bins.count), DEPTH_PSEUDO_COUNT)
    for sample, view, row, column in np.ndindex(*depths.shape):
        depth = depths[sample, view, row, column]
        index = math.floor((depth - bins.start) / bins.step)
        if depth > 0 and 0 <= index < bins.count:
            counts[view, row, column, index] += 1
    return counts / counts.sum(-1, keepdims=True)


def test_baseline_is_the_mean_target_and_the_depth_frequencies():
    model = _model("geomim")
    config = model.config
    batches = _batches(model, count=3, batch_size=2)
    baseline = ImageBlindBaseline(model)
    for batch in batches:
        baseline.update(batch)
    samples = [f.numpy() for b in batches for f in b["teacher_features"]]
    expected = np.mean([_normalised_target(f, config.target_patch_size, config.target_norm_eps) for f in samples], 0)
    np.testing.assert_allclose(baseline.reconstruction().numpy(), expected, atol=1e-5)
    frequencies = baseline.depth_logits().softmax(1).permute(0, 2, 3, 1).numpy()  # (N, h, w, D)
    np.testing.assert_allclose(frequencies, _depth_frequencies(batches, config), rtol=1e-5)


def test_pixel_baseline_is_the_mean_normalised_pixels():
    model = _model("pixel")
    batches = _batches(model, count=2, batch_size=2)
    baseline = ImageBlindBaseline(model)
    for batch in batches:
        baseline.update(batch)
    assert baseline.depth_logits() is None  # the pixel objective has no depth
    patch = 16
    grid = model.decoder_grid
    targets = []
    for batch in batches:
        for images in batch["pixel_values"].numpy():  # (N, 3, H, W)
            padded = np.zeros((images.shape[0], 3, grid[0] * patch, grid[1] * patch))
            padded[:, :, : images.shape[2], : images.shape[3]] = images
            tokens = np.empty((images.shape[0], *grid, patch * patch * 3))
            for view, row, column in np.ndindex(images.shape[0], *grid):
                block = padded[view, :, row * patch:(row + 1) * patch, column * patch:(column + 1) * patch]
                values = block.transpose(1, 2, 0).reshape(-1)  # row, column, channel order
                tokens[view, row, column] = (values - values.mean()) / math.sqrt(values.var() + 1e-6)
            targets.append(tokens)
    np.testing.assert_allclose(baseline.reconstruction().numpy(), np.mean(targets, 0), atol=1e-4)


def test_held_out_scores_of_the_baseline_by_hand():
    """Batches of one sample: the baseline's reconstruction score is each held-out sample's MSE to the mean
    map, its depth score BEVDepth's BCE of the frequencies on the cells with a depth, both averaged over
    samples; the model's own scores come with them, and two calls give the same numbers."""
    model = _model("geomim")
    config = model.config
    baseline = ImageBlindBaseline(model)
    for batch in _batches(model, count=4, batch_size=1, seed=1):
        baseline.update(batch)
    held_out = _batches(model, count=3, batch_size=1, seed=2)
    model.train()
    scores = evaluate_pretraining(model, held_out, baseline, seed=3)
    assert model.training  # the mode is restored
    assert scores["samples"] == 3
    mean_map = baseline.reconstruction().numpy()
    expected = np.mean([((_normalised_target(b["teacher_features"][0].numpy(), config.target_patch_size,
                                             config.target_norm_eps) - mean_map) ** 2).mean() for b in held_out])
    assert scores["reconstruction_baseline"] == pytest.approx(expected, rel=1e-5)

    frequencies = baseline.depth_logits().softmax(1).permute(0, 2, 3, 1).double().numpy()  # (N, h, w, D)
    bins = config.pretraining_depth_bins
    per_sample = []
    for batch in held_out:
        losses = []
        for view, row, column in np.ndindex(*batch["depth_labels"].shape[1:]):
            depth = float(batch["depth_labels"][0, view, row, column])
            index = math.floor((depth - bins.start) / bins.step)
            if depth > 0 and 0 <= index < bins.count:
                p = np.clip(frequencies[view, row, column], 1e-6, 1 - 1e-6)
                y = np.eye(bins.count)[index]
                losses.append(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())
        per_sample.append(np.mean(losses))
    assert scores["depth_baseline"] == pytest.approx(np.mean(per_sample), rel=1e-4)

    assert scores["reconstruction_loss"] > 0 and scores["depth_loss"] > 0
    assert scores["loss"] == pytest.approx(scores["reconstruction_loss"]
                                           + config.depth_loss_weight * scores["depth_loss"], rel=1e-6)
    assert evaluate_pretraining(model, held_out, baseline, seed=3) == scores  # fixed masks: comparable calls
    alone = evaluate_pretraining(model, held_out, seed=3)
    assert set(alone) == {"loss", "reconstruction_loss", "depth_loss", "samples"}
    assert alone["reconstruction_loss"] == scores["reconstruction_loss"]
