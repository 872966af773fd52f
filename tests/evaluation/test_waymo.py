"""LET-3D-AP/APL/APH against hand-made cases with known answers, shapely's polygon areas, a brute-force matcher
and the release's own unit-test values (``metrics_utils_test.cc``, ``iou_test.cc``)."""

import itertools
import math

import numpy as np
import pytest
from shapely.geometry import Polygon

from geomim_hf.evaluation.waymo import (
    average_precision,
    box_iou_3d,
    heading_accuracy,
    let_3d_metrics,
    let_iou,
    longitudinal_affinity,
    match_pairs,
    range_aligned_centers,
    share_outside_grid,
)

SENSOR = (1.43, 0.0, 2.18)
TRUTH = np.array([21.43, 0.0, 2.18, 4.0, 2.0, 1.5, 0.0])  # 20 m ahead of the sensor: tolerance 2 m


def _box(x, y=0.0, z=2.18, size=(4.0, 2.0, 1.5), yaw=0.0):
    return np.array([x, y, z, *size, yaw])


def _rectangle(box):
    cos, sin = math.cos(box[6]), math.sin(box[6])
    corners = [(sx * box[3] / 2, sy * box[4] / 2) for sx, sy in ((1, 1), (-1, 1), (-1, -1), (1, -1))]
    return Polygon([(box[0] + cos * a - sin * b, box[1] + sin * a + cos * b) for a, b in corners])


def test_3d_iou_of_rotated_boxes_matches_shapely():
    rng = np.random.default_rng(0)
    a = np.column_stack([rng.uniform(-2, 2, (60, 3)), rng.uniform(0.5, 4, (60, 3)), rng.uniform(-np.pi, np.pi, 60)])
    b = np.column_stack([rng.uniform(-2, 2, (40, 3)), rng.uniform(0.5, 4, (40, 3)), rng.uniform(-np.pi, np.pi, 40)])
    expected = np.zeros((60, 40))
    for i, j in itertools.product(range(60), range(40)):
        height = max(0.0, min(a[i, 2] + a[i, 5] / 2, b[j, 2] + b[j, 5] / 2) - max(a[i, 2] - a[i, 5] / 2,
                                                                                  b[j, 2] - b[j, 5] / 2))
        intersection = _rectangle(a[i]).intersection(_rectangle(b[j])).area * height
        expected[i, j] = intersection / (np.prod(a[i, 3:6]) + np.prod(b[j, 3:6]) - intersection)
    assert (expected > 0).mean() > 0.3
    np.testing.assert_allclose(box_iou_3d(a, b), expected, atol=1e-9)


@pytest.mark.parametrize("prediction, affinity, aligned, iou", [
    (_box(21.43), 1.0, (21.43, 0.0, 2.18), 1.0),                                 # the ground truth itself
    (_box(22.43), 0.5, (21.43, 0.0, 2.18), 1.0),                                 # 1 m too far on the line of sight
    (_box(23.43), 0.0, (21.43, 0.0, 2.18), 1.0),                                 # 2 m: the tolerance, no affinity
    (_box(21.43, 0.5), 1.0, (21.4175, 0.49969, 2.18), 0.59721),                  # lateral only
    (_box(21.93, z=2.48), 0.75, (21.42572, 0.0, 2.47262), 0.67232),              # the aligned centre rises too
    (_box(22.43, z=0.90), 0.502040, (21.43370, 0.0, 0.96073), 0.920543),         # an elevated ground truth
])
def test_affinity_alignment_and_let_iou_of_hand_made_pairs(prediction, affinity, aligned, iou):
    truth = TRUTH.copy()
    if prediction[2] == 0.90:  # the elevated case: the ground truth at z 0.9, 20.04 m from the sensor
        truth[2] = 0.90
    assert longitudinal_affinity(prediction[None, :3], truth[None, :3], SENSOR)[0, 0] == pytest.approx(affinity,
                                                                                                       abs=1e-6)
    np.testing.assert_allclose(range_aligned_centers(prediction[None, :3], truth[None, :3], SENSOR)[0, 0], aligned,
                               atol=1e-5)
    assert let_iou(prediction[None], truth[None], SENSOR)[0, 0] == pytest.approx(iou, abs=1e-5)


def test_a_prediction_moved_along_its_line_of_sight_keeps_iou_one():
    """Any displacement along the sensor's ray through the ground truth is undone by the alignment; the affinity
    falls linearly to 0 at the tolerance max(0.1 x range, 0.5 m)."""
    truth = np.array([31.43, 12.0, 1.0, 4.5, 1.9, 1.6, 0.4])
    ray = (truth[:3] - SENSOR) / np.linalg.norm(truth[:3] - SENSOR)
    tolerance = 0.1 * np.linalg.norm(truth[:3] - SENSOR)
    for shift in (-3.0, -1.0, 0.5, 2.5):
        prediction = truth.copy()
        prediction[:3] += shift * ray
        assert let_iou(prediction[None], truth[None], SENSOR)[0, 0] == pytest.approx(1.0, abs=1e-9)
        assert longitudinal_affinity(prediction[None, :3], truth[None, :3], SENSOR)[0, 0] == \
            pytest.approx(max(0.0, 1 - abs(shift) / tolerance), abs=1e-9)
    near = np.array([4.43, 0.0, 2.18])  # 3 m away: the 0.5 m floor, not 0.3 m
    assert longitudinal_affinity(near[None] + [0.25, 0, 0], near[None], SENSOR)[0, 0] == pytest.approx(0.5)


def test_the_release_unit_test_values():
    # iou_test.cc, its own configuration: sensor at the origin, tolerance 0.15 of the range, at least 2 m
    assert longitudinal_affinity([[1.5, 0, 0]], [[1, 0, 0]], (0, 0, 0), 0.15, 2.0)[0, 0] == pytest.approx(0.75)
    assert longitudinal_affinity([[33, 44, 0]], [[30, 40, 0]], (0, 0, 0), 0.15, 2.0)[0, 0] == pytest.approx(1 - 5 / 7.5)
    np.testing.assert_allclose(range_aligned_centers([[1.5, 1, 0]], [[1, 0, 0]], (0, 0, 0))[0, 0], (9 / 13, 18 / 39, 0))
    # metrics_utils_test.cc: ComputeMeanAveragePrecision
    assert average_precision([0.1], [0.2]) == pytest.approx(0.02)
    assert average_precision([0.1, 0.05], [0.2, 1.0]) == pytest.approx(0.06125)
    assert average_precision([0.1, 0.05, 0.0], [0.2, 1.0, 0.4]) == pytest.approx(0.06125)
    assert average_precision([0.1, 0.05], [0.2, 1.0], recall_delta=1.0) == pytest.approx(0.08)


def test_heading_accuracy():
    np.testing.assert_allclose(heading_accuracy([0.0, 3.0, 0.0, 1.0], [np.pi / 2, -3.0, np.pi, 1.0 + 2 * np.pi]),
                               [0.5, 1 - (2 * np.pi - 6) / np.pi, 0.0, 1.0], atol=1e-12)


def _metrics(predictions, truths, **params):
    """One frame, vehicles only: predictions as (box, score), ground truths as boxes with 100 points each."""
    prediction = {"boxes": np.array([box for box, _ in predictions]).reshape(-1, 7),
                  "labels": np.zeros(len(predictions), int), "scores": np.array([s for _, s in predictions])}
    truth = {"boxes": np.array(truths).reshape(-1, 7), "labels": np.zeros(len(truths), int),
             "num_lidar_points": np.full(len(truths), 100)}
    found = let_3d_metrics([prediction], [truth], **params)
    return [found[f"{metric}/vehicle/LEVEL_2"] for metric in ("LET-3D-AP", "LET-3D-APL", "LET-3D-APH")]


@pytest.mark.parametrize("predictions, truths, expected", [
    ([(TRUTH, 0.3), (_box(40.0, 5.0), 0.8)], [TRUTH, _box(40.0, 5.0)], (1.0, 1.0, 1.0)),  # truth as prediction
    ([(_box(22.43), 0.9)], [TRUTH], (1.0, 0.5, 1.0)),                                  # half the affinity
    ([(_box(23.43), 0.9)], [TRUTH], (0.0, 0.0, 0.0)),                                  # at the tolerance
    ([(_box(21.43, yaw=np.pi / 2, size=(2.0, 2.0, 1.5)), 0.9)], [_box(21.43, size=(2.0, 2.0, 1.5))],
     (1.0, 1.0, 0.5)),                                                                 # heading off by 90 degrees
    ([(TRUTH, 0.9)], [TRUTH, _box(40.0, 5.0)], (0.5, 0.5, 0.5)),                       # half the truths found
    ([(_box(40.0, 9.0), 0.8), (TRUTH, 0.4)], [TRUTH], (0.5, 0.5, 0.5)),                # the best-scored is wrong
    ([(TRUTH, 0.9), (_box(40.0, 9.0), 0.8), (_box(40.0, 5.0), 0.7)], [TRUTH, _box(40.0, 5.0)],
     (0.841667, 0.841667, 0.841667)),                                                  # trapezoids, not 101 points
    ([(TRUTH, 0.9)], [], (0.0, 0.0, 0.0)),                                             # no truth in the class
    ([(_box(40.0, 9.0), 0.509), (TRUTH, 0.505)], [TRUTH], (0.5, 0.5, 0.5)),            # one score cutoff for both
])
def test_ap_of_hand_made_frames(predictions, truths, expected):
    assert _metrics(predictions, truths) == pytest.approx(expected, abs=1e-6)


def test_matching_maximises_iou_times_affinity_not_score():
    # A lower-scored prediction with a larger IoU x affinity takes the truth at the cutoffs that hold both.
    wide = _box(21.43, 0.5)  # IoU 0.597, affinity 1
    assert _metrics([(wide, 0.9), (TRUTH, 0.3)], [TRUTH]) == pytest.approx((1.0, 1.0, 1.0))
    # IoU 1 at affinity 0.3 (weight 0.3) loses to IoU 0.597 at affinity 1 (weight 0.597): APL 0.5, not 0.15
    far = _box(22.83)  # 1.4 m too far: affinity 0.3
    assert _metrics([(far, 0.5), (wide, 0.5)], [TRUTH]) == pytest.approx((0.5, 0.5, 0.5), abs=1e-6)


def test_hungarian_matching_agrees_with_brute_force():
    """On random weight matrices with ineligible pairs, the matcher's pairs are eligible and their total weight is
    the largest any assignment of eligible pairs reaches (found by enumerating them all)."""
    rng = np.random.default_rng(3)
    for _ in range(200):
        predictions, truths = int(rng.integers(1, 6)), int(rng.integers(1, 5))
        eligible = rng.uniform(size=(predictions, truths)) < 0.5
        weights = np.where(eligible, rng.integers(1, 10, (predictions, truths)), 0).astype(float)
        rows, columns = match_pairs(weights, eligible)
        assert eligible[rows, columns].all() and len(set(rows)) == len(rows) and len(set(columns)) == len(columns)
        best = 0.0
        for assignment in itertools.permutations(range(truths + predictions), predictions):  # -> a truth or none
            best = max(best, sum(weights[i, j] for i, j in enumerate(assignment) if j < truths and eligible[i, j]))
        assert weights[rows, columns].sum() == best


def test_difficulty_levels_and_dropped_boxes():
    """LEVEL_2 counts every miss; LEVEL_1 ignores misses of boxes of 5 points or fewer but keeps their matches;
    a box without points is not ground truth at all."""
    far = _box(45.0, 6.0)
    prediction = {"boxes": np.stack([TRUTH, far]), "labels": [0, 0], "scores": [0.9, 0.8]}
    truth = {"boxes": np.stack([TRUTH, far, _box(30.0, -6.0), _box(60.0, 0.0)]), "labels": [0, 0, 0, 0],
             "num_lidar_points": [100, 3, 4, 0]}  # levels 1, 2, 2, dropped
    found = let_3d_metrics([prediction], [truth])
    assert found["LET-3D-AP/vehicle/LEVEL_2"] == pytest.approx(2 / 3)  # two found of three
    assert found["LET-3D-AP/vehicle/LEVEL_1"] == pytest.approx(1.0)  # the LEVEL_1 box found; the far match counts
    assert found["LET-3D-AP/LEVEL_2"] == pytest.approx(2 / 9)  # the mean over vehicle, pedestrian, cyclist
    assert found["config"]["iou_thresholds"] == {"vehicle": 0.5, "pedestrian": 0.3, "cyclist": 0.3}
    assert found["config"]["sensor_location"] == SENSOR


def test_inputs_are_checked():
    frame = {"boxes": TRUTH[None], "labels": [0], "scores": [0.5]}
    truth = {"boxes": TRUTH[None], "labels": [0], "num_lidar_points": [10]}
    with pytest.raises(ValueError, match=r"ground_truth\[0\] lacks \['num_lidar_points'\]"):
        let_3d_metrics([frame], [{"boxes": TRUTH[None], "labels": [0]}])
    with pytest.raises(ValueError, match="1 frames of predictions but 2 of ground truth"):
        let_3d_metrics([frame], [truth, truth])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['labels'\] holds 3, not an id into classes"):
        let_3d_metrics([{**frame, "labels": [3]}], [truth])
    with pytest.raises(ValueError, match=r"predictions\[0\]\['scores'\] has 2 entries for 1 boxes"):
        let_3d_metrics([{**frame, "scores": [0.5, 0.4]}], [truth])
    with pytest.raises(ValueError, match=r"no threshold for classes \['cyclist'\]"):
        let_3d_metrics([frame], [truth], iou_thresholds={"vehicle": 0.5, "pedestrian": 0.3})


def test_share_outside_grid_counts_centres_beyond_the_extent():
    boxes = [np.array([_box(0.0), _box(60.0)]), np.array([_box(10.0, -52.0), _box(51.2, 51.2)]), np.zeros((0, 7))]
    # (60, 0) and (10, -52) are outside [-51.2, 51.2]^2; a centre on the edge is inside.
    assert share_outside_grid(boxes, (-51.2, 51.2), (-51.2, 51.2)) == pytest.approx(2 / 4)
    assert share_outside_grid(boxes, (-75.0, 75.0), (-75.0, 75.0)) == 0.0
    assert share_outside_grid([], (-1.0, 1.0), (-1.0, 1.0)) == 0.0
