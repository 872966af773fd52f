import pytest
import torch

from geomim_hf.modeling.centerpoint import (
    REGRESSION_CHANNELS,
    BevGrid,
    build_targets,
    center_loss,
    circle_nms,
    decode,
    focal_loss,
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
