"""examples/finetune_detection.py's model building and its fast paths (the script's training and resuming run in
tests/examples/test_reproduce.py and test_finetune_segmentation.py)."""

import json
import logging

import pytest
import torch
from accelerate import PartialState

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling
from tests.examples.test_finetune_segmentation import _run
from tests.helpers import load_example


def test_head_config_makes_a_pretrained_arm_the_presets_model(tmp_path, caplog):
    """A pretraining checkpoint written before ``seg_head_channels`` existed gave the GeoMIM arm of the study an
    8x wider segmentation head than random init's (the class default 256, not the preset's 32). ``--head-config``
    takes every det_*/seg_* field from the preset; the encoder stays the checkpoint's."""
    PartialState()  # the script's accelerate logger needs it
    preset = GeoMIMConfig.from_preset("geomim-tiny")
    torch.manual_seed(0)
    pretrained = GeoMIMForMaskedBEVModeling(preset)
    pretrained.save_pretrained(tmp_path / "pretrained")
    saved = json.loads((tmp_path / "pretrained" / "config.json").read_text())
    del saved["seg_head_channels"]
    saved["det_head_channels"] = 48
    (tmp_path / "pretrained" / "config.json").write_text(json.dumps(saved))

    script = load_example("finetune_detection")
    base = ["--dataroot", "unused", "--output-dir", str(tmp_path / "out"), "--no-temporal"]
    pretrained_args = [*base, "--init", str(tmp_path / "pretrained")]
    with caplog.at_level(logging.WARNING):
        as_saved = script.build_model(script.parse_args(pretrained_args), script.SEGMENTATION)
    assert as_saved.config.seg_head_channels == GeoMIMConfig().seg_head_channels != preset.seg_head_channels
    assert "has no seg_head_channels" in caplog.text

    scratch = script.build_model(script.parse_args([*base, "--init", "scratch", "--model-config", "geomim-tiny"]),
                                 script.SEGMENTATION)
    for task in (script.SEGMENTATION, script.DETECTION):
        model = script.build_model(script.parse_args([*pretrained_args, "--head-config", "geomim-tiny"]), task)
        assert model.config.finetuning_fields() == {**preset.finetuning_fields(), "det_temporal": False}
        if task is script.SEGMENTATION:  # the same architecture as the random-init arm's, parameter by parameter
            assert {k: v.shape for k, v in model.state_dict().items()} == \
                {k: v.shape for k, v in scratch.state_dict().items()}
        for name, tensor in pretrained.geomim.state_dict().items():
            torch.testing.assert_close(model.geomim.state_dict()[name], tensor, msg=name)


def test_bf16_and_torch_compile_train_and_evaluate_as_the_plain_run(nuscenes_root, tmp_path):
    """--mixed-precision bf16 --torch-compile in the training script and in evaluate.py: the same first losses as
    the plain run within bf16's rounding (same seed, same batches), and the same detections' score."""
    def finetune(output_dir, *flags):
        _run("finetune_detection.py", "--dataroot", nuscenes_root, "--version", "v1.0-mini", "--train-split",
             "mini_train", "--val-split", "", "--init", "scratch", "--model-config", "geomim-tiny", "--output-dir",
             output_dir, "--max-steps", 2, "--batch-size", 2, "--num-workers", 0, "--logging-steps", 1,
             "--checkpointing-steps", 0, "--no-temporal", *flags)
        return [json.loads(line) for line in open(output_dir / "loss_history.jsonl")]

    plain = finetune(tmp_path / "plain")
    fast = finetune(tmp_path / "fast", "--mixed-precision", "bf16", "--torch-compile", "aot_eager")
    assert [r["step"] for r in fast] == [1, 2]
    for ours, reference in zip(fast, plain):
        assert ours["loss"] == pytest.approx(reference["loss"], rel=0.02)
    assert json.loads((tmp_path / "fast" / "training_summary.json").read_text())["mixed precision"] == "bf16"

    def evaluate(*flags):
        _run("evaluate.py", "--model", tmp_path / "plain", "--dataroot", nuscenes_root, "--version", "v1.0-mini",
             "--split", "mini_val", "--output-dir", tmp_path / "eval", "--score-threshold", "0.0", *flags)
        return json.loads((tmp_path / "eval" / "metrics.json").read_text())

    reference, ours = evaluate(), evaluate("--mixed-precision", "bf16", "--torch-compile", "aot_eager")
    # (not the TP errors: after 2 steps they average a handful of chance matches, which bf16 may swap)
    for name in ("NDS", "mAP"):
        assert ours[name] == pytest.approx(reference[name], abs=0.02), name


def test_waymo_finetuning_records_its_classes_and_cameras_and_is_scored_with_let(waymo_root, tmp_path):
    """--dataset waymo: five cameras of two sizes, Waymo's three classes, the camera-synced boxes; the detector's
    config says so, it is scored with LET-3D-AP (metrics, card), and evaluate.py scores and draws it again."""
    output_dir = tmp_path / "waymo"
    _run("finetune_detection.py", "--dataset", "waymo", "--dataroot", waymo_root, "--train-split", "validation",
         "--val-split", "validation", "--init", "scratch", "--model-config", "geomim-tiny", "--output-dir",
         output_dir, "--max-steps", 2, "--batch-size", 2, "--num-workers", 0, "--checkpointing-steps", 0,
         "--warmup-steps", 1)
    config = json.loads((output_dir / "config.json").read_text())
    assert config["class_names"] == ["vehicle", "pedestrian", "cyclist"] and config["num_views"] == 5
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert metrics["config"]["iou_thresholds"] == {"vehicle": 0.5, "pedestrian": 0.3, "cyclist": 0.3}
    assert 0.0 <= metrics["LET-3D-APL/LEVEL_2"] <= metrics["LET-3D-AP/LEVEL_2"] <= 1.0
    assert 0.0 <= metrics["ground_truth_outside_grid"] < 1.0  # Waymo labels to 75 m, the grid reaches 51.2 m
    card = (output_dir / "README.md").read_text()
    assert "LET-3D-APL/LEVEL_2" in card and "waymo" in card
    _run("evaluate.py", "--model", output_dir, "--dataset", "waymo", "--dataroot", waymo_root, "--split",
         "validation", "--output-dir", tmp_path / "evaluated", "--plot", 1, "--batch-size", 2)
    again = json.loads((tmp_path / "evaluated" / "metrics.json").read_text())
    assert again["LET-3D-AP/LEVEL_2"] == pytest.approx(metrics["LET-3D-AP/LEVEL_2"])
    assert (tmp_path / "evaluated" / "detections_0.png").is_file()
    # A looser vehicle threshold reaches the metric, is recorded, leaves the other classes and the card alone.
    _run("evaluate.py", "--model", output_dir, "--dataset", "waymo", "--dataroot", waymo_root, "--split",
         "validation", "--output-dir", tmp_path / "loose", "--batch-size", 2, "--iou-thresholds", "vehicle=0.1")
    loose = json.loads((tmp_path / "loose" / "metrics.json").read_text())
    assert loose["config"]["iou_thresholds"] == {"vehicle": 0.1, "pedestrian": 0.3, "cyclist": 0.3}
    for name in ("pedestrian", "cyclist"):
        assert loose[f"LET-3D-AP/{name}/LEVEL_2"] == pytest.approx(again[f"LET-3D-AP/{name}/LEVEL_2"])
    assert (output_dir / "README.md").read_text() == card


def test_a_nuscenes_pretraining_initialises_a_waymo_detector(tmp_path):
    """The encoder pretrained on six nuScenes views loads into a five-view Waymo detector of three classes."""
    PartialState()
    torch.manual_seed(0)
    pretrained = GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny"))
    pretrained.save_pretrained(tmp_path / "pretrained")
    script = load_example("finetune_detection")
    model = script.build_model(script.parse_args(["--dataset", "waymo", "--dataroot", "unused", "--output-dir",
                                                  str(tmp_path / "out"), "--init", str(tmp_path / "pretrained")]))
    assert model.config.class_names == ("vehicle", "pedestrian", "cyclist") and model.config.num_views == 5
    assert model.head.heatmap[-1].out_channels == 3
    for name, tensor in pretrained.geomim.state_dict().items():
        torch.testing.assert_close(model.geomim.state_dict()[name], tensor, msg=name)
