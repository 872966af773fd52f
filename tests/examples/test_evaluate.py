"""examples/evaluate.py's arguments (its runs are in test_finetune_detection.py and test_finetune_segmentation.py)."""

import pytest

from tests.helpers import load_example


@pytest.mark.parametrize("arguments, message", [
    (["--dataset", "waymo", "--iou-thresholds", "truck=0.1", "--output-dir", "elsewhere"], "'truck=0.1'"),
    (["--dataset", "waymo", "--iou-thresholds", "vehicle=0", "--output-dir", "elsewhere"], "IOU in (0, 1]"),
    (["--dataset", "waymo", "--iou-thresholds", "vehicle", "--output-dir", "elsewhere"], "expected CLASS=IOU"),
    (["--iou-thresholds", "vehicle=0.1", "--output-dir", "elsewhere"], "use it with --dataset waymo"),
    (["--dataset", "waymo", "--iou-thresholds", "vehicle=0.1"], "need an --output-dir"),
])
def test_iou_thresholds_are_refused_with_the_argument_named(tmp_path, capsys, arguments, message):
    script = load_example("evaluate")
    with pytest.raises(SystemExit):
        script.main(["--model", str(tmp_path / "model"), "--dataroot", str(tmp_path), *arguments])
    assert message in capsys.readouterr().err


def test_iou_thresholds_replace_only_the_classes_named():
    script = load_example("evaluate")
    assert script.parse_iou_thresholds(None) is None
    assert script.parse_iou_thresholds(["cyclist=0.25", "vehicle=1"]) == {"vehicle": 1.0, "pedestrian": 0.3,
                                                                         "cyclist": 0.25}
