"""nuScenes detection evaluation: ego-frame predictions to the devkit's result JSON, and the official
``DetectionEval`` run on it.

    from geomim_hf.evaluation import evaluate_nuscenes, format_metrics, write_nuscenes_submission
    path = write_nuscenes_submission(predictions, val, "outputs/results_nusc.json")
    metrics = evaluate_nuscenes("/data/nuscenes", "v1.0-trainval", "val", path, "outputs/eval")
    print(format_metrics(metrics))

Predictions follow the sample contract (:mod:`geomim_hf.data.records`): boxes ``(x, y, z, l, w, h,
yaw)`` in the ego frame with ``z`` at the centre, velocities ego-frame m/s. The devkit wants boxes in
the global frame, sizes as ``(w, l, h)`` and rotations as ``(w, x, y, z)`` quaternions.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..data.classes import DETECTION_CLASS_ATTRIBUTES, NUSCENES_DETECTION_CLASSES
from ..data.geometry import matrix_to_quaternion, rotation_z, transform_points
from ..data.nuscenes_dataset import SPLITS_BY_VERSION
from ..data.records import ATTRIBUTE_NAMES, check_matrix

DEFAULT_META = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}

# mmdetection3d's NuScenesDataset.DefaultAttribute: the attribute of a box whose model predicts none.
DEFAULT_ATTRIBUTES = {
    "car": "vehicle.parked",
    "pedestrian": "pedestrian.moving",
    "trailer": "vehicle.parked",
    "truck": "vehicle.parked",
    "bus": "vehicle.moving",
    "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked",
    "bicycle": "cycle.without_rider",
    "barrier": "",
    "traffic_cone": "",
}
MOVING_SPEED = 0.2  # m/s; above it mmdetection3d calls a vehicle moving and a cycle ridden
VEHICLE_CLASSES = ("car", "construction_vehicle", "bus", "truck", "trailer")
CYCLE_CLASSES = ("bicycle", "motorcycle")
TP_ERROR_NAMES = {"trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE",
                  "attr_err": "mAAE"}


def _array(value, name: str, where: str, trailing: tuple[int, ...], count: int | None) -> np.ndarray:
    """``value`` (NumPy, torch or nested lists) as an array of shape ``(count, *trailing)``."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        value = (value.float() if value.dtype == torch.bfloat16 else value).numpy()  # NumPy has no bfloat16
    array = np.asarray(value)
    if array.size == 0:  # empty rows of a 🤗 Dataset come back without their trailing dims
        array = array.reshape((0, *trailing))
    if array.ndim != 1 + len(trailing) or array.shape[1:] != trailing or (count is not None and len(array) != count):
        expected = ("K" if count is None else str(count),) + tuple(str(d) for d in trailing)
        raise ValueError(f"{where}: field {name} has shape {array.shape}, expected ({', '.join(expected)})")
    return array


def _float_array(value, name: str, where: str, trailing: tuple[int, ...], count: int | None) -> np.ndarray:
    array = _array(value, name, where, trailing, count).astype(np.float64)
    if not np.all(np.isfinite(array)):
        bad = np.argwhere(~np.isfinite(array))[0].tolist()
        raise ValueError(f"{where}: field {name} is not finite (first at index {bad})")
    return array


def _id_array(value, name: str, where: str, count: int, low: int, high: int, meaning: str) -> np.ndarray:
    array = _array(value, name, where, (), count)
    if array.dtype.kind not in "iu" and len(array):
        raise ValueError(f"{where}: field {name} must hold integer ids, got dtype {array.dtype}")
    array = array.astype(np.int64)
    outside = (array < low) | (array >= high)
    if outside.any():
        raise ValueError(f"{where}: field {name} holds id {int(array[outside][0])}, not one of {meaning} "
                         f"(valid ids {low}..{high - 1})")
    return array


def attribute_name(class_name: str, attribute_id: int, speed: float) -> str:
    """The predicted attribute where it is valid for the class, else mmdetection3d's rule: moving or
    ridden above :data:`MOVING_SPEED`, standing pedestrian or stopped bus below it, else the default."""
    if attribute_id >= 0 and ATTRIBUTE_NAMES[attribute_id] in DETECTION_CLASS_ATTRIBUTES[class_name]:
        return ATTRIBUTE_NAMES[attribute_id]
    if speed > MOVING_SPEED:
        if class_name in VEHICLE_CLASSES:
            return "vehicle.moving"
        if class_name in CYCLE_CLASSES:
            return "cycle.with_rider"
    elif class_name == "pedestrian":
        return "pedestrian.standing"
    elif class_name == "bus":
        return "vehicle.stopped"
    return DEFAULT_ATTRIBUTES[class_name]


def _sample_results(prediction: Mapping, sample: Mapping, index: int, classes: Sequence[str],
                    max_boxes: int) -> tuple[str, list[dict]]:
    """The devkit boxes of one sample: checked, top ``max_boxes`` by score, in the global frame."""
    token = sample["sample_token"]
    where = f"sample {index} ({token})"
    global_from_ego = check_matrix(sample["global_from_ego"], (4, 4), f"{where}: field global_from_ego")
    boxes_ego = _float_array(prediction["boxes"], "boxes", where, (7,), None)  # (K, 7)
    count = len(boxes_ego)
    scores = _float_array(prediction["scores"], "scores", where, (), count)  # (K,)
    labels = _id_array(prediction["labels"], "labels", where, count, 0, len(classes), "the classes")  # (K,)
    velocities_ego = (_float_array(prediction["velocities"], "velocities", where, (2,), count)
                      if prediction.get("velocities") is not None else np.zeros((count, 2)))  # (K, 2)
    attributes = (_id_array(prediction["attributes"], "attributes", where, count, -1, len(ATTRIBUTE_NAMES),
                            "ATTRIBUTE_NAMES or -1")
                  if prediction.get("attributes") is not None else np.full(count, -1))  # (K,)
    if np.any(boxes_ego[:, 3:6] <= 0):
        raise ValueError(f"{where}: field boxes has a size (l, w, h) that is not positive")

    keep = np.argsort(-scores, kind="stable")[:max_boxes]
    boxes_ego, scores, labels = boxes_ego[keep], scores[keep], labels[keep]
    velocities_ego, attributes = velocities_ego[keep], attributes[keep]

    centers_global = transform_points(global_from_ego, boxes_ego[:, :3])  # (K, 3)
    rotations_global = global_from_ego[:3, :3] @ rotation_z(boxes_ego[:, 6])  # (K, 3, 3)
    # (K, 2): the ego velocity with vz = 0, turned like the box, as mmdetection3d does
    velocities_global = (np.pad(velocities_ego, ((0, 0), (0, 1))) @ global_from_ego[:3, :3].T)[:, :2]
    results = []
    for k in range(len(keep)):
        class_name = classes[labels[k]]
        results.append({
            "sample_token": token,
            "translation": centers_global[k].tolist(),
            "size": boxes_ego[k, [4, 3, 5]].tolist(),  # nuScenes wlh
            "rotation": matrix_to_quaternion(rotations_global[k]).tolist(),
            "velocity": velocities_global[k].tolist(),
            "detection_name": class_name,
            "detection_score": float(scores[k]),
            "attribute_name": attribute_name(class_name, int(attributes[k]),
                                              float(np.linalg.norm(velocities_global[k]))),
        })
    return token, results


def _write_json_atomically(content: dict, path: str) -> None:
    """Write to a temporary file beside ``path`` and rename it, so readers never see half a file."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=directory)
    try:
        with os.fdopen(handle, "w") as file:
            json.dump(content, file)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def write_nuscenes_submission(
    predictions: Sequence[Mapping],
    samples: Sequence[Mapping],
    path: str | os.PathLike,
    meta: Mapping | None = None,
    classes: Sequence[str] = NUSCENES_DETECTION_CLASSES,
    max_boxes: int = 500,
) -> str:
    """Write ego-frame predictions as the nuScenes devkit's detection result JSON.

    Args:
        predictions: one dict per sample with ``boxes`` (K, 7) ego ``(x, y, z, l, w, h, yaw)``, ``scores``
            (K,), ``labels`` (K,) ids into ``classes``, and optionally ``velocities`` (K, 2) ego-frame
            m/s (zeros if absent) and ``attributes`` (K,) ids into ``ATTRIBUTE_NAMES`` (-1: none);
            NumPy arrays, torch tensors or lists.
        samples: the parallel samples, each with ``sample_token`` and ``global_from_ego`` (4, 4); rows
            of :func:`~geomim_hf.data.load_nuscenes` serve as they are.
        path: where the JSON goes; written to a temporary file first and renamed into place.
        meta: the submission's ``meta`` (which sensors were used); a camera-only entry by default.
        classes: the detection names ``labels`` index; each must be a nuScenes detection name.
        max_boxes: the most boxes kept per sample, highest scores first (the devkit allows 500).

    An attribute that is not valid for its class, or absent, is replaced by mmdetection3d's choice
    from the class and speed. Every sample appears in the results, with an empty list if it has no
    box. Returns the path as a string.
    """
    if len(predictions) != len(samples):
        raise ValueError(f"got {len(predictions)} predictions for {len(samples)} samples; they must be parallel")
    unknown = [name for name in classes if name not in DETECTION_CLASS_ATTRIBUTES]
    if unknown:
        raise ValueError(f"classes {unknown} are not nuScenes detection names {sorted(DETECTION_CLASS_ATTRIBUTES)}")
    if max_boxes < 1:
        raise ValueError(f"max_boxes must be >= 1, got {max_boxes}")
    results: dict[str, list[dict]] = {}
    for index, (prediction, sample) in enumerate(zip(predictions, samples)):
        token, boxes = _sample_results(prediction, sample, index, classes, max_boxes)
        if token in results:
            raise ValueError(f"sample {index}: sample_token {token} appears twice")
        results[token] = boxes
    path = os.fspath(path)
    _write_json_atomically({"meta": dict(meta if meta is not None else DEFAULT_META), "results": results}, path)
    return path


def _split_sample_tokens(nusc, split: str) -> set[str]:
    from nuscenes.utils.splits import create_splits_scenes

    scenes = set(create_splits_scenes()[split])
    return {s["token"] for s in nusc.sample if nusc.get("scene", s["scene_token"])["name"] in scenes}


def evaluate_nuscenes(
    dataroot: str,
    version: str,
    split: str,
    result_path: str | os.PathLike,
    output_dir: str | os.PathLike,
    verbose: bool = False,
    nusc=None,
) -> dict[str, float]:
    """Score a result JSON with the official nuScenes ``DetectionEval`` (``detection_cvpr_2019``).

    Args:
        dataroot: the nuScenes folder holding ``{version}/*.json``.
        version: ``v1.0-trainval``, ``v1.0-mini`` or ``v1.0-test``.
        split: the split to score, valid for ``version`` (``val``, ``mini_val``...).
        result_path: a file written by :func:`write_nuscenes_submission` (or any devkit result JSON).
        output_dir: where the devkit writes ``metrics_summary.json`` and ``metrics_details.json``.
        verbose: let the devkit print its progress and tables.
        nusc: an already loaded ``NuScenes`` of ``version``, to skip reloading the tables.

    Samples of other splits in the file are left out (the devkit then reads a filtered copy written
    to ``output_dir``); a sample of the split missing from it is an error. Returns a flat dict:
    ``mAP``, ``NDS``, the five TP errors ``mATE``, ``mASE``, ``mAOE``, ``mAVE``, ``mAAE``,
    ``AP/<class>`` (mean over the distance thresholds) and ``eval_time`` (seconds).
    """
    from nuscenes import NuScenes
    from nuscenes.eval.detection.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    if version not in SPLITS_BY_VERSION:
        raise ValueError(f"version must be one of {sorted(SPLITS_BY_VERSION)}, got {version!r}")
    if split not in SPLITS_BY_VERSION[version]:
        raise ValueError(f"split {split!r} is not part of {version}; choose from {SPLITS_BY_VERSION[version]}")
    if nusc is None:
        nusc = NuScenes(version=version, dataroot=dataroot, verbose=verbose)
    elif nusc.version != version:
        raise ValueError(f"the given NuScenes instance holds {nusc.version}, not {version}")
    result_path, output_dir = os.fspath(result_path), os.fspath(output_dir)

    with open(result_path) as file:
        submission = json.load(file)
    if not isinstance(submission, dict) or not isinstance(submission.get("results"), dict) or "meta" not in submission:
        raise ValueError(f"{result_path} is not a nuScenes result file: it needs the keys 'meta' and 'results'")
    split_tokens = _split_sample_tokens(nusc, split)
    missing = split_tokens - set(submission["results"])
    if missing:
        raise ValueError(f"{result_path} lacks {len(missing)} of the {len(split_tokens)} samples of {split} "
                         f"(e.g. {sorted(missing)[0]}); every sample needs an entry, an empty list if no box")
    if len(submission["results"]) > len(split_tokens):  # the devkit wants exactly the split's samples
        submission["results"] = {token: submission["results"][token] for token in split_tokens}
        result_path = os.path.join(output_dir, f"results_{split}.json")
        _write_json_atomically(submission, result_path)

    evaluation = DetectionEval(nusc, config_factory("detection_cvpr_2019"), result_path, split, output_dir,
                               verbose=verbose)
    quiet = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with quiet:  # main() prints its tables whatever verbose says
        summary = evaluation.main(plot_examples=0, render_curves=False)

    metrics = {"mAP": float(summary["mean_ap"]), "NDS": float(summary["nd_score"])}
    metrics.update({TP_ERROR_NAMES[name]: float(value) for name, value in summary["tp_errors"].items()})
    metrics.update({f"AP/{name}": float(ap) for name, ap in summary["mean_dist_aps"].items()})
    metrics["eval_time"] = float(summary["eval_time"])
    return metrics


def format_metrics(metrics: Mapping[str, float]) -> str:
    """A small table of :func:`evaluate_nuscenes`'s metrics: mAP, NDS, the TP errors and per-class AP."""
    lines = [f"{'mAP':<22}{metrics['mAP']:.4f}", f"{'NDS':<22}{metrics['NDS']:.4f}"]
    lines += [f"{name:<22}{metrics[name]:.4f}" for name in TP_ERROR_NAMES.values()]
    lines += ["", f"{'class':<22}AP"]
    lines += [f"{key[3:]:<22}{value:.4f}" for key, value in metrics.items() if key.startswith("AP/")]
    return "\n".join(lines)
