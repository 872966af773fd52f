"""BEVFusion's map-segmentation metric: perfect predictions, a hand-counted case, streaming."""

import numpy as np
import pytest

from geomim_hf.data.maps import MAP_CLASSES
from geomim_hf.evaluation import MapSegmentationMetric, evaluate_map_segmentation


def test_ground_truth_as_prediction_scores_one():
    rng = np.random.default_rng(0)
    targets = rng.uniform(size=(3, len(MAP_CLASSES), 20, 20)) < 0.3
    metrics = evaluate_map_segmentation(targets.astype(np.float32), targets)
    assert metrics["mIoU"] == 1.0
    assert all(metrics[f"IoU/{name}"] == 1.0 for name in MAP_CLASSES)


def test_a_hand_counted_case():
    # Class a: IoU 3/4 at 0.35, 2/4 at 0.40-0.50, 1/4 at 0.55-0.60, 1/3 at 0.65 -> 0.75 at 0.35.
    # Class b: 3/4 at 0.35, 3/3 at 0.40 -> 1.0 at 0.40. Class c: never positive, never predicted -> NaN.
    probabilities = np.array([[[[0.30, 0.38, 0.50, 0.62, 0.70]], [[0.36, 0.52, 0.58, 0.90, 0.10]],
                               [[0.1, 0.2, 0.3, 0.1, 0.0]]]], np.float32)
    targets = np.array([[[[0, 1, 1, 0, 1]], [[0, 1, 1, 1, 0]], [[0, 0, 0, 0, 0]]]], bool)
    metrics = evaluate_map_segmentation(probabilities, targets, class_names=("a", "b", "c"))
    assert metrics["IoU/a"] == pytest.approx(0.75) and metrics["threshold/a"] == 0.35
    assert metrics["IoU/b"] == pytest.approx(1.0) and metrics["threshold/b"] == 0.40
    assert np.isnan(metrics["IoU/c"])
    assert metrics["mIoU"] == pytest.approx((0.75 + 1.0) / 2)
    metric = MapSegmentationMetric(("a", "b", "c"))
    metric.update(probabilities, targets)
    iou_a = metric.true_positives[0] / (metric.true_positives[0] + metric.false_positives[0] + metric.false_negatives[0])
    np.testing.assert_allclose(iou_a, [3 / 4, 2 / 4, 2 / 4, 2 / 4, 1 / 4, 1 / 4, 1 / 3])


def test_counts_over_the_split_not_a_mean_over_batches():
    rng = np.random.default_rng(1)
    probabilities = rng.uniform(size=(5, len(MAP_CLASSES), 8, 8)).astype(np.float32)
    targets = rng.uniform(size=probabilities.shape) < np.linspace(0.05, 0.6, 5)[:, None, None, None]
    metric = MapSegmentationMetric()
    for start in range(0, 5, 2):
        metric.update(probabilities[start:start + 2], targets[start:start + 2])
    assert metric.compute() == evaluate_map_segmentation(probabilities, targets)


def test_bad_inputs_are_named():
    probabilities = np.zeros((1, len(MAP_CLASSES), 4, 4), np.float32)
    with pytest.raises(ValueError, match="targets must be boolean"):
        evaluate_map_segmentation(probabilities, probabilities)
    with pytest.raises(ValueError, match=r"probabilities must be \(N, 6, Y, X\)"):
        evaluate_map_segmentation(probabilities[:, :2], probabilities[:, :2] > 0)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        evaluate_map_segmentation(probabilities - 1, probabilities > 0)
