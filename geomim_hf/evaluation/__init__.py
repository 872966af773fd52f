"""Evaluation: predictions in the sample contract scored with the official benchmark code."""

from .detection import evaluate_detector, predict_detections
from .nuscenes import evaluate_nuscenes, format_metrics, write_nuscenes_submission

__all__ = ["evaluate_detector", "evaluate_nuscenes", "format_metrics", "predict_detections", "write_nuscenes_submission"]
