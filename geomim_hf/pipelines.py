"""transformers pipelines for camera rigs: ``"bev-object-detection"`` and ``"bev-map-segmentation"``.

A sample is what a user of any rig has, as a dict:

- ``images``: N >= 1 camera images (PIL images, paths or arrays; views may differ in size);
- ``intrinsics`` (N, 3, 3) pinhole matrices of the images as given (pixels);
- ``ego_from_camera`` (N, 4, 4) each camera's pose in the ego frame (camera x right, y down, z forward; ego x
  forward, y left, z up), or ``ego_from_camera_rotation`` ((N, 3, 3) matrices or (N, 4) (w, x, y, z)
  quaternions, nuScenes' ``calibrated_sensor.rotation``) and ``ego_from_camera_translation`` (N, 3) metres;
- optionally the previous frame, for temporal models: ``prev_images``, ``ego_from_prev_ego`` (4, 4) (the
  previous ego frame in the current one) and, if the rig changed, ``prev_intrinsics`` and ``prev_ego_from_camera``;
- optionally ``camera_names`` (N,), which only the pictures read (:func:`geomim_hf.visualize.plot_detections`).

The image processor resizes each view to the model's input exactly as for datasets (``processed_from_original``
carries the intrinsics through), so nothing about the rig is fixed by the model: the camera-aware depth net reads
each view's intrinsics and pose. A rig unlike the training rig is allowed; how well a model transfers to it is a
property of the model (README, "Inference on your own cameras").

Importing the package registers both tasks with ``transformers.pipeline`` (:mod:`._auto`).
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image
from transformers import Pipeline

from .data.geometry import BOX_FIELDS, ego_from_camera_of
from .data.records import is_rigid
from .image_processing_geomim import GeoMIMImageProcessor
from .modeling_geomim import (
    CAMERA_INPUTS,
    BEVDetectionOutput,
    BEVSegmentationOutput,
    GeoMIMForBEVDetection,
    GeoMIMForBEVSegmentation,
)

SAMPLE_KEYS = ("images", "intrinsics", "ego_from_camera", "ego_from_camera_rotation", "ego_from_camera_translation",
               "prev_images", "prev_intrinsics", "prev_ego_from_camera", "ego_from_prev_ego", "camera_names")


def _views(value, name: str) -> list:
    """A sample's images as a list of views: one path, image or array alone is refused rather than read as
    characters or rows."""
    if isinstance(value, (str, os.PathLike, Image.Image, np.ndarray, torch.Tensor)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name}: expected a list of N >= 1 views (paths, PIL images or arrays), got one "
                        f"{type(value).__name__}")
    return list(value)


def model_inputs(sample: dict, processor: GeoMIMImageProcessor, temporal: bool) -> dict[str, torch.Tensor]:
    """A user's sample (module docstring) as the model's inputs, each with a batch dimension of 1. Without a
    previous frame a temporal model sees the current one in its place, as for a scene's first keyframe; a model
    that is not temporal ignores a previous frame."""
    if not isinstance(sample, dict):
        raise TypeError(f"a sample is a dict with keys {SAMPLE_KEYS[:3]} (and optionally the others of "
                        f"{SAMPLE_KEYS[3:]}), got {type(sample).__name__}")
    unknown = sorted(set(sample) - set(SAMPLE_KEYS))
    if unknown:
        raise ValueError(f"unknown sample keys {unknown}; a sample takes {list(SAMPLE_KEYS)}")
    for key in ("images", "intrinsics"):
        if key not in sample:
            raise ValueError(f"a sample needs {key!r}: N camera images and their (N, 3, 3) intrinsics")
    ego_from_camera = ego_from_camera_of(sample)
    processed = processor(_views(sample["images"], "images"), sample["intrinsics"], ego_from_camera)
    inputs = {key: processed[key] for key in CAMERA_INPUTS}
    if not temporal:
        return inputs
    if "prev_images" in sample:
        if "ego_from_prev_ego" not in sample:
            raise ValueError("prev_images need ego_from_prev_ego (4, 4): the previous ego frame in the current one")
        ego_from_prev_ego = np.asarray(sample["ego_from_prev_ego"], np.float64)
        if ego_from_prev_ego.shape != (4, 4) or not np.isfinite(ego_from_prev_ego).all() or \
                not is_rigid(ego_from_prev_ego):
            raise ValueError(f"ego_from_prev_ego: expected a finite rigid (4, 4) transform, got "
                             f"{ego_from_prev_ego.tolist()}")
        previous = processor(_views(sample["prev_images"], "prev_images"),
                             sample.get("prev_intrinsics", sample["intrinsics"]),
                             sample.get("prev_ego_from_camera", ego_from_camera), input_prefix="prev_")
        inputs.update({f"prev_{key}": previous[key] for key in CAMERA_INPUTS})
        inputs["ego_from_prev_ego"] = torch.as_tensor(ego_from_prev_ego, dtype=torch.float32)[None]
    else:  # the current frame stands in (its encoder runs twice: the batch keeps one set of inputs)
        inputs.update({f"prev_{key}": inputs[key] for key in CAMERA_INPUTS})
        inputs["ego_from_prev_ego"] = torch.eye(4)[None]
    return inputs


class _RigPipeline(Pipeline):
    """Preprocessing shared by the BEV pipelines: one sample dict in, the model's inputs out (batched by the
    pipeline's own collation, every input with a leading batch dimension)."""

    _load_processor = False
    _load_image_processor = None  # optional: a folder saved without one gets the model's input size (__init__)
    _load_feature_extractor = False
    _load_tokenizer = False
    model_class: type  # the task model the pipeline runs

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # The Auto class builds the task's model from any geomim folder: one saved as another task (a segmenter, a
        # pretraining) would run with heads it never trained.
        architectures = getattr(self.model.config, "architectures", None) or [type(self.model).__name__]
        if not isinstance(self.model, self.model_class) or self.model_class.__name__ not in architectures:
            raise ValueError(f"{type(self).__name__} runs a {self.model_class.__name__}, got a model saved as "
                             f"{architectures} (its config.json's architectures)")
        if self.image_processor is None:  # a folder saved without its processor: the model's input size
            self.image_processor = GeoMIMImageProcessor(image_size=self.model.config.image_size,
                                                        depth_stride=self.model.feature_stride)
        if tuple(self.image_processor.image_size) != tuple(self.model.config.image_size):
            raise ValueError(f"the image processor resizes to {tuple(self.image_processor.image_size)} but the model "
                             f"takes {tuple(self.model.config.image_size)} (config.image_size)")

    def __call__(self, inputs, **kwargs):
        batch_size = kwargs.get("batch_size") or self._batch_size or 1
        if isinstance(inputs, list) and batch_size > 1:  # one batch stacks the views of its samples
            counts = [len(sample["images"]) for sample in inputs if isinstance(sample, dict) and "images" in sample]
            if len(set(counts)) > 1:
                raise ValueError(f"batch_size={batch_size} stacks samples with as many views each, got view counts "
                                 f"{counts}: group the samples by rig or use batch_size=1")
        return super().__call__(inputs, **kwargs)

    def preprocess(self, sample: dict) -> dict[str, torch.Tensor]:
        return model_inputs(sample, self.image_processor, temporal=self.model.config.det_temporal)


class BEVObjectDetectionPipeline(_RigPipeline):
    """3D boxes in the ego frame from N camera images (module docstring for the sample):

    ```python
    detector = pipeline("bev-object-detection", model="org/geomim-detector")
    detections = detector({"images": views, "intrinsics": intrinsics, "ego_from_camera": ego_from_camera})
    ```

    Returns per sample a list of detections, best first, each ``{"score", "label", "box": {"x", "y", "z",
    "length", "width", "height", "yaw"}, "velocity": {"x", "y"}, "attribute"}``: metres and radians in the ego
    frame (``z`` at the box centre, ``yaw`` from the x axis towards y), m/s, the nuScenes attribute name (None
    for classes without one). Call arguments: ``score_threshold`` (default the config's
    ``det_score_threshold``), ``top_k`` (default ``det_max_detections``), ``batch_size``.
    """

    model_class = GeoMIMForBEVDetection

    def _sanitize_parameters(self, score_threshold: float | None = None, top_k: int | None = None):
        postprocess = {}
        if score_threshold is not None:
            postprocess["score_threshold"] = float(score_threshold)
        if top_k is not None:
            postprocess["top_k"] = int(top_k)
        return {}, {}, postprocess

    def _forward(self, inputs: dict) -> dict[str, torch.Tensor]:
        outputs = self.model(**inputs)
        return {"heatmap": outputs.heatmap, "regression": outputs.regression, "attributes": outputs.attributes}

    def postprocess(self, outputs: dict, score_threshold: float | None = None, top_k: int | None = None) -> list[dict]:
        from .evaluation.nuscenes import attribute_name
        from .data.classes import DETECTION_CLASS_ATTRIBUTES

        detections = self.model.post_process(BEVDetectionOutput(**outputs), score_threshold=score_threshold,
                                             top_k=top_k)[0]
        class_names = self.model.config.class_names
        results = []
        for box, score, label, velocity, attribute in zip(
                *(detections[key].cpu().double().tolist() for key in ("boxes", "scores", "labels", "velocities",
                                                                      "attributes"))):
            name = class_names[int(label)]
            speed = float(np.hypot(*velocity))
            # nuScenes' attribute rules apply to its classes; other class lists (Waymo's) have no attributes
            attribute = (attribute_name(name, int(attribute), speed) or None) if name in DETECTION_CLASS_ATTRIBUTES \
                else None
            results.append({"score": score, "label": name, "box": dict(zip(BOX_FIELDS, box)),
                            "velocity": {"x": velocity[0], "y": velocity[1]}, "attribute": attribute})
        return results


class BEVMapSegmentationPipeline(_RigPipeline):
    """BEV map masks around the ego from N camera images (module docstring for the sample):

    ```python
    segmenter = pipeline("bev-map-segmentation", model="org/geomim-segmenter")
    masks = segmenter({"images": views, "intrinsics": intrinsics, "ego_from_camera": ego_from_camera})
    ```

    Returns per sample one dict per map class ``{"label", "score", "mask", "probabilities"}``: ``probabilities``
    (Y, X) float32 on the config's ``segmentation_grid`` (rows along y, columns along x, row 0 at ``y_min``: the
    layout of every BEV tensor here), ``mask`` the same cells at or above ``threshold`` (call argument, default
    0.5) as a PIL image (mode ``L``, 255 inside), ``score`` the mean probability inside the mask (0 if empty).
    """

    model_class = GeoMIMForBEVSegmentation

    def _sanitize_parameters(self, threshold: float | None = None):
        return {}, {}, ({} if threshold is None else {"threshold": float(threshold)})

    def _forward(self, inputs: dict) -> dict[str, torch.Tensor]:
        return {"logits": self.model(**inputs).logits}

    def postprocess(self, outputs: dict, threshold: float = 0.5) -> list[dict]:
        from PIL import Image

        probabilities = self.model.post_process(BEVSegmentationOutput(**outputs))[0].cpu().numpy()  # (K, Y, X)
        results = []
        for name, probability in zip(self.model.config.seg_class_names, probabilities):
            inside = probability >= threshold
            results.append({"label": name, "score": float(probability[inside].mean()) if inside.any() else 0.0,
                            "mask": Image.fromarray(inside.astype(np.uint8) * 255),
                            "probabilities": probability})
        return results


def register_pipelines() -> None:
    """``pipeline("bev-object-detection")`` and ``pipeline("bev-map-segmentation")``."""
    from transformers import AutoModelForObjectDetection, AutoModelForSemanticSegmentation
    from transformers.pipelines import PIPELINE_REGISTRY

    for task, pipeline_class, auto_class in (("bev-object-detection", BEVObjectDetectionPipeline,
                                              AutoModelForObjectDetection),
                                             ("bev-map-segmentation", BEVMapSegmentationPipeline,
                                              AutoModelForSemanticSegmentation)):
        if PIPELINE_REGISTRY.supported_tasks.get(task, {}).get("impl") is not pipeline_class:
            PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class, pt_model=auto_class,
                                                type="multimodal")


register_pipelines()
