"""Hub model cards: a README.md with YAML metadata (``model-index`` from the devkit's metrics), a usage
snippet, training details and limitations, written beside a ``save_pretrained`` folder.

Publishing is the standard transformers way: ``model.push_to_hub("org/name")`` and
``processor.push_to_hub("org/name")``, or ``hf upload org/name FOLDER`` for a folder
that already holds the weights, configs and this card.
"""

from __future__ import annotations

import json
import os

from huggingface_hub import EvalResult, ModelCard, ModelCardData

PAPER = "https://arxiv.org/abs/2303.11325"
# What each saved architecture is for: the Hub pipeline tag where one fits, the class to load it with.
ARCHITECTURES = {
    "GeoMIMForBEVDetection": ("object-detection", "multi-camera 3D object detector (BEVDet4D/BEVDepth-style, "
                              "CenterPoint head) with a GeoMIM Swin encoder"),
    "GeoMIMForBEVSegmentation": ("image-segmentation", "multi-camera BEV map segmenter (BEVFusion's six map "
                                 "classes, the detector's camera-to-BEV trunk) with a GeoMIM Swin encoder"),
    "GeoMIMForMaskedBEVModeling": ("image-feature-extraction", "GeoMIM-pretrained multi-view Swin encoder with its "
                                   "masked BEV modeling decoder; load the encoder alone with GeoMIMModel"),
    "GeoMIMModel": ("image-feature-extraction", "GeoMIM multi-view Swin encoder"),
    "GeoMIMLidarTeacher": (None, "pillar CenterPoint LiDAR detector whose BEV features are GeoMIM's pretraining "
                           "target"),
}
# The devkit's summary metrics, as model-index metric types.
SUMMARY_METRICS = {"NDS": "nds", "mAP": "map", "mATE": "mate", "mASE": "mase", "mAOE": "maoe", "mAVE": "mave",
                   "mAAE": "maae"}


def detection_eval_results(metrics: dict, dataset_name: str, version: str, split: str) -> list[EvalResult]:
    """The devkit's summary metrics as ``model-index`` entries."""
    missing = [key for key in SUMMARY_METRICS if key not in metrics]
    if missing:
        raise KeyError(f"metrics lack {missing}: expected the dict evaluate_nuscenes returns")
    return [EvalResult(task_type="object-detection", task_name="3D object detection", dataset_type="nuscenes",
                       dataset_name=dataset_name, dataset_config=version, dataset_split=split, metric_type=kind,
                       metric_name=key, metric_value=round(float(metrics[key]), 4))
            for key, kind in SUMMARY_METRICS.items()]


# Waymo's camera-only headline metrics (LET-3D-AP, ``geomim_hf.evaluation.waymo``): the class means at LEVEL_2.
LET_SUMMARY_METRICS = {"LET-3D-APL/LEVEL_2": "let-3d-apl", "LET-3D-AP/LEVEL_2": "let-3d-ap",
                       "LET-3D-APH/LEVEL_2": "let-3d-aph"}


def let_eval_results(metrics: dict, dataset_name: str, version: str, split: str) -> list[EvalResult]:
    """Waymo's LET-3D metrics (``evaluate_waymo_detector``) as ``model-index`` entries: the LEVEL_2 class means and
    each class's LET-3D-APL."""
    keys = [*LET_SUMMARY_METRICS, *sorted(key for key in metrics if key.startswith("LET-3D-APL/")
                                           and key.endswith("/LEVEL_2") and key.count("/") == 2)]
    return [EvalResult(task_type="object-detection", task_name="3D object detection", dataset_type="waymo",
                       dataset_name=dataset_name, dataset_config=version, dataset_split=split,
                       metric_type=LET_SUMMARY_METRICS.get(key, "let-3d-apl"), metric_name=key,
                       metric_value=round(float(metrics[key]), 4)) for key in keys]


def segmentation_eval_results(metrics: dict, dataset_name: str, version: str, split: str) -> list[EvalResult]:
    """BEVFusion's map-segmentation metrics (``evaluate_segmenter``): mIoU and each class's IoU."""
    keys = ["mIoU", *sorted(key for key in metrics if key.startswith("IoU/"))]
    if "mIoU" not in metrics:
        raise KeyError(f"metrics lack 'mIoU': expected the dict evaluate_segmenter returns, got {sorted(metrics)}")
    return [EvalResult(task_type="image-segmentation", task_name="BEV map segmentation", dataset_type="nuscenes",
                       dataset_name=dataset_name, dataset_config=version, dataset_split=split,
                       metric_type="miou" if key == "mIoU" else "iou", metric_name=key,
                       metric_value=round(float(metrics[key]), 4)) for key in keys]


def create_model_card(model_dir: str, *, repo_id: str | None = None, metrics: dict | None = None,
                      eval_dataset: str | None = None, eval_version: str | None = None, eval_split: str | None = None,
                      training: dict | None = None, base_model: str | None = None, license: str = "apache-2.0",
                      datasets: tuple[str, ...] | None = None) -> ModelCard:
    """Write ``model_dir/README.md`` for the model saved there and return the card.

    Args:
        model_dir: a ``save_pretrained`` folder (its ``config.json`` names the architecture).
        repo_id: the Hub id the usage snippet loads (default ``your-org/<folder name>``).
        metrics: the devkit's metrics (``evaluate_nuscenes``), a segmenter's (``evaluate_segmenter``) or Waymo's
            LET-3D metrics (``evaluate_waymo_detector``); they become the ``model-index``.
        eval_dataset, eval_version, eval_split: what ``metrics`` were measured on (the dataset defaults to the one
            the metrics name: Waymo for LET-3D metrics, nuScenes otherwise).
        training: how the model was trained (steps, batch size, data, ...), shown as a table and kept in
            ``training_summary.json``, which a later call without ``training`` (e.g. after
            ``examples/evaluate.py``) reuses.
        base_model: the checkpoint this one was finetuned from, if it is on the Hub.
        datasets: the Hub datasets the card lists (default the evaluation's).
    """
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: save the model with save_pretrained first")
    with open(config_path) as handle:
        config = json.load(handle)
    architecture = (config.get("architectures") or [None])[0]
    if architecture not in ARCHITECTURES:
        raise ValueError(f"{config_path}: architectures {config.get('architectures')} is not one of "
                         f"{sorted(ARCHITECTURES)}")
    pipeline_tag, summary = ARCHITECTURES[architecture]
    segmenter = architecture == "GeoMIMForBEVSegmentation"
    repo_id = repo_id or f"your-org/{os.path.basename(os.path.abspath(model_dir))}"
    training_path = os.path.join(model_dir, "training_summary.json")
    if training is not None:
        with open(training_path, "w") as handle:
            json.dump(training, handle, indent=2)
    elif os.path.isfile(training_path):
        with open(training_path) as handle:
            training = json.load(handle)

    eval_results = None
    waymo = bool(metrics) and "LET-3D-APL/LEVEL_2" in metrics
    eval_dataset = eval_dataset or ("Waymo Open Dataset" if waymo else "nuScenes")
    datasets = datasets or (("waymo_open_dataset",) if waymo else ("nuscenes",))
    if metrics:
        if not (eval_version and eval_split):
            raise ValueError("metrics need eval_version and eval_split: the model-index names what was measured")
        results = segmentation_eval_results if segmenter else let_eval_results if waymo else detection_eval_results
        eval_results = results(metrics, eval_dataset, eval_version, eval_split)
    data = ModelCardData(library_name="geomim-hf", license=license, pipeline_tag=pipeline_tag,
                         tags=["geomim", "bev", "bev-map-segmentation" if segmenter else "3d-object-detection",
                               "multi-camera", "waymo" if waymo else "nuscenes"],
                         datasets=list(datasets), base_model=base_model,
                         metrics=(["miou"] if segmenter else ["let-3d-apl", "let-3d-ap"] if waymo else ["nds", "map"])
                         if metrics else None,
                         model_name=repo_id.split("/")[-1], eval_results=eval_results)
    body = [f"# {repo_id.split('/')[-1]}", "",
            f"A {summary}, from geomim-hf — GeoMIM ([Liu et al., ICCV 2023]({PAPER})): "
            "masked image modeling whose target is a LiDAR detector's BEV features.", "",
            "## Usage", "", "```python", *_usage(architecture, repo_id), "```", ""]
    if metrics:
        if segmenter:
            protocol = ("map masks from the devkit's map API, BEVFusion's protocol: per class the best IoU over "
                        "thresholds 0.35-0.65")
            shown = [key for key in metrics if key == "mIoU" or key.startswith("IoU/")]
        elif waymo:
            protocol = "camera-only LET-3D-AP against the camera-synced boxes, geomim_hf.evaluation.waymo"
            shown = [key for key in metrics if key.startswith("LET-3D-")]
        else:
            protocol = "official devkit, detection_cvpr_2019"
            shown = [key for key in metrics if key in SUMMARY_METRICS or key.startswith("AP/")]
        body += [f"## Evaluation ({eval_dataset} {eval_version} {eval_split}, {protocol})", "",
                 "| metric | value |", "|---|---|", *(f"| {key} | {float(metrics[key]):.4f} |" for key in shown), ""]
    body += ["## Model", "", "| | |", "|---|---|", f"| architecture | `{architecture}` |"]
    classes = "seg_class_names" if segmenter else "class_names"
    body += [f"| {key} | `{config[key]}` |" for key in ("image_size", "embed_dim", "depths", "num_heads",
                                                           "pillar_size", classes)
             if key in config]
    body.append("")
    if training:
        body += ["## Training", "", "| setting | value |", "|---|---|"]
        body += [f"| {key} | `{value}` |" for key, value in training.items()]
        body.append("")
    body += ["## Limitations", "",
             "- Trained and evaluated on the data named above only; a synthetic world (the project's test data) "
             "says nothing about real roads, and real nuScenes numbers need the full recipe and data.",
             "- The image size and BEV range are fixed by the config. Any camera rig runs (the pipeline reads each "
             "camera's intrinsics and pose), but accuracy on a rig unlike the training rig is not measured.",
             "- A research model: not for driving decisions.", "",
             "## Citation", "", "```bibtex",
             "@inproceedings{liu2023geomim,",
             "  title={Towards Better 3D Knowledge Transfer via Masked Image Modeling for Multi-view 3D Understanding},",
             "  author={Liu, Jihao and Wang, Tai and Liu, Boxiao and Zhang, Qihang and Liu, Yu and Li, Hongsheng},",
             "  booktitle={ICCV}, year={2023}}", "```", ""]
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n" + "\n".join(body))
    card.save(os.path.join(model_dir, "README.md"))
    return card


def _usage(architecture: str, repo_id: str) -> list[str]:
    if architecture == "GeoMIMLidarTeacher":
        return ["from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher", "",
                f'teacher = GeoMIMLidarTeacher.from_pretrained("{repo_id}").eval()',
                "# bev_features = teacher(lidar_points, ego_from_lidar, point_mask).bev_features"]
    if architecture in ("GeoMIMForBEVDetection", "GeoMIMForBEVSegmentation"):
        detection = architecture == "GeoMIMForBEVDetection"
        task, name = ("bev-object-detection", "detector") if detection else ("bev-map-segmentation", "segmenter")
        result = "detections" if detection else "masks"
        return ["import geomim_hf  # registers the geomim model type, its Auto classes and pipelines",
                f"from geomim_hf import {architecture}, GeoMIMImageProcessor",
                "from transformers import pipeline", "",
                f'{name} = pipeline("{task}", model="{repo_id}")',
                f'# {result} = {name}({{"images": views, "intrinsics": intrinsics,',
                '#     "ego_from_camera": ego_from_camera})',
                "# any rig: N images (PIL, arrays or paths), (N, 3, 3) intrinsics, (N, 4, 4) camera-to-ego poses",
                "",
                f'model = {architecture}.from_pretrained("{repo_id}").eval()  # or the model itself',
                f'processor = GeoMIMImageProcessor.from_pretrained("{repo_id}")',
                "# or: python examples/evaluate.py --model " + repo_id + " --dataroot DIR --split val",
                "# export: python -m geomim_hf.export --model " + repo_id + " --format onnx --output model.onnx"]
    return ["import geomim_hf  # registers the geomim model type with the Auto classes",
            "from transformers import AutoModel", "",
            f'encoder = AutoModel.from_pretrained("{repo_id}")  # the GeoMIM encoder (GeoMIMModel)',
            "# finetune it: python examples/finetune_detection.py --init " + repo_id + " ..."]
