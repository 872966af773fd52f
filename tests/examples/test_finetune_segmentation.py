"""examples/finetune_segmentation.py and examples/evaluate.py on a segmenter, run as a user runs them."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard

from geomim_hf import GeoMIMImageProcessor
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.modeling_geomim import GeoMIMForBEVSegmentation

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(script, *arguments):
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run([sys.executable, str(REPO / "examples" / script), *map(str, arguments)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _finetune(nuscenes_root, output_dir, max_steps):
    _run("finetune_segmentation.py", "--dataroot", nuscenes_root, "--version", "v1.0-mini", "--train-split",
         "mini_val", "--val-split", "mini_val", "--init", "scratch", "--model-config", "geomim-tiny", "--output-dir",
         output_dir, "--max-steps", max_steps, "--batch-size", 2, "--num-workers", 0, "--logging-steps", 1,
         "--checkpointing-steps", 2, "--warmup-steps", 2, "--ema-decay", 0.9, "--no-temporal",
         "--resume-from-checkpoint", "latest")
    return [json.loads(line) for line in open(output_dir / "loss_history.jsonl")]


def _iou_by_brute_force(probabilities, truth, threshold):
    predicted = probabilities >= threshold
    union = (predicted | truth).sum()
    return (predicted & truth).sum() / union if union else None  # a class nowhere: left out


def test_finetune_resumes_exactly_and_evaluate_scores_by_bevfusions_protocol(nuscenes_root, tmp_path):
    straight = _finetune(nuscenes_root, tmp_path / "straight", 4)
    assert [r["step"] for r in straight] == [1, 2, 3, 4]
    assert all(np.isfinite(r["segmentation_loss"]) and np.isfinite(r["depth_loss"]) for r in straight)
    _finetune(nuscenes_root, tmp_path / "stopped", 3)
    resumed = _finetune(nuscenes_root, tmp_path / "stopped", 4)  # from checkpoint-2 (inside the warmup, which
    # does not depend on --max-steps): step 3 is run again
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        assert a == pytest.approx(b, rel=1e-6), (a, b)

    out = tmp_path / "straight"
    metrics = json.load(open(out / "metrics.json"))
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-segmentation"
    assert {r.metric_name for r in card.data.eval_results} == {"mIoU", *(k for k in metrics if k.startswith("IoU/"))}

    # evaluate.py finds the task in the config, scores the same, and draws the masks.
    evaluated = tmp_path / "evaluated"
    stdout = _run("evaluate.py", "--model", out, "--dataroot", nuscenes_root, "--version", "v1.0-mini", "--split",
                  "mini_val", "--output-dir", evaluated, "--plot", 1, "--batch-size", 2)
    assert (evaluated / "segmentation_0.png").stat().st_size > 10_000 and "mIoU" in stdout
    again = json.load(open(evaluated / "metrics.json"))
    assert again["mIoU"] == pytest.approx(metrics["mIoU"], abs=1e-6)

    # The scores against a recomputation: the saved model's probabilities, the devkit's masks, a loop over
    # the thresholds per class.
    model = GeoMIMForBEVSegmentation.from_pretrained(out).eval()
    processor = GeoMIMImageProcessor.from_pretrained(out)
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", map_masks=True, cache_dir=str(tmp_path / "c"))
    probabilities, truth = [], []
    with torch.no_grad():
        for row in range(len(rows)):
            batch, = make_dataloader(rows.select([row]), processor, 1, with_targets=False,
                                     input_names=model.model_input_names)
            truth.append(batch.pop("map_masks").numpy())
            probabilities.append(model.post_process(model(**batch)).numpy())
    probabilities, truth = np.concatenate(probabilities), np.concatenate(truth)
    ious = []
    for c, name in enumerate(model.config.seg_class_names):
        per_threshold = {t: _iou_by_brute_force(probabilities[:, c], truth[:, c], t)
                         for t in (0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65)}
        per_threshold = {t: iou for t, iou in per_threshold.items() if iou is not None}
        if not per_threshold:
            assert np.isnan(metrics[f"IoU/{name}"]), name
            continue
        best = max(per_threshold, key=per_threshold.get)
        assert metrics[f"IoU/{name}"] == pytest.approx(per_threshold[best], abs=1e-4), name
        ious.append(per_threshold[best])
    assert metrics["mIoU"] == pytest.approx(np.mean(ious), abs=1e-4)
