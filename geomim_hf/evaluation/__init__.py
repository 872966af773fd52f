"""Evaluation: predictions in the sample contract scored with the official benchmark code."""

from .nuscenes import evaluate_nuscenes, format_metrics, write_nuscenes_submission

__all__ = ["evaluate_nuscenes", "format_metrics", "write_nuscenes_submission"]
