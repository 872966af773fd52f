"""Export a BEV detector's or segmenter's network to ONNX or to a ``torch.export`` program.

    python -m geomim_hf.export --model DIR --format onnx --output detector.onnx [--num-views 6] [--image-size H W]
    python -m geomim_hf.export --model DIR --format torch-export --output detector.pt2

What is exported: the network from processed images and camera geometry to the head outputs (the detector's
``heatmap``, ``regression`` and ``attributes``, the segmenter's ``logits``), batch dynamic. Decoding stays in
Python (``model.post_process`` on the outputs; :func:`run_onnx` shows the loop). Images are processed as for
PyTorch (:class:`~geomim_hf.GeoMIMImageProcessor`); its ``processed_from_original`` is an input.

The BEV pooling is exported without a custom op and without precomputed indices: the camera geometry is a graph
input, each frustum point's cell is computed in the graph (float64, as in PyTorch), and the points are summed into
the grid by one indexed add (ONNX ``ScatterElements`` with ``reduction="add"``, opset 16+), with one spill cell for
the points outside (:func:`geomim_hf.modeling.ops.scatter_pool`). So one file serves any rig with the model's number
of views and image size, and the previous frame's cameras can move with the ego. The price: the graph
materialises the lifted (B * N * D * h * w, C) products that the PyTorch op never does, and an int64 index for each
of their elements (80 MB of float32 and 160 MB of indices a frame at the official finetuning size: 6 views, 59 bins,
16 x 44, 80 channels). ``ScatterND``, whose indices are a row each, is not used: onnxruntime's CPU kernel adds the
rows on several threads without a guard, so points that share a cell lose updates now and then (its
``ScatterElements`` gives each thread its own channels).

TensorRT (not run here): the ``ScatterElements`` route goes through a TensorRT OSS plugin (release 10.0) that
onnx-tensorrt#953 reports failing when there are more indices than outputs, as here, and onnx-tensorrt#957 reports
its parser lowering ``ScatterND`` to a scatter layer that ignores the reduction (silently wrong sums); TensorRT also
computes float64 as float32, which moves frustum points near cell borders. A
fast TensorRT engine for a fixed rig would take the pooling out of the graph: precomputed point indices and
intervals as inputs to a BEVPoolv2-style plugin (points sorted by cell, one thread block per interval), as BEVDet's
TensorRT deployment does.

Temporal models (``det_temporal``) take the previous frame too (``prev_*`` and ``ego_from_prev_ego``); for a scene's
first frame pass the current frame with the identity, which is what the PyTorch model does without one.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from torch import nn

from .data.geometry import camera_rotation, make_transform

DETECTION_OUTPUTS = ("heatmap", "regression", "attributes")
SEGMENTATION_OUTPUTS = ("logits",)


def input_names(model) -> tuple[str, ...]:
    from .modeling_geomim import CAMERA_INPUTS, PREVIOUS_FRAME_INPUTS

    return CAMERA_INPUTS + (PREVIOUS_FRAME_INPUTS if model.config.det_temporal else ())


def output_names(model) -> tuple[str, ...]:
    from .modeling_geomim import GeoMIMForBEVSegmentation

    return SEGMENTATION_OUTPUTS if isinstance(model, GeoMIMForBEVSegmentation) else DETECTION_OUTPUTS


class ExportableBEVModel(nn.Module):
    """A BEV task model with positional tensor inputs (:func:`input_names`) and a tuple of head outputs
    (:func:`output_names`), the form exporters take."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.outputs = output_names(model)
        self.eval()  # inference: BatchNorm statistics and no drop path, in the wrapper as in the model

    def forward(self, pixel_values, intrinsics, ego_from_camera, processed_from_original, prev_pixel_values=None,
                prev_intrinsics=None, prev_ego_from_camera=None, prev_processed_from_original=None,
                ego_from_prev_ego=None) -> tuple[torch.Tensor, ...]:
        previous = {"prev_pixel_values": prev_pixel_values, "prev_intrinsics": prev_intrinsics,
                    "prev_ego_from_camera": prev_ego_from_camera,
                    "prev_processed_from_original": prev_processed_from_original,
                    "ego_from_prev_ego": ego_from_prev_ego}
        outputs = self.model(pixel_values, intrinsics, ego_from_camera, processed_from_original,
                             **{name: value for name, value in previous.items() if value is not None})
        return tuple(getattr(outputs, name) for name in self.outputs)


def example_inputs(model, batch_size: int = 2, num_views: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Inputs of the right shapes for tracing: random images and a ring of ``num_views`` (default the config's)
    cameras 1.6 m up, looking out at equal yaw steps, with processed_from_original the identity. (The values do
    not shape the graph.)"""
    num_views = num_views or model.config.num_views
    generator = torch.Generator().manual_seed(seed)
    height, width = model.config.image_size
    pixel_values = torch.randn(batch_size, num_views, 3, height, width, generator=generator)
    intrinsics = torch.tensor([[width / 2, 0.0, (width - 1) / 2], [0.0, width / 2, (height - 1) / 2], [0.0, 0.0, 1.0]])
    yaws = 2 * np.pi * np.arange(num_views) / num_views
    ego_from_camera = torch.tensor(np.stack([make_transform(camera_rotation(yaw), [1.0, 0.0, 1.6]) for yaw in yaws]),
                                   dtype=torch.float32)
    current = (pixel_values, intrinsics.expand(batch_size, num_views, 3, 3).clone(),
               ego_from_camera.expand(batch_size, num_views, 4, 4).clone(),
               torch.eye(3).expand(batch_size, num_views, 3, 3).clone())
    if not model.config.det_temporal:
        return current
    return current + tuple(t.clone() for t in current) + (torch.eye(4).expand(batch_size, 4, 4).clone(),)


def _dynamic_shapes(model) -> dict[str, dict]:
    batch = torch.export.Dim("batch", min=1, max=1024)
    return {name: {0: batch} for name in input_names(model)}


def export_program(model, num_views: int | None = None) -> torch.export.ExportedProgram:
    """The model as a ``torch.export`` program for ``num_views`` cameras (default the config's), batch dynamic."""
    wrapper = ExportableBEVModel(model)
    with torch.no_grad():
        return torch.export.export(wrapper, example_inputs(model, num_views=num_views),
                                   dynamic_shapes=_dynamic_shapes(model))


def export_onnx(model, path: str, num_views: int | None = None, opset: int = 18) -> str:
    """Write the model as an ONNX file at ``path`` for ``num_views`` cameras (default the config's), batch dynamic,
    weights inside the file. Returns ``path``."""
    wrapper = ExportableBEVModel(model)
    with torch.no_grad():
        program = torch.onnx.export(wrapper, example_inputs(model, num_views=num_views), dynamo=True,
                                    dynamic_shapes=_dynamic_shapes(model), opset_version=opset,
                                    input_names=list(input_names(model)), output_names=list(wrapper.outputs),
                                    verbose=False)
    program.save(path)
    return path


def run_onnx(session, inputs: dict) -> dict[str, np.ndarray]:
    """Run an ``onnxruntime.InferenceSession`` of an exported model on model inputs (a processor's, as tensors or
    arrays): returns the head outputs by name. Pass them to ``model.post_process`` (as a ``BEVDetectionOutput``) to
    decode boxes."""
    names = [node.name for node in session.get_inputs()]
    missing = [name for name in names if name not in inputs]
    if missing:
        raise ValueError(f"the exported model takes {names}; missing {missing}")
    feeds = {name: np.ascontiguousarray(np.asarray(inputs[name], np.float32)) for name in names}
    return dict(zip((node.name for node in session.get_outputs()), session.run(None, feeds)))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m geomim_hf.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a GeoMIMForBEVDetection or GeoMIMForBEVSegmentation folder "
                                                        "(or hub id)")
    parser.add_argument("--format", required=True, choices=("onnx", "torch-export"))
    parser.add_argument("--output", required=True, help="the file to write (.onnx, or .pt2 for torch-export)")
    parser.add_argument("--num-views", type=int, default=None, help="cameras per sample (default the config's "
                                                                     "num_views)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="processed image size (default the model's config.image_size; a multiple of 32)")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset (>= 16 for ScatterElements' add)")
    args = parser.parse_args(argv)
    if args.num_views is not None and args.num_views < 1:
        parser.error(f"--num-views must be >= 1, got {args.num_views}")
    if args.opset < 16:
        parser.error(f"--opset must be >= 16 (ScatterElements with reduction='add'), got {args.opset}")

    from .modeling_geomim import load_bev_model

    overrides = {"image_size": tuple(args.image_size)} if args.image_size else {}
    model = load_bev_model(args.model, **overrides).eval()
    num_views = args.num_views or model.config.num_views
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    started = time.perf_counter()
    if args.format == "onnx":
        export_onnx(model, args.output, num_views=num_views, opset=args.opset)
    else:
        torch.export.save(export_program(model, num_views=num_views), args.output)
    size = os.path.getsize(args.output) / 2**20
    print(f"wrote {args.output} ({size:.1f} MiB, {time.perf_counter() - started:.0f} s): inputs "
          f"{list(input_names(model))} with {num_views} views of {tuple(model.config.image_size)}, batch dynamic; "
          f"outputs {list(output_names(model))}")


if __name__ == "__main__":
    main()
