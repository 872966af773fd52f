import math

import pytest
import torch

from geomim_hf.modeling.centerpoint import (
    REGRESSION_CHANNELS,
    REGRESSION_SLICES,
    BevGrid,
    CenterHead,
    build_targets,
    center_loss,
    circle_nms,
    decode,
    focal_loss,
    transform_boxes,
)

GRID = BevGrid((-20.0, 20.0), (-10.0, 10.0), 0.5)  # 40 x 80 cells


def _boxes():
    boxes = torch.tensor([[[3.3, -2.1, 0.8, 4.5, 1.9, 1.6, 0.4], [-12.6, 4.4, 0.9, 0.7, 0.6, 1.8, -2.5],
                           [30.0, 0.0, 1.0, 4.0, 2.0, 1.5, 0.0]]])  # the third is off the grid
    velocities = torch.tensor([[[2.0, -1.0], [float("nan"), float("nan")], [0.0, 0.0]]])
    labels = torch.tensor([[0, 2, 1]])
    return boxes, velocities, labels, torch.ones(1, 3, dtype=torch.bool)


def test_targets_decode_back_to_the_boxes():
    boxes, velocities, labels, mask = _boxes()
    targets = build_targets(boxes, velocities, labels, mask, GRID, num_classes=3)
    assert targets["num_objects"] == 2 and targets["weights"][0, 2].sum() == 0
    assert targets["weights"][0, 1, 8:].sum() == 0 and targets["weights"][0, 0, 8:].sum() > 0  # NaN velocity
    heatmap = targets["heatmap"]
    assert heatmap.max() == 1.0 and (heatmap == 1).sum() == 2
    # Perfect outputs: peaks only at the centres, the regression written at the objects' cells.
    regression = torch.zeros(1, REGRESSION_CHANNELS, *GRID.size)
    for k in range(2):
        regression.view(1, REGRESSION_CHANNELS, -1)[0, :, targets["index"][0, k]] = targets["regression"][0, k]
    logits = torch.where(heatmap == 1, torch.tensor(10.0), torch.tensor(-10.0))
    result = decode({"heatmap": logits, "regression": regression}, GRID, top_k=10, score_threshold=0.5)[0]
    order = torch.argsort(result["labels"])
    torch.testing.assert_close(result["boxes"][order], boxes[0, :2], atol=1e-5, rtol=1e-5)
    assert result["labels"][order].tolist() == [0, 2]
    torch.testing.assert_close(result["velocities"][order][0], velocities[0, 0])


def test_decode_matches_a_brute_force_peak_search():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 9, generator=generator) * 2
    regression = torch.randn(2, REGRESSION_CHANNELS, 8, 9, generator=generator) * 0.1
    grid = BevGrid((-4.5, 4.5), (-4.0, 4.0), 1.0)
    results = decode({"heatmap": logits, "regression": regression}, grid, top_k=7, score_threshold=0.0)
    probability = logits.sigmoid()
    for b, result in enumerate(results):
        candidates = []
        for c in range(3):
            for y in range(8):
                for x in range(9):
                    window = probability[b, c, max(y - 1, 0): y + 2, max(x - 1, 0): x + 2]
                    if probability[b, c, y, x] == window.max():
                        candidates.append((float(probability[b, c, y, x]), c, y, x))
        candidates.sort(reverse=True)
        expected = candidates[:7]
        assert result["scores"].tolist() == pytest.approx([score for score, *_ in expected])
        assert result["labels"].tolist() == [c for _, c, _, _ in expected]
        first = expected[0]
        x = (first[3] + regression[b, 0, first[2], first[3]]) * 1.0 - 4.5
        assert float(result["boxes"][0, 0]) == pytest.approx(float(x), abs=1e-6)


def test_circle_nms_is_greedy_by_score():
    centers = torch.tensor([[0.0, 0.0], [0.5, 0.0], [3.0, 0.0], [3.2, 0.1], [10.0, 0.0]])
    scores = torch.tensor([0.9, 0.95, 0.3, 0.8, 0.1])
    keep = circle_nms(centers, scores, radius=1.0)
    assert keep.tolist() == [1, 3, 4]  # 0 is within 1 m of the better 1; 2 of the better 3


def test_focal_loss_hand_case():
    logits = torch.tensor([[[[0.0, 2.0]]]])
    target = torch.tensor([[[[1.0, 0.5]]]])
    p = torch.sigmoid(logits)
    positive = -torch.log(p[0, 0, 0, 0]) * (1 - p[0, 0, 0, 0]) ** 2
    negative = -torch.log(1 - p[0, 0, 0, 1]) * p[0, 0, 0, 1] ** 2 * (1 - 0.5) ** 4
    torch.testing.assert_close(focal_loss(logits, target), positive + negative)


def test_loss_is_zero_at_perfect_regression_and_falls_with_training():
    boxes, velocities, labels, mask = _boxes()
    targets = build_targets(boxes, velocities, labels, mask, GRID, num_classes=3)
    regression = torch.zeros(1, REGRESSION_CHANNELS, *GRID.size)
    for k in range(2):
        regression.view(1, REGRESSION_CHANNELS, -1)[0, :, targets["index"][0, k]] = targets["regression"][0, k]
    terms = center_loss({"heatmap": torch.zeros(1, 3, *GRID.size), "regression": regression}, targets)
    assert terms["regression_loss"] == 0 and terms["heatmap_loss"] > 0


def _task_head():
    """Task groups (mmdetection3d style) over 4 classes, ordered unlike the class ids; every output conv
    zeroed but for a bias that names it: heatmap of task t, class slot k -> 10 * t + k; regression of task
    t, channel j -> 100 * t + j."""
    head = CenterHead(8, 4, head_channels=8, task_classes=[[2], [3, 0], [1]], final_kernel=3).eval()
    with torch.no_grad():
        for t, task in enumerate(head.tasks):
            task["heatmap"][-1].weight.zero_()
            task["heatmap"][-1].bias.copy_(10.0 * t + torch.arange(task["heatmap"][-1].bias.numel()))
            for name, part in REGRESSION_SLICES.items():
                task["regression"][name][-1].weight.zero_()
                task["regression"][name][-1].bias.copy_(100.0 * t + torch.arange(part.start, part.stop))
    return head


def test_task_group_head_puts_each_class_on_its_tasks_maps():
    with torch.no_grad():
        out = _task_head()(torch.randn(2, 8, 5, 6))
    assert out["heatmap"].shape == (2, 4, 5, 6) and out["regression"].shape == (2, 4, REGRESSION_CHANNELS, 5, 6)
    # class 0: task 1 slot 1; class 1: task 2 slot 0; class 2: task 0 slot 0; class 3: task 1 slot 0
    assert out["heatmap"][0, :, 3, 4].tolist() == [11.0, 20.0, 0.0, 10.0]
    for label, task in enumerate((1, 2, 0, 1)):
        assert out["regression"][1, label, :, 2, 2].tolist() == [100.0 * task + j for j in range(REGRESSION_CHANNELS)]
    with pytest.raises(ValueError, match=r"task_classes \[\[0\], \[2\]\] must hold every class id of range\(3\)"):
        CenterHead(8, 3, task_classes=[[0], [2]])


def test_per_class_regression_decodes_and_trains_each_object_from_its_class():
    """Two classes peak in the same cell; each box reads its own class's regression."""
    heatmap = torch.full((1, 2, *GRID.size), -10.0)
    heatmap[0, :, 7, 30] = 10.0
    regression = torch.zeros(1, 2, REGRESSION_CHANNELS, *GRID.size)
    regression[0, 0, :, 7, 30] = torch.tensor([0.5, 0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    regression[0, 1, :, 7, 30] = torch.tensor([0.25, 0.75, -1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 2.0])
    result = decode({"heatmap": heatmap, "regression": regression}, GRID, top_k=5, score_threshold=0.5)[0]
    order = torch.argsort(result["labels"])
    expected = torch.tensor([[30.5 * 0.5 - 20, 7.5 * 0.5 - 10, 1.0, 1.0, 1.0, 1.0, 0.0],
                             [30.25 * 0.5 - 20, 7.75 * 0.5 - 10, -1.0, math.e, math.e, math.e, math.pi / 2]])
    torch.testing.assert_close(result["boxes"][order], expected)
    torch.testing.assert_close(result["velocities"][order], torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    # The loss gathers each object's targets from its class's maps: zero when they hold them, not when swapped.
    boxes, velocities, labels, mask = _boxes()
    targets = build_targets(boxes, velocities, labels, mask, GRID, num_classes=3)
    per_class = torch.zeros(1, 3, REGRESSION_CHANNELS, *GRID.size)
    for k in range(2):
        per_class.view(1, 3, REGRESSION_CHANNELS, -1)[0, labels[0, k], :, targets["index"][0, k]] = \
            targets["regression"][0, k]
    outputs = {"heatmap": torch.zeros(1, 3, *GRID.size), "regression": per_class}
    assert center_loss(outputs, targets)["regression_loss"] == 0
    outputs["regression"] = per_class[:, [2, 1, 0]]  # classes 0 and 2 swapped
    assert center_loss(outputs, targets)["regression_loss"] > 1


def test_transform_boxes_hand_case():
    """nuScenes' LIDAR_TOP sits 0.94 m ahead and 1.84 m up, turned -90 degrees: lidar (x, y) = ego (-y, x)."""
    ego_from_lidar = torch.tensor([[[0.0, 1.0, 0.0, 0.94], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.84],
                                    [0.0, 0.0, 0.0, 1.0]]])
    boxes_lidar = torch.tensor([[[-3.8, 3.6, -0.9, 6.0, 2.5, 3.0, 0.3]]])
    boxes_ego, velocities_ego = transform_boxes(ego_from_lidar, boxes_lidar, torch.tensor([[[1.0, 2.0]]]))
    torch.testing.assert_close(boxes_ego, torch.tensor([[[4.54, 3.8, 0.94, 6.0, 2.5, 3.0, 0.3 - math.pi / 2]]]))
    torch.testing.assert_close(velocities_ego, torch.tensor([[[2.0, -1.0]]]))
    _, unknown = transform_boxes(ego_from_lidar, boxes_lidar, torch.full((1, 1, 2), float("nan")))
    assert unknown.isnan().all()
