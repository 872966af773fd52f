"""The study's secondary Waymo score: every finished Waymo cell of a study folder scored again at IoU 0.1 for all
classes (``examples/evaluate.py --iou-thresholds``; the cell's own ``metrics.json`` keeps the release's 0.5 / 0.3),
one JSON per cell beside this file, then the table per arm: mean and 95% t-interval over seeds.

    python docs/study_cpu/waymo_loose/loose.py --study S [--record docs/study_cpu/record]

Why and when the threshold was chosen: ../README.md, the seventh session's section.
"""

import argparse
import glob
import json
import os
import re
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
sys.path.insert(0, os.path.join(REPO, "examples"))
from reproduce import t_interval  # noqa: E402

THRESHOLDS = ["vehicle=0.1", "pedestrian=0.1", "cyclist=0.1"]
PRIMARY = "LET-3D-APL/LEVEL_2"  # the release's thresholds, from the cell's own metrics.json
SECONDARY = ["LET-3D-AP/vehicle/LEVEL_2", "LET-3D-APL/vehicle/LEVEL_2", "LET-3D-APH/vehicle/LEVEL_2",
             "LET-3D-APL/LEVEL_2"]


def score_missing(study: str) -> None:
    for cell in sorted(glob.glob(os.path.join(study, "finetune", "*-waymo-seed*"))):
        name, path = os.path.basename(cell), os.path.join(HERE, os.path.basename(cell) + ".json")
        if os.path.isfile(path) or not os.path.isfile(os.path.join(cell, "metrics.json")):
            continue  # scored already, or still training
        scratch = os.path.join(study, "waymo_loose", name)
        subprocess.run([sys.executable, os.path.join(REPO, "examples", "evaluate.py"), "--model", cell, "--dataset",
                        "waymo", "--dataroot", os.path.join(study, "waymo"), "--split", "validation",
                        "--iou-thresholds", *THRESHOLDS, "--output-dir", scratch], check=True)
        with open(os.path.join(scratch, "metrics.json")) as handle:
            metrics = json.load(handle)
        with open(path + ".partial", "w") as handle:
            json.dump(metrics, handle, indent=2)
        os.replace(path + ".partial", path)


def table(record: str) -> str:
    cells: dict[str, list[tuple[dict, dict]]] = {}
    for path in sorted(glob.glob(os.path.join(HERE, "*-waymo-seed*.json"))):
        arm = re.match(r"(.+)-waymo-seed\d+\.json", os.path.basename(path)).group(1)
        with open(path) as handle:
            loose = json.load(handle)
        with open(os.path.join(record, "finetune", os.path.basename(path)[:-5], "metrics.json")) as handle:
            release = json.load(handle)
        cells.setdefault(arm, []).append((release, loose))
    lines = ["| arm | seeds | LET-3D-APL L2 (release) | at IoU 0.1: vehicle AP L2 | vehicle APL L2 | vehicle APH L2 "
             "| APL L2, class mean |", "|---|---|---|---|---|---|---|"]
    for arm, rows in cells.items():
        values = [t_interval([release[PRIMARY] for release, _ in rows])]
        values += [t_interval([loose[key] for _, loose in rows]) for key in SECONDARY]
        shown = [f"{mean:.4f}" + (f" ± {half:.4f}" if half == half else "") for mean, half in values]
        lines.append(f"| {arm} | {len(rows)} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--study", required=True, help="the study's --out folder (finetune/, waymo/)")
    parser.add_argument("--record", default=os.path.join(HERE, "..", "record"))
    args = parser.parse_args()
    score_missing(args.study)
    print(table(args.record))
