"""BEV map segmentation scored as BEVFusion scores it: per class, the IoU of the prediction binarised at
each of the thresholds 0.35, 0.40, ..., 0.65, counted over the whole split; a class's IoU is the best
of its thresholds and mIoU the mean over classes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import load_nuscenes, make_dataloader
from ..data.maps import MAP_CLASSES

THRESHOLDS = tuple(round(0.35 + 0.05 * k, 2) for k in range(7))


class MapSegmentationMetric:
    """Accumulates true positives, false positives and false negatives per class and threshold over
    batches, so a split never has to sit in memory at once."""

    def __init__(self, class_names: Sequence[str] = MAP_CLASSES, thresholds: Sequence[float] = THRESHOLDS):
        self.class_names, self.thresholds = tuple(class_names), tuple(float(t) for t in thresholds)
        if not self.thresholds:
            raise ValueError("thresholds must hold at least one value")
        shape = (len(self.class_names), len(self.thresholds))
        self.true_positives = np.zeros(shape, np.int64)
        self.false_positives = np.zeros(shape, np.int64)
        self.false_negatives = np.zeros(shape, np.int64)

    def update(self, probabilities, targets) -> None:
        """probabilities: (N, C, Y, X) in [0, 1]; targets: (N, C, Y, X) bool (arrays or tensors)."""
        probabilities = torch.as_tensor(probabilities)
        targets = torch.as_tensor(targets)
        classes = len(self.class_names)
        if probabilities.ndim != 4 or probabilities.shape[1] != classes:
            raise ValueError(f"probabilities must be (N, {classes}, Y, X) for classes {self.class_names}, "
                             f"got shape {tuple(probabilities.shape)}")
        if targets.shape != probabilities.shape:
            raise ValueError(f"targets must have the probabilities' shape {tuple(probabilities.shape)}, "
                             f"got {tuple(targets.shape)}")
        if targets.dtype != torch.bool:
            raise ValueError(f"targets must be boolean masks, got dtype {targets.dtype}")
        if not probabilities.is_floating_point() or probabilities.min() < 0 or probabilities.max() > 1:
            raise ValueError("probabilities must be floats in [0, 1] (apply the sigmoid to logits first)")
        positives = targets.transpose(0, 1).reshape(classes, -1)  # (C, N*Y*X)
        scores = probabilities.transpose(0, 1).reshape(classes, -1)
        for k, threshold in enumerate(self.thresholds):
            predicted = scores >= threshold
            self.true_positives[:, k] += (predicted & positives).sum(1).cpu().numpy()
            self.false_positives[:, k] += (predicted & ~positives).sum(1).cpu().numpy()
            self.false_negatives[:, k] += (~predicted & positives).sum(1).cpu().numpy()

    def compute(self) -> dict:
        """``IoU/<class>``, ``threshold/<class>`` (the one that gave it) and ``mIoU``. A class absent from
        every target and every prediction scores NaN and is left out of the mean."""
        union = self.true_positives + self.false_positives + self.false_negatives
        with np.errstate(invalid="ignore", divide="ignore"):
            iou = np.where(union > 0, self.true_positives / np.maximum(union, 1), np.nan)  # (C, T)
        metrics = {}
        for c, name in enumerate(self.class_names):
            if np.isnan(iou[c]).all():
                metrics[f"IoU/{name}"], metrics[f"threshold/{name}"] = float("nan"), float("nan")
                continue
            best = int(np.nanargmax(iou[c]))
            metrics[f"IoU/{name}"], metrics[f"threshold/{name}"] = float(iou[c, best]), self.thresholds[best]
        scores = [metrics[f"IoU/{name}"] for name in self.class_names if not np.isnan(metrics[f"IoU/{name}"])]
        metrics["mIoU"] = float(np.mean(scores)) if scores else float("nan")
        return metrics


def evaluate_map_segmentation(probabilities, targets, class_names: Sequence[str] = MAP_CLASSES,
                              thresholds: Sequence[float] = THRESHOLDS) -> dict:
    """BEVFusion's map-segmentation metrics of a whole split: probabilities (N, C, Y, X) in [0, 1] against
    boolean targets (N, C, Y, X). Returns ``IoU/<class>``, ``threshold/<class>`` and ``mIoU``."""
    metric = MapSegmentationMetric(class_names, thresholds)
    metric.update(probabilities, targets)
    return metric.compute()


@torch.no_grad()
def predict_map_segmentation(model, rows, processor, batch_size: int = 4, num_workers: int = 0, metric=None,
                             keep: bool = True):
    """Per-class probabilities (R, C, Y, X) of a BEV segmenter on every row (``load_nuscenes(..., map_masks=True)``),
    without augmentation, as a float16 CPU tensor (``None`` unless ``keep``: a whole split's maps are large);
    with ``metric`` (a :class:`MapSegmentationMetric`) each batch is scored against the rows' ``map_masks``."""
    loader = make_dataloader(rows, processor, batch_size, training=False, with_targets=False, num_workers=num_workers,
                             temporal=model.config.det_temporal, input_names=model.model_input_names)
    was_training = model.training
    model.eval()
    probabilities = []
    for batch in tqdm(loader, desc="segmenting"):
        targets = batch.pop("map_masks")  # scored here, not by the model's loss
        batch_probabilities = model.post_process(model(**{k: v.to(model.device) for k, v in batch.items()})).cpu()
        if metric is not None:
            metric.update(batch_probabilities, targets)
        if keep:
            probabilities.append(batch_probabilities.half())
    model.train(was_training)
    return torch.cat(probabilities) if keep else None


def evaluate_segmenter(model, dataroot: str, version: str, split: str, processor, batch_size: int = 4,
                       cache_dir: str | None = None, verbose: bool = True) -> dict:
    """Segment ``split`` with a :class:`~geomim_hf.modeling_geomim.GeoMIMForBEVSegmentation` and score it against
    the devkit's map masks by BEVFusion's protocol (:class:`MapSegmentationMetric`)."""
    rows = load_nuscenes(dataroot, version, split, classes=model.config.class_names, cache_dir=cache_dir,
                         map_masks=True)
    metric = MapSegmentationMetric(model.config.seg_class_names)
    predict_map_segmentation(model, rows, processor, batch_size, metric=metric, keep=False)
    metrics = metric.compute()
    if verbose:
        print(format_segmentation_metrics(metrics, metric.class_names))
    return metrics


def format_segmentation_metrics(metrics: dict, class_names: Sequence[str] = MAP_CLASSES) -> str:
    """The per-class IoU table, mIoU last."""
    lines = ["class                IoU    threshold"]
    lines += [f"{name:<20} {metrics[f'IoU/{name}']:.4f} {metrics[f'threshold/{name}']:.2f}" for name in class_names]
    lines.append(f"{'mIoU':<20} {metrics['mIoU']:.4f}")
    return "\n".join(lines)
