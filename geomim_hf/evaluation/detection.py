"""Run a camera BEV detector over a nuScenes split and score it with the devkit."""

from __future__ import annotations

import os

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import load_nuscenes, make_dataloader
from .nuscenes import DEFAULT_META, evaluate_nuscenes, format_metrics, write_nuscenes_submission


def reads_lidar(model) -> bool:
    """Whether ``model`` detects from LiDAR points (the teacher) rather than from the cameras."""
    return model.main_input_name == "lidar_points"


@torch.no_grad()
def predict_detections(model, rows, processor, batch_size: int = 4, score_threshold: float | None = None,
                       num_workers: int = 0) -> tuple[list[dict], list[dict]]:
    """Predictions (ego frame, CPU tensors) and the matching samples (token, global_from_ego) of every
    row, without augmentation, from a camera detector or a LiDAR one."""
    lidar = reads_lidar(model)
    loader = make_dataloader(rows, processor, batch_size, training=False, with_targets=False, with_images=not lidar,
                             temporal=not lidar and model.config.det_temporal, num_workers=num_workers,
                             input_names=model.model_input_names)
    # Unshuffled: the batches follow the rows, whose tokens and poses the submission needs.
    tokens = rows["sample_token"]
    global_from_ego = np.asarray(rows.select_columns(["global_from_ego"]).with_format(None)["global_from_ego"],
                                 np.float64)  # (R, 4, 4)
    was_training = model.training
    model.eval()
    predictions, samples = [], []
    for batch in tqdm(loader, desc="detecting"):
        results = model.post_process(model(**{k: v.to(model.device) for k, v in batch.items()}),
                                     score_threshold=score_threshold)
        for result in results:
            predictions.append({k: v.cpu() for k, v in result.items()})
            row = len(samples)
            samples.append({"sample_token": tokens[row], "global_from_ego": global_from_ego[row]})
    model.train(was_training)
    return predictions, samples


def evaluate_detector(model, dataroot: str, version: str, split: str, output_dir: str, processor, sweeps: int = 0,
                      batch_size: int = 4, score_threshold: float = 0.05, verbose: bool = True,
                      cache_dir: str | None = None) -> dict:
    """Detect on ``split`` with a camera or LiDAR detector, write ``output_dir/results_nusc.json`` and
    return the devkit's metrics. ``sweeps``: the LiDAR sweeps a LiDAR detector reads (a camera detector
    reads none)."""
    lidar = reads_lidar(model)
    rows = load_nuscenes(dataroot, version, split, sweeps=sweeps, classes=model.config.class_names,
                         cache_dir=cache_dir)
    predictions, samples = predict_detections(model, rows, processor, batch_size, score_threshold)
    meta = {**DEFAULT_META, "use_camera": not lidar, "use_lidar": lidar}
    path = write_nuscenes_submission(predictions, samples, os.path.join(output_dir, "results_nusc.json"), meta=meta,
                                     classes=model.config.class_names)
    metrics = evaluate_nuscenes(dataroot, version, split, path, os.path.join(output_dir, "nuscenes_eval"))
    if verbose:
        print(format_metrics(metrics))
    return metrics
