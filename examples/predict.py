"""Run a BEV detector on your own cameras: one sample file in, ego-frame boxes and a picture out.

    python examples/predict.py --model out/detector --sample rig.json --output detections.json --plot detections.png

``rig.json`` holds what the ``bev-object-detection`` pipeline takes (``geomim_hf.pipelines``): ``images`` (paths,
relative to the file's folder or absolute), ``intrinsics`` (N, 3, 3) and ``ego_from_camera`` (N, 4, 4), or
``ego_from_camera_rotation`` and ``ego_from_camera_translation``; optionally ``prev_images`` and
``ego_from_prev_ego``. A list of such samples is a batch. Writes the detections as JSON (``--output``, else
stdout) and, with ``--plot``, the cameras and the BEV with the boxes coloured by class (one picture per sample,
numbered when there are several).
"""

from __future__ import annotations

import argparse
import json
import os

from transformers import pipeline

import geomim_hf  # noqa: F401  (registers the pipelines)
from geomim_hf.visualize import plot_detections


def read_samples(path: str) -> list[dict]:
    """The samples of a JSON file, image paths made absolute against the file's folder."""
    with open(path) as handle:
        content = json.load(handle)
    samples = content if isinstance(content, list) else [content]
    folder = os.path.dirname(os.path.abspath(path))
    for index, sample in enumerate(samples):
        if not isinstance(sample, dict) or "images" not in sample:
            raise ValueError(f"{path}: sample {index} must be an object with 'images', 'intrinsics' and "
                             "'ego_from_camera' (geomim_hf.pipelines)")
        for key in ("images", "prev_images"):
            if key in sample:
                sample[key] = [os.path.join(folder, image) for image in sample[key]]
    return samples


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a detector folder or Hub id")
    parser.add_argument("--sample", required=True, help="a JSON file: one sample or a list (module docstring)")
    parser.add_argument("--output", default=None, help="write the detections here (JSON); default stdout")
    parser.add_argument("--plot", default=None, help="draw the detections to this image file")
    parser.add_argument("--score-threshold", type=float, default=0.3)
    parser.add_argument("--batch-size", type=int, default=1)
    args = parser.parse_args(argv)

    samples = read_samples(args.sample)
    detector = pipeline("bev-object-detection", model=args.model)
    detections = detector(samples, batch_size=args.batch_size, score_threshold=args.score_threshold)
    if args.output:
        with open(args.output, "w") as handle:
            json.dump(detections, handle, indent=1)
    else:
        print(json.dumps(detections, indent=1))
    if args.plot:
        stem, extension = os.path.splitext(args.plot)
        for index, (sample, found) in enumerate(zip(samples, detections)):
            path = args.plot if len(samples) == 1 else f"{stem}_{index}{extension}"
            plot_detections(sample, found, path, score_threshold=args.score_threshold)
            print(f"drew {path}")
    return detections


if __name__ == "__main__":
    main()
