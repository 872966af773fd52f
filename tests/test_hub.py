"""Hub integration: model cards, offline loading from the Hub cache, sharded weights, pickle refusal."""

import json
import os
import re
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard

import geomim_hf  # noqa: F401  (registers the Auto classes)
from geomim_hf import (
    GeoMIMConfig,
    GeoMIMForBEVDetection,
    GeoMIMForBEVSegmentation,
    GeoMIMForMaskedBEVModeling,
    GeoMIMImageProcessor,
)
from geomim_hf.hub import SUMMARY_METRICS, create_model_card
from geomim_hf.configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher
from tests.helpers import RunsCode, assert_same_weights, hub_cache

METRICS = {"mAP": 0.3125, "NDS": 0.40625, "mATE": 0.5, "mASE": 0.25, "mAOE": 0.75, "mAVE": 1.0, "mAAE": 0.125,
           "AP/car": 0.5, "AP/pedestrian": 0.25}


def _python_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```python\n(.*?)```", text, flags=re.S))


def test_card_metadata_round_trips_through_huggingface_hub(detector_dir):
    create_model_card(str(detector_dir), repo_id=str(detector_dir), metrics=METRICS, eval_version="v1.0-mini",
                      eval_split="mini_val", training={"steps": 300, "seed": 0})
    card = ModelCard.load(detector_dir / "README.md")
    assert card.data.library_name == "geomim-hf"
    assert card.data.license == "apache-2.0"
    assert card.data.pipeline_tag == "object-detection"
    assert card.data.datasets == ["nuscenes"]
    results = {r.metric_name: r for r in card.data.eval_results}
    assert set(results) == set(SUMMARY_METRICS)
    for name, result in results.items():
        assert result.metric_value == pytest.approx(METRICS[name], abs=5e-5)  # rounded to 4 places
        assert (result.dataset_type, result.dataset_config, result.dataset_split) == ("nuscenes", "v1.0-mini",
                                                                                     "mini_val")
    assert "| AP/pedestrian | 0.2500 |" in card.text and "| steps | `300` |" in card.text


def test_card_usage_snippet_runs(detector_dir):
    create_model_card(str(detector_dir), repo_id=str(detector_dir))
    namespace = {}
    exec(_python_blocks(open(detector_dir / "README.md").read()), namespace)  # noqa: S102  (our own card)
    assert isinstance(namespace["model"], GeoMIMForBEVDetection)
    assert isinstance(namespace["processor"], GeoMIMImageProcessor)
    assert type(namespace["detector"]).__name__ == "BEVObjectDetectionPipeline"


def test_pretraining_card_loads_the_encoder_with_automodel(tmp_path):
    GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny")).save_pretrained(tmp_path)
    card = create_model_card(str(tmp_path), repo_id=str(tmp_path))
    assert card.data.pipeline_tag == "image-feature-extraction" and card.data.eval_results is None
    namespace = {}
    exec(_python_blocks(card.text), namespace)  # noqa: S102
    assert type(namespace["encoder"]).__name__ == "GeoMIMModel"


def test_segmenter_card_carries_the_iou_of_each_class_and_its_snippet_runs(tmp_path):
    GeoMIMForBEVSegmentation(GeoMIMConfig.from_preset("geomim-tiny")).save_pretrained(tmp_path)
    GeoMIMImageProcessor(image_size=(64, 176)).save_pretrained(tmp_path)
    metrics = {"IoU/drivable_area": 0.875, "threshold/drivable_area": 0.4, "IoU/walkway": 0.5,
               "threshold/walkway": 0.35, "mIoU": 0.6875}
    card = create_model_card(str(tmp_path), repo_id=str(tmp_path), metrics=metrics, eval_version="v1.0-trainval",
                             eval_split="val")
    card = ModelCard.load(tmp_path / "README.md")
    assert card.data.pipeline_tag == "image-segmentation" and card.data.metrics == ["miou"]
    results = {r.metric_name: (r.metric_type, r.metric_value) for r in card.data.eval_results}
    assert results == {"mIoU": ("miou", 0.6875), "IoU/drivable_area": ("iou", 0.875), "IoU/walkway": ("iou", 0.5)}
    assert "| IoU/walkway | 0.5000 |" in card.text and "threshold/" not in card.text
    namespace = {}
    exec(_python_blocks(card.text), namespace)  # noqa: S102
    assert isinstance(namespace["model"], GeoMIMForBEVSegmentation)
    assert type(namespace["segmenter"]).__name__ == "BEVMapSegmentationPipeline"
    with pytest.raises(KeyError, match="mIoU"):
        create_model_card(str(tmp_path), metrics={"NDS": 0.5}, eval_version="v1.0-trainval", eval_split="val")


def test_teacher_card_and_training_summary_reused(tmp_path):
    GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig()).save_pretrained(tmp_path)
    create_model_card(str(tmp_path), training={"steps": 1000})
    # A later card without training details (examples/evaluate.py) keeps the saved ones.
    card = create_model_card(str(tmp_path), metrics=METRICS, eval_version="v1.0-trainval", eval_split="val")
    assert card.data.pipeline_tag is None
    assert "| steps | `1000` |" in card.text
    assert json.load(open(tmp_path / "training_summary.json")) == {"steps": 1000}


def test_card_errors_name_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        create_model_card(str(tmp_path))
    GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="eval_version and eval_split"):
        create_model_card(str(tmp_path), metrics=METRICS)
    with pytest.raises(KeyError, match="mAVE"):
        create_model_card(str(tmp_path), metrics={k: v for k, v in METRICS.items() if k != "mAVE"},
                          eval_version="v1.0-mini", eval_split="mini_val")


def test_from_pretrained_offline_from_the_hub_cache(detector_dir, tmp_path):
    """The standard cache layout ``models--org--name/snapshots/<rev>`` resolves a Hub id offline."""
    cache = hub_cache(tmp_path / "hub", detector_dir)
    script = f"""
import torch, geomim_hf
from transformers import AutoImageProcessor, AutoModelForObjectDetection
from geomim_hf import GeoMIMForBEVDetection
model = GeoMIMForBEVDetection.from_pretrained("org/geomim-tiny")
auto = AutoModelForObjectDetection.from_pretrained("org/geomim-tiny")
processor = AutoImageProcessor.from_pretrained("org/geomim-tiny")
reference = GeoMIMForBEVDetection.from_pretrained({str(detector_dir)!r})
for loaded in (model, auto):
    assert type(loaded) is GeoMIMForBEVDetection
    for (name, a), b in zip(reference.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
assert type(processor).__name__ == "GeoMIMImageProcessor" and tuple(processor.image_size) == (64, 176)
try:
    GeoMIMForBEVDetection.from_pretrained("org/not-cached")
except OSError as error:
    print("MISSING:", error)
print("OK")
"""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": cache, "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OK" in result.stdout and "MISSING:" in result.stdout and "offline" in result.stdout


def test_sharded_safetensors_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GeoMIMForBEVDetection(GeoMIMConfig.from_preset("geomim-tiny"))
    model.save_pretrained(tmp_path, max_shard_size="2MB")
    index = json.load(open(tmp_path / "model.safetensors.index.json"))
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1 and all(name.endswith(".safetensors") for name in shards)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in os.listdir(tmp_path))
    loaded = GeoMIMForBEVDetection.from_pretrained(tmp_path)
    assert_same_weights(model, loaded)



def test_a_pickle_that_runs_code_is_refused(tmp_path):
    GeoMIMConfig.from_preset("geomim-tiny").save_pretrained(tmp_path)
    marker = tmp_path / "pwned"
    torch.save({"encoder.patch_embed.weight": RunsCode(str(marker))}, tmp_path / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights_only|unpickl|safetensors"):
        GeoMIMForBEVDetection.from_pretrained(tmp_path)
    assert not marker.exists()
