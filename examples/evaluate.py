"""Evaluate a GeoMIM BEV detector (official devkit) or BEV map segmenter (BEVFusion's mIoU) on a nuScenes split,
or a Waymo detector (LET-3D-AP, APL and APH) on a Waymo v2 split.

    python examples/evaluate.py --model OUT/detector --dataroot DIR --version v1.0-mini --split mini_val --plot 4
    python examples/evaluate.py --model OUT/waymo_detector --dataset waymo --dataroot WAYMO --split validation
    python examples/evaluate.py --model OUT/waymo_detector --dataset waymo --dataroot WAYMO --split validation \
        --iou-thresholds vehicle=0.1 pedestrian=0.1 cyclist=0.1 --output-dir OUT/loose

The task comes from the model's ``config.json`` (its ``architectures``). Prints the metric table, writes
``metrics.json`` (and for a detector the devkit's result JSON) to ``--output-dir`` (default: the model folder),
and with ``--plot N`` saves pictures of N samples: camera views and BEV, predictions against ground truth (a
segmenter: each map class's probability with the devkit's mask outlined).
"""

from __future__ import annotations

import argparse
import json
import os

import torch

import geomim_hf  # noqa: F401  (registers the geomim model type)
from geomim_hf import GeoMIMImageProcessor
from geomim_hf.data import load_nuscenes, load_waymo
from geomim_hf.data.classes import WAYMO_CLASSES
from geomim_hf.evaluation import evaluate_detector, evaluate_segmenter, predict_detections, predict_map_segmentation
from geomim_hf.evaluation.waymo import IOU_THRESHOLDS, evaluate_waymo_detector
from geomim_hf.hub import create_model_card
from geomim_hf.modeling_geomim import GeoMIMForBEVSegmentation, load_bev_model
from geomim_hf.training import compile_regions
from geomim_hf.visualize import plot_detections, plot_map_segmentation


def parse_iou_thresholds(items: list[str] | None) -> dict[str, float] | None:
    """``--iou-thresholds vehicle=0.1 ...``: the release's thresholds with the classes named replaced."""
    if items is None:
        return None
    thresholds = dict(IOU_THRESHOLDS)
    for item in items:
        name, _, value = item.partition("=")
        try:
            iou = float(value)
        except ValueError:
            iou = float("nan")
        if name not in WAYMO_CLASSES or not 0.0 < iou <= 1.0:
            raise ValueError(f"--iou-thresholds {item!r}: expected CLASS=IOU with CLASS one of {WAYMO_CLASSES} and "
                             "IOU in (0, 1]")
        thresholds[name] = iou
    return thresholds


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a GeoMIMForBEVDetection or GeoMIMForBEVSegmentation folder")
    parser.add_argument("--dataset", default="nuscenes", choices=["nuscenes", "waymo"])
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-trainval", help="nuScenes' version")
    parser.add_argument("--split", default="val", help="nuScenes' split, or a Waymo split folder (validation)")
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--score-threshold", type=float, default=0.05, help="boxes kept for the devkit")
    parser.add_argument("--iou-thresholds", nargs="+", default=None, metavar="CLASS=IOU",
                        help="--dataset waymo: LET-3D IoU thresholds replacing the release's (vehicle 0.5, pedestrian "
                             "0.3, cyclist 0.3) for the classes named; metrics.json records them, the model card "
                             "keeps the release's, so it needs an --output-dir beside the model")
    parser.add_argument("--plot", type=int, default=0, help="samples to draw")
    parser.add_argument("--plot-threshold", type=float, default=0.3, help="lowest box score drawn")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--mixed-precision", default="no", choices=["no", "fp16", "bf16"],
                        help="run the network under autocast; decoding and metrics stay in float32")
    parser.add_argument("--torch-compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                        help="torch.compile the model's fixed-shape regions (geomim_hf.training.compile_regions)")
    args = parser.parse_args(argv)

    output_dir = args.output_dir or args.model
    try:
        iou_thresholds = parse_iou_thresholds(args.iou_thresholds)
    except ValueError as error:
        parser.error(str(error))
    if iou_thresholds is not None and args.dataset != "waymo":
        parser.error("--iou-thresholds is Waymo's LET-3D-AP parameter: use it with --dataset waymo")
    if iou_thresholds not in (None, IOU_THRESHOLDS) and os.path.abspath(output_dir) == os.path.abspath(args.model):
        parser.error("--iou-thresholds other than the release's need an --output-dir: the model folder's "
                     "metrics.json and card hold the release's metric")
    os.makedirs(output_dir, exist_ok=True)
    model = load_bev_model(args.model).to(args.device).eval()
    if args.torch_compile:
        compile_regions(model, args.torch_compile)
    precision = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[args.mixed_precision]
    autocast = torch.autocast(torch.device(args.device).type, dtype=precision, enabled=precision is not None)
    segmenter = isinstance(model, GeoMIMForBEVSegmentation)
    waymo = args.dataset == "waymo"
    if waymo and segmenter:
        parser.error("--dataset waymo scores detectors: the Waymo release has no map to segment")
    processor = GeoMIMImageProcessor.from_pretrained(args.model)
    with autocast:
        if waymo:
            metrics = evaluate_waymo_detector(model, args.dataroot, args.split, processor, batch_size=args.batch_size,
                                              score_threshold=args.score_threshold, iou_thresholds=iou_thresholds)
        elif segmenter:
            metrics = evaluate_segmenter(model, args.dataroot, args.version, args.split, processor,
                                         batch_size=args.batch_size)
        else:
            metrics = evaluate_detector(model, args.dataroot, args.version, args.split, output_dir, processor,
                                        batch_size=args.batch_size, score_threshold=args.score_threshold)
    with open(os.path.join(output_dir, "metrics.json"), "w") as handle:
        json.dump(metrics, handle, indent=2)
    if os.path.abspath(output_dir) == os.path.abspath(args.model):  # the card beside the weights gets the results
        create_model_card(args.model, metrics=metrics, eval_version="v2" if waymo else args.version,
                          eval_split=args.split)  # the dataset follows from the metrics
    if args.plot:  # the first samples again, kept with their rows for the pictures
        rows = load_waymo(args.dataroot, args.split, classes=model.config.class_names, boxes="camera") if waymo \
            else load_nuscenes(args.dataroot, args.version, args.split, classes=model.config.class_names,
                               map_masks=segmenter)
        rows = rows.select(range(min(args.plot, len(rows))))
        if segmenter:
            probabilities = predict_map_segmentation(model, rows, processor, args.batch_size)
            pictures = [plot_map_segmentation(row, maps, os.path.join(output_dir, f"segmentation_{index}.png"),
                                              model.config.seg_class_names)
                        for index, (row, maps) in enumerate(zip(rows, probabilities))]
        else:
            predictions, _ = predict_detections(model, rows, processor, args.batch_size, args.score_threshold)
            pictures = [plot_detections(row, prediction, os.path.join(output_dir, f"detections_{index}.png"),
                                        model.config.class_names, score_threshold=args.plot_threshold)
                        for index, (row, prediction) in enumerate(zip(rows, predictions))]
        for picture in pictures:
            print(f"drew {picture}")
    print(f"results in {output_dir}")


if __name__ == "__main__":
    main()
