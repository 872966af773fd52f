"""Waymo's camera-only 3D detection metrics, LET-3D-AP, LET-3D-APL and LET-3D-APH, in NumPy (no TensorFlow).

Longitudinal Error Tolerant AP (Hung et al., 2022) forgives a camera detector the error it cannot avoid, depth
along the line of sight: a prediction is moved along its own line of sight to the point nearest the ground truth
before the 3D IoU, and a pair matches only while its longitudinal error is below ``max(0.1 x range, 0.5 m)``.
LET-3D-APL weights each true positive's precision by its longitudinal affinity, LET-3D-APH by its heading
accuracy.

Written from the release's C++ (``waymo-open-dataset``, ``src/waymo_open_dataset/``), not copied; each part names
the file it follows:

- the parameters (tolerance 0.1 of the range, at least 0.5 m; the sensor at the cameras' mean position (1.43, 0,
  2.18) m in the vehicle frame; IoU thresholds vehicle 0.5, pedestrian and cyclist 0.3; the 101 score cutoffs 0,
  0.01, ..., 1): ``metrics/tools/compute_detection_let_metrics_main.cc`` (``GetConfig``);
- ground truth without LiDAR points dropped, LEVEL_2 for boxes of at most 5 points: the same file (``Compute``);
- longitudinal affinity, range alignment, the 3D IoU of upright boxes: ``metrics/iou.cc``
  (``ComputeLongitudinalAffinity``, ``AlignedPredictionBox``, ``ComputeLetIoU``);
- which pairs may match and the maximum-weight (IoU x affinity) assignment, per frame and class, redone at every
  score cutoff: ``metrics/matcher.cc``, ``metrics/detection_metrics.cc``;
- true and false positives, misses per difficulty level, heading accuracy: ``metrics/metrics_utils.cc`` (``IsTP``,
  ``IsDetectionFN``, ``ComputeHeadingAccuracy``);
- AP from the cutoffs' precision and recall (precision made monotone from the right, gaps filled every 0.05 of
  recall, trapezoids; not 101-point sampling): ``metrics/metrics_utils.cc`` (``ComputeMeanAveragePrecision``),
  ``metrics/detection_metrics.cc`` (``ToDetectionMetrics``).

Entry point: :func:`let_3d_metrics`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
from transformers.utils import logging

from ..data.classes import WAYMO_CLASSES

logger = logging.get_logger(__name__)

SENSOR_LOCATION = (1.43, 0.0, 2.18)  # metres, vehicle frame: the release's camera-only evaluation
IOU_THRESHOLDS = {"vehicle": 0.5, "pedestrian": 0.3, "cyclist": 0.3}
LONGITUDINAL_TOLERANCE = 0.1  # of the ground truth's range from the sensor
MIN_LONGITUDINAL_TOLERANCE = 0.5  # metres
SCORE_CUTOFFS = tuple(float(np.float32(i * 0.01)) for i in range(100)) + (1.0,)
RECALL_DELTA = 0.05
LEVEL_2_MAX_POINTS = 5  # a box with this many LiDAR points or fewer is LEVEL_2
METRICS = ("LET-3D-AP", "LET-3D-APL", "LET-3D-APH")
_EPSILON = 1e-6


# Geometry ------------------------------------------------------------------------------------------


def _rectangle(box: np.ndarray) -> np.ndarray:
    """(4, 2) BEV corners of a box ``(x, y, z, l, w, h, yaw)``, counter-clockwise."""
    cos, sin = math.cos(box[6]), math.sin(box[6])
    half_l, half_w = box[3] / 2, box[4] / 2
    local = np.array([[half_l, half_w], [-half_l, half_w], [-half_l, -half_w], [half_l, -half_w]])
    return local @ np.array([[cos, sin], [-sin, cos]]) + box[:2]


def _clip(polygon: list, edge_start: np.ndarray, edge_end: np.ndarray) -> list:
    """The part of a convex polygon on the left of the directed edge (Sutherland-Hodgman, one edge)."""
    def side(point):
        return (edge_end[0] - edge_start[0]) * (point[1] - edge_start[1]) - \
            (edge_end[1] - edge_start[1]) * (point[0] - edge_start[0])

    clipped = []
    for index, current in enumerate(polygon):
        previous = polygon[index - 1]
        inside_current, inside_previous = side(current) >= 0, side(previous) >= 0
        if inside_current != inside_previous:
            a, b = side(previous), side(current)
            clipped.append(previous + (current - previous) * (a / (a - b)))
        if inside_current:
            clipped.append(current)
    return clipped


def _polygon_area(polygon: list) -> float:
    if len(polygon) < 3:
        return 0.0
    points = np.asarray(polygon)
    return 0.5 * abs(float(np.dot(points[:, 0], np.roll(points[:, 1], -1)) - np.dot(points[:, 1],
                                                                                   np.roll(points[:, 0], -1))))


def box_iou_3d(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(A, B) 3D IoU of upright boxes ``(x, y, z, l, w, h, yaw)`` (z at the centre): the rotated rectangles'
    intersection area times the height overlap, over the union of volumes. A box with a side of 0.01 m or less
    has IoU 0, as in the release."""
    boxes_a, boxes_b = np.asarray(boxes_a, np.float64).reshape(-1, 7), np.asarray(boxes_b, np.float64).reshape(-1, 7)
    iou = np.zeros((len(boxes_a), len(boxes_b)))
    radius_a = 0.5 * np.hypot(boxes_a[:, 3], boxes_a[:, 4])
    radius_b = 0.5 * np.hypot(boxes_b[:, 3], boxes_b[:, 4])
    near = np.hypot(boxes_a[:, None, 0] - boxes_b[None, :, 0], boxes_a[:, None, 1] - boxes_b[None, :, 1]) < \
        radius_a[:, None] + radius_b[None]
    low = np.maximum(boxes_a[:, None, 2] - boxes_a[:, None, 5] / 2, boxes_b[None, :, 2] - boxes_b[None, :, 5] / 2)
    high = np.minimum(boxes_a[:, None, 2] + boxes_a[:, None, 5] / 2, boxes_b[None, :, 2] + boxes_b[None, :, 5] / 2)
    valid_a, valid_b = (boxes_a[:, 3:6] > 0.01).all(1), (boxes_b[:, 3:6] > 0.01).all(1)
    for i, j in zip(*np.nonzero(near & (high > low) & valid_a[:, None] & valid_b[None])):
        polygon = list(_rectangle(boxes_a[i]))
        corners = _rectangle(boxes_b[j])
        for k in range(4):
            polygon = _clip(polygon, corners[k], corners[(k + 1) % 4])
            if not polygon:
                break
        intersection = _polygon_area(polygon) * (high[i, j] - low[i, j])
        union = np.prod(boxes_a[i, 3:6]) + np.prod(boxes_b[j, 3:6]) - intersection
        iou[i, j] = 0.0 if union <= _EPSILON else min(max(intersection / union, 0.0), 1.0)
    return iou


def longitudinal_affinity(centers_prediction: np.ndarray, centers_truth: np.ndarray, sensor_location=SENSOR_LOCATION,
                          tolerance: float = LONGITUDINAL_TOLERANCE,
                          min_tolerance: float = MIN_LONGITUDINAL_TOLERANCE) -> np.ndarray:
    """(P, G) ``clip(1 - e / T, 0, 1)``: ``e`` the prediction's error along the sensor-to-ground-truth line of sight,
    ``T = max(tolerance x range, min_tolerance)`` with the ground truth's 3D range from ``sensor_location``."""
    sensor = np.asarray(sensor_location, np.float64)
    to_prediction = np.asarray(centers_prediction, np.float64).reshape(-1, 3) - sensor  # (P, 3)
    to_truth = np.asarray(centers_truth, np.float64).reshape(-1, 3) - sensor  # (G, 3)
    range_truth = np.maximum(np.linalg.norm(to_truth, axis=1), _EPSILON)  # (G,)
    along = to_prediction @ to_truth.T / range_truth[None]  # (P, G) the prediction's range along the truth's ray
    error = np.abs(along - range_truth[None])
    limit = np.maximum(tolerance * range_truth, min_tolerance)
    return np.clip(1.0 - error / limit[None], 0.0, 1.0)


def range_aligned_centers(centers_prediction: np.ndarray, centers_truth: np.ndarray,
                          sensor_location=SENSOR_LOCATION) -> np.ndarray:
    """(P, G, 3) each prediction's centre moved along its own line of sight from the sensor to the point nearest
    each ground-truth centre (all three coordinates: the ray may tilt)."""
    sensor = np.asarray(sensor_location, np.float64)
    to_prediction = np.asarray(centers_prediction, np.float64).reshape(-1, 3) - sensor
    to_truth = np.asarray(centers_truth, np.float64).reshape(-1, 3) - sensor
    scale = to_prediction @ to_truth.T / np.maximum((to_prediction ** 2).sum(1), _EPSILON)[:, None]  # (P, G)
    return sensor + scale[..., None] * to_prediction[:, None]


def let_iou(boxes_prediction: np.ndarray, boxes_truth: np.ndarray, sensor_location=SENSOR_LOCATION) -> np.ndarray:
    """(P, G) the 3D IoU of each range-aligned prediction with each ground truth."""
    boxes_prediction = np.asarray(boxes_prediction, np.float64).reshape(-1, 7)
    boxes_truth = np.asarray(boxes_truth, np.float64).reshape(-1, 7)
    aligned = range_aligned_centers(boxes_prediction[:, :3], boxes_truth[:, :3], sensor_location)
    iou = np.zeros((len(boxes_prediction), len(boxes_truth)))
    for j in range(len(boxes_truth)):
        moved = boxes_prediction.copy()
        moved[:, :3] = aligned[:, j]
        iou[:, j] = box_iou_3d(moved, boxes_truth[j:j + 1])[:, 0]
    return iou


def heading_accuracy(yaw_prediction: np.ndarray, yaw_truth: np.ndarray) -> np.ndarray:
    """``1 - |heading error| / pi`` with the error wrapped to [0, pi], elementwise."""
    error = np.abs((np.asarray(yaw_prediction) - np.asarray(yaw_truth) + np.pi) % (2 * np.pi) - np.pi)
    return np.clip(1.0 - error / np.pi, 0.0, 1.0)


# Precision and recall ------------------------------------------------------------------------------


def average_precision(precisions: Sequence[float], recalls: Sequence[float], recall_delta: float = RECALL_DELTA) -> float:
    """The release's AP from (precision, recall) points: the best precision at each recall, made monotone from the
    highest recall down, gaps wider than ``recall_delta`` filled with the precision reached above them, and the
    trapezoids summed; the artificial point (precision 1, recall 0) takes its neighbour's precision, and nothing
    is counted above the highest recall reached."""
    best = {0.0: 1.0}
    for precision, recall in zip(precisions, recalls):
        best[recall] = max(best.get(recall, 0.0), precision)
    points, running, last = [], 0.0, min(best)
    for recall in sorted(best, reverse=True):
        while last - recall > recall_delta + 1e-6:
            last -= recall_delta
            points.append((running, last))
        running = max(running, best[recall])
        points.append((running, recall))
        last = recall
    if len(points) >= 2:
        points[-1] = (points[-2][0], points[-1][1])
    return float(sum(0.5 * (points[k - 1][1] - points[k][1]) * (points[k - 1][0] + points[k][0])
                     for k in range(1, len(points))))


# The metric ----------------------------------------------------------------------------------------


def match_pairs(weights: np.ndarray, eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The release's matcher: a maximum-total-weight assignment of predictions (rows) to ground truths (columns),
    then only its eligible pairs kept. ``weights`` (P, G) are 0 where a pair is not ``eligible``. Returns the
    matched rows and columns."""
    if not weights.size:
        return np.zeros(0, int), np.zeros(0, int)
    rows, columns = linear_sum_assignment(weights, maximize=True)
    keep = eligible[rows, columns]
    return rows[keep], columns[keep]


def _frame_class(prediction_boxes, scores, truth_boxes, truth_levels, iou_threshold, cutoffs, levels, params):
    """Per level, per cutoff: TP, FP, FN, summed affinity and heading accuracy of one frame and class."""
    counts = {level: np.zeros((len(cutoffs), 5)) for level in levels}  # TP, FP, FN, sum LA, sum HA
    if len(truth_boxes) and len(prediction_boxes):
        affinity = longitudinal_affinity(prediction_boxes[:, :3], truth_boxes[:, :3], params["sensor_location"],
                                         params["longitudinal_tolerance"], params["min_longitudinal_tolerance"])
        iou = let_iou(prediction_boxes, truth_boxes, params["sensor_location"]).astype(np.float32)
        eligible = (affinity > 0) & (iou >= np.float32(iou_threshold))
        weights = np.where(eligible, np.rint(iou.astype(np.float64) * affinity * 1e6), 0.0)
        accuracy = heading_accuracy(prediction_boxes[:, None, 6], truth_boxes[None, :, 6])
    order = np.argsort(-scores, kind="stable")
    passing_before, result = -1, None
    for index, cutoff in enumerate(cutoffs):
        passing = int((scores >= np.float32(cutoff)).sum())
        if passing != passing_before:  # the predictions above a cutoff only change where a score is crossed
            kept = order[:passing]
            matched_truth, matched_prediction = np.zeros(0, int), np.zeros(0, int)
            if len(truth_boxes) and passing:
                rows, matched_truth = match_pairs(weights[kept], eligible[kept])
                matched_prediction = kept[rows]
            result = (len(matched_truth), passing - len(matched_truth),
                      affinity[matched_prediction, matched_truth].sum() if len(matched_truth) else 0.0,
                      accuracy[matched_prediction, matched_truth].sum() if len(matched_truth) else 0.0,
                      np.setdiff1d(np.arange(len(truth_boxes)), matched_truth))
            passing_before = passing
        true_positives, false_positives, sum_affinity, sum_accuracy, missed = result
        for level in levels:  # a miss counts at the levels that include its box; a match counts at every level
            counts[level][index] = (true_positives, false_positives, (truth_levels[missed] <= level).sum(),
                                    sum_affinity, sum_accuracy)
    return counts


def _as_frame(frame: dict, index: int, what: str, keys: tuple[str, ...]) -> dict:
    missing = [key for key in keys if key not in frame]
    if missing:
        raise ValueError(f"{what}[{index}] lacks {missing}; each frame is a dict with {list(keys)}")
    boxes = np.asarray(frame["boxes"], np.float64).reshape(-1, 7) if len(frame["boxes"]) else np.zeros((0, 7))
    out = {"boxes": boxes, "labels": np.asarray(frame["labels"], np.int64).reshape(-1)}
    for key in keys[2:]:
        out[key] = np.asarray(frame[key]).reshape(-1)
    for key, value in out.items():
        if len(value) != len(boxes):
            raise ValueError(f"{what}[{index}]['{key}'] has {len(value)} entries for {len(boxes)} boxes")
    if not np.isfinite(boxes).all():
        raise ValueError(f"{what}[{index}]['boxes'] holds NaN or inf")
    return out


def let_3d_metrics(predictions: Sequence[dict], ground_truth: Sequence[dict], classes: Sequence[str] = WAYMO_CLASSES,
                   iou_thresholds: dict[str, float] | None = None, sensor_location=SENSOR_LOCATION,
                   longitudinal_tolerance: float = LONGITUDINAL_TOLERANCE,
                   min_longitudinal_tolerance: float = MIN_LONGITUDINAL_TOLERANCE,
                   score_cutoffs: Sequence[float] = SCORE_CUTOFFS, recall_delta: float = RECALL_DELTA) -> dict:
    """LET-3D-AP, LET-3D-APL and LET-3D-APH per class and difficulty level, and their means over the classes.

    Args:
        predictions: one dict per frame: ``boxes`` (K, 7) in the vehicle frame ``(x, y, z, l, w, h, heading)`` with
            ``z`` at the box centre, ``labels`` (K,) ids into ``classes``, ``scores`` (K,).
        ground_truth: one dict per frame, the same frames in the same order: ``boxes``, ``labels`` and
            ``num_lidar_points`` (K,) (boxes with none are dropped; LEVEL_2 holds the boxes of at most 5 points).
        classes: the class names the labels index; each needs an IoU threshold.
        iou_thresholds: per class name (default vehicle 0.5, pedestrian 0.3, cyclist 0.3).
        sensor_location, longitudinal_tolerance, min_longitudinal_tolerance, score_cutoffs, recall_delta: the
            release's camera-only configuration by default (module docstring).

    Returns a flat dict: ``"<metric>/<class>/LEVEL_<1|2>"`` and ``"<metric>/LEVEL_<1|2>"`` (the mean over classes)
    for each metric of :data:`METRICS`, and ``"config"``, the parameters used.
    """
    thresholds = dict(IOU_THRESHOLDS if iou_thresholds is None else iou_thresholds)
    unknown = [name for name in classes if name not in thresholds]
    if unknown:
        raise ValueError(f"iou_thresholds has no threshold for classes {unknown} (given for {sorted(thresholds)})")
    if len(predictions) != len(ground_truth):
        raise ValueError(f"{len(predictions)} frames of predictions but {len(ground_truth)} of ground truth: pass "
                         "one dict per frame to both, in the same order")
    params = {"sensor_location": tuple(float(v) for v in sensor_location),
              "longitudinal_tolerance": float(longitudinal_tolerance),
              "min_longitudinal_tolerance": float(min_longitudinal_tolerance)}
    levels = (1, 2)
    totals = {(name, level): np.zeros((len(score_cutoffs), 5)) for name in classes for level in levels}
    for index, (prediction, truth) in enumerate(zip(predictions, ground_truth)):
        prediction = _as_frame(prediction, index, "predictions", ("boxes", "labels", "scores"))
        truth = _as_frame(truth, index, "ground_truth", ("boxes", "labels", "num_lidar_points"))
        for what, frame in (("predictions", prediction), ("ground_truth", truth)):
            bad = (frame["labels"] < 0) | (frame["labels"] >= len(classes))
            if bad.any():
                raise ValueError(f"{what}[{index}]['labels'] holds {int(frame['labels'][bad][0])}, not an id into "
                                 f"classes {tuple(classes)}")
        seen = truth["num_lidar_points"] > 0
        truth_levels = np.where(truth["num_lidar_points"] <= LEVEL_2_MAX_POINTS, 2, 1)
        scores = prediction["scores"].astype(np.float32)
        for label, name in enumerate(classes):
            mine, theirs = prediction["labels"] == label, seen & (truth["labels"] == label)
            counts = _frame_class(prediction["boxes"][mine], scores[mine], truth["boxes"][theirs],
                                  truth_levels[theirs], thresholds[name], score_cutoffs, levels, params)
            for level in levels:
                totals[(name, level)] += counts[level]
    results: dict = {}
    for (name, level), counts in totals.items():
        true_positives, false_positives, misses, sum_affinity, sum_accuracy = counts.T
        detections, truths = true_positives + false_positives, true_positives + misses
        recall = np.divide(true_positives, truths, out=np.zeros_like(truths), where=truths > 0)
        for metric, weight in zip(METRICS, (true_positives, sum_affinity, sum_accuracy)):
            precision = np.divide(weight, detections, out=np.zeros_like(detections), where=detections > 0)
            precision = np.where(recall == 0, 1.0, precision)
            results[f"{metric}/{name}/LEVEL_{level}"] = average_precision(precision, recall, recall_delta)
    for metric in METRICS:
        for level in levels:
            results[f"{metric}/LEVEL_{level}"] = float(np.mean([results[f"{metric}/{name}/LEVEL_{level}"]
                                                                for name in classes]))
    results["config"] = {**params, "iou_thresholds": {name: thresholds[name] for name in classes},
                         "classes": list(classes), "num_score_cutoffs": len(score_cutoffs),
                         "recall_delta": recall_delta, "level_2_max_points": LEVEL_2_MAX_POINTS}
    return results


def format_let_metrics(metrics: dict) -> str:
    """A small table of :func:`let_3d_metrics`: each metric per class and level, and the class means."""
    classes = metrics["config"]["classes"]
    lines = [f"{'':<12}" + "".join(f"{metric + ' L' + str(level):>16}" for metric in METRICS for level in (1, 2))]
    for name in (*classes, "mean"):
        lines.append(f"{name:<12}" + "".join(
            f"{metrics[f'{metric}/{name}/LEVEL_{level}' if name != 'mean' else f'{metric}/LEVEL_{level}']:>16.4f}"
            for metric in METRICS for level in (1, 2)))
    return "\n".join(lines)


def share_outside_grid(boxes: Sequence[np.ndarray], x_range: tuple[float, float],
                       y_range: tuple[float, float]) -> float:
    """The share of boxes (a list of ``(K, 7)`` arrays, vehicle frame) whose centre lies outside a BEV grid's
    ``x_range`` and ``y_range`` (metres): boxes a detector on that grid cannot find."""
    centres = np.concatenate([np.asarray(b, np.float64).reshape(-1, 7)[:, :2] for b in boxes]) if boxes else \
        np.zeros((0, 2))
    if not len(centres):
        return 0.0
    inside = (x_range[0] <= centres[:, 0]) & (centres[:, 0] <= x_range[1]) & \
        (y_range[0] <= centres[:, 1]) & (centres[:, 1] <= y_range[1])
    return float(1.0 - inside.mean())


def evaluate_waymo_detector(model, dataroot: str, split: str, processor, batch_size: int = 4,
                            score_threshold: float = 0.05, verbose: bool = True, cache_dir: str | None = None,
                            iou_thresholds: dict[str, float] | None = None) -> dict:
    """Detect on a Waymo v2 split with a camera detector and score it with :func:`let_3d_metrics` against the
    camera-synced boxes (``load_waymo(..., boxes="camera")``). The detector's classes must be Waymo's three;
    ``iou_thresholds`` per class replaces the release's (:data:`IOU_THRESHOLDS`). The metrics also hold
    ``ground_truth_outside_grid``, the share of ground truth beyond the detector's BEV grid (Waymo labels to 75 m;
    a nuScenes-sized grid reaches 51.2 m), which the metric counts as missed."""
    from ..data import load_waymo
    from .detection import predict_detections

    classes = tuple(model.config.class_names)
    if classes != WAYMO_CLASSES:
        raise ValueError(f"a Waymo detector predicts {WAYMO_CLASSES}, this one {classes}: finetune it with "
                         "--dataset waymo")
    rows = load_waymo(dataroot, split, classes=classes, boxes="camera", cache_dir=cache_dir)
    predictions, _ = predict_detections(model, rows, processor, batch_size, score_threshold)
    truth = rows.select_columns(["boxes", "labels", "num_lidar_points"]).with_format(None)
    ground_truth = [{"boxes": np.asarray(row["boxes"], np.float64).reshape(-1, 7), "labels": row["labels"],
                     "num_lidar_points": row["num_lidar_points"]} for row in truth]
    metrics = let_3d_metrics([{key: prediction[key].numpy() for key in ("boxes", "labels", "scores")}
                              for prediction in predictions], ground_truth, classes=classes,
                             iou_thresholds=iou_thresholds)
    grid = model.config.detection_grid
    metrics["ground_truth_outside_grid"] = share_outside_grid([t["boxes"] for t in ground_truth], grid.x_range,
                                                              grid.y_range)
    if metrics["ground_truth_outside_grid"] > 0:
        logger.warning(f"{metrics['ground_truth_outside_grid']:.1%} of the ground-truth boxes of {split} lie outside "
                       f"the detector's BEV grid (x {grid.x_range}, y {grid.y_range} m: det_bev_x_range, "
                       "det_bev_y_range); LET-3D-AP counts them as missed")
    if verbose:
        print(format_let_metrics(metrics))
    return metrics
