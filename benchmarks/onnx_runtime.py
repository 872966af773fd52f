"""The exported detector against PyTorch: onnxruntime and the ``torch.export`` program against the PyTorch model,
latency per sample in the same run, and the exported files' sizes (``python -m geomim_hf.export``'s files).

    python benchmarks/onnx_runtime.py --preset geomim-tiny --json out/onnx_runtime.json
    python benchmarks/onnx_runtime.py --preset geomim-small --temporal --iters 10

onnxruntime runs on the CPU (its CUDA provider where it is installed and ``--device cuda``). All three are checked
to give the same heads (1e-4 of the largest, relative) before they are timed. PyTorch pools with its sorted-interval
op and cached indices (a fixed rig); the exported graphs lift and scatter every frustum point (geomim_hf.export).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import device_name, median_seconds, write_json  # noqa: E402
from inference import inputs  # noqa: E402

from geomim_hf import GeoMIMConfig  # noqa: E402
from geomim_hf.export import export_onnx, export_program, input_names, output_names, run_onnx  # noqa: E402
from geomim_hf.modeling_geomim import GeoMIMForBEVDetection  # noqa: E402


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="geomim-tiny")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--temporal", action="store_true", help="with the previous keyframe (BEVDet4D)")
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    import onnxruntime

    device = torch.device(args.device)
    config = GeoMIMConfig.from_preset_or_folder(args.preset)
    config.det_temporal = args.temporal
    torch.manual_seed(0)
    model = GeoMIMForBEVDetection(config).eval()
    sample = inputs(config, args.batch, torch.device("cpu"), args.temporal)
    sample = {name: sample[name] for name in input_names(model)}
    with tempfile.TemporaryDirectory() as folder:
        onnx_path, program_path = os.path.join(folder, "model.onnx"), os.path.join(folder, "model.pt2")
        export_onnx(model, onnx_path, num_views=config.num_views)
        torch.export.save(export_program(model, num_views=config.num_views), program_path)
        sizes = {"onnxruntime": os.path.getsize(onnx_path), "torch-export": os.path.getsize(program_path)}
        program = torch.export.load(program_path).module().to(device)
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if args.device == "cuda" else \
            ["CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(onnx_path, providers=providers)
    model.to(device)
    on_device = {name: value.to(device) for name, value in sample.items()}

    with torch.no_grad():  # the same heads before any timing
        expected = [getattr(model(**on_device), name).cpu() for name in output_names(model)]
        exported = [tensor.cpu() for tensor in program(*on_device.values())]
        onnx = list(run_onnx(session, sample).values())
    differences = {}
    for name, reference, from_program, from_onnx in zip(output_names(model), expected, exported, onnx):
        scale = float(reference.abs().max())
        differences[name] = {"torch-export": float((from_program - reference).abs().max()) / scale,
                             "onnxruntime": float(np.abs(from_onnx - reference.numpy()).max()) / scale}
        if max(differences[name].values()) > 1e-4:
            raise SystemExit(f"{name}: the exported models differ from PyTorch by {differences[name]} (relative)")

    calls = {"pytorch": lambda: model(**on_device), "torch-export": lambda: program(*on_device.values()),
             "onnxruntime": lambda: run_onnx(session, sample)}
    results = {}
    with torch.no_grad():
        for name, call in calls.items():
            results[name] = median_seconds(call, device, args.iters, args.warmup)
    print(f"{args.preset} detector, batch {args.batch} x {config.num_views} views at {tuple(config.image_size)}"
          f"{', previous frame' if args.temporal else ''}, {device_name(device)}, onnxruntime "
          f"{onnxruntime.__version__} ({session.get_providers()[0]}); median of {args.iters} after {args.warmup}")
    print(f"{'runtime':14} {'ms / sample':>12} {'vs pytorch':>11} {'file MiB':>9}")
    for name, seconds in results.items():
        size = f"{sizes[name] / 2**20:.1f}" if name in sizes else ""
        print(f"{name:14} {seconds / args.batch * 1e3:>12.1f} {seconds / results['pytorch']:>10.2f}x {size:>9}")
    output = {"preset": args.preset, "batch": args.batch, "temporal": args.temporal, "device": device_name(device),
              "onnxruntime": onnxruntime.__version__, "iters": args.iters, "seconds_per_call": results,
              "file_bytes": sizes, "max_relative_difference": differences}
    write_json(args.json, output)
    return output


if __name__ == "__main__":
    main()
