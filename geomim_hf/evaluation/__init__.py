"""Evaluation: predictions in the sample contract scored with the official benchmark code, or (Waymo's
LET-3D-AP, :mod:`.waymo`) with our NumPy implementation of it."""

from .detection import evaluate_detector, predict_detections
from .nuscenes import evaluate_nuscenes, format_metrics, write_nuscenes_submission
from .segmentation import (
    MapSegmentationMetric,
    evaluate_map_segmentation,
    evaluate_segmenter,
    format_segmentation_metrics,
    predict_map_segmentation,
)
from .waymo import let_3d_metrics

__all__ = ["MapSegmentationMetric", "evaluate_detector", "evaluate_map_segmentation", "evaluate_nuscenes",
           "evaluate_segmenter", "format_metrics", "format_segmentation_metrics", "let_3d_metrics", "predict_detections",
           "predict_map_segmentation", "write_nuscenes_submission"]
