"""What GeoMIM pretraining buys, measured: every arm of the paper's comparison, every protocol, 3 seeds.

    python examples/reproduce.py --out outputs/study --budget smoke             # minutes: the machinery
    python examples/reproduce.py --out outputs/study --budget cpu --seeds 0 1 2 # the study on 2 CPU cores
    python examples/reproduce.py --out outputs/study --budget cpu --max-stages 6   # ... in pieces

Stages, each the example script a user runs (printed before it starts), skipped when its result is
already in ``--out``, so any stop continues where it was:

1. a synthetic nuScenes ``v1.0-trainval`` world; the devkit's splits give ``train`` / ``val`` and,
   inside ``train``, ``train_track`` / ``train_detect`` (the held-out training scenes on which the
   finetuning recipe is chosen; ``train_detect`` is also the label-efficiency subset);
2. the LiDAR teacher on ``train``, scored on ``val``; its BEV features cached for pretraining;
3. the pretraining recipe search, the same candidates for both pretrained main arms (learning rate and
   warmup around the official 2e-4 with 500 warmup steps): ``pixel`` and then ``geomim`` (from ``pixel``'s
   chosen encoder) pretrain on ``train_track`` and are scored by their objective's loss on
   ``train_detect``; each takes its candidate of lowest held-out loss, the secondary arms take ``geomim``'s.
   Then pretraining of every arm and seed on ``train`` with its recipe, run when a finetuning stage first
   needs it (no labels reach the camera encoder): ``pixel`` (MixMAE-style pixels), ``depth`` (LiDAR depth
   alone), ``geomim`` and its ablations ``geomim-no-cva``, ``geomim-no-depth-branch``,
   ``geomim-masked-loss``; ``random`` has none. A pretrained arm's pretraining, search and finetuning
   folders carry its pretraining recipe in their names, so cells of another recipe are never reused;
4. the finetuning recipe search, the same effort for every main arm: each searched recipe finetunes
   ``random``, ``pixel`` and ``geomim`` (seed 0) on ``train_track`` and is scored on
   ``train_detect``; each arm gets the recipe of its best held-out NDS (never chosen on ``val``),
   and the secondary arms (``depth`` and GeoMIM's ablations) get ``geomim``'s;
5. finetuning cells, arm x protocol x seed, scored by the devkit on ``val``:
   ``full`` (the whole detector trains on ``train``, scored also at the learning curve's steps),
   ``probe`` (the encoder frozen, the rest trains on ``train``) and ``label`` (full finetuning on
   ``train_detect``, a quarter of the labelled scenes); and ``segment``, BEV map segmentation
   (``finetune_segmentation.py`` on ``train``, BEVFusion's mIoU on ``val``), with one recipe for every
   arm (``SEGMENT_RECIPE``, not searched). The main comparison (``random``, ``pixel``, ``geomim`` under
   ``full``, ``probe``, ``segment`` and ``waymo``) runs first, on every seed; the secondary cells
   (``label``, and the probe of ``depth`` and of the ablations) follow, on the budget's first
   ``secondary_seeds``;
6. ``waymo``, the transfer (a main protocol, every seed): a synthetic Waymo v2 world (its own rig of five
   cameras of two sizes, three classes), written when its first cell needs it; each main arm's detector
   finetuned on its ``training`` segments from the nuScenes-world encoder, with the arm's recipe from the
   search above, and scored with LET-3D-AP/APL/APH on its ``validation`` segments.

``OUT/results.json`` (every cell, per arm, protocol and step the mean and 95% t-interval over seeds,
and each arm's differences from random init and pixel MIM paired by seed), ``OUT/results.md`` (the
tables) and ``OUT/learning_curve.png`` are rewritten after every stage. ``--arms``, ``--protocols`` and
``--seeds`` choose what runs, not what is reported: the tables, the searches and the chosen recipes always
cover every finished cell in ``--out`` and the record, so a run of a few arms or seeds never drops the others.

``--record DIR`` keeps the study across machines that keep nothing but the repository: every finished
stage's small results (metrics, learning curves, summaries, loss histories, and the LiDAR teacher's
weights, about 1 MB) are copied to ``DIR`` along with the tables, and copied back into ``--out`` on the
next run, so a study run in pieces on fresh machines goes on where it was. ``DIR`` is what you commit.
Of a pretraining the encoder is recorded (``encoder.safetensors``, the weights finetuning loads: 6 MB at
``geomim-small``), not the decoder, and restored as the pretraining's ``model.safetensors``, so a later
machine finetunes from the same encoder without pretraining again; a pretraining run again (its encoder
removed from the record) that does not reproduce the recorded encoder says so. The world is rewritten
from its seed (with one BLAS kernel, so that it is the same on every x86 machine); the sha256 of its tables and
of its first LiDAR sweep and image are recorded, and a world that differs is refused. Each stage keeps the
script and arguments it was begun with (``stage.json``, its folders named by role: ``$OUT``, ``$WORLD``, ...),
and a stage begun or recorded with other settings than the run gives it (a recipe or budget changed since) is
refused before anything runs, so an old cell never reaches the tables under a new recipe.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from quickstart import run_stage  # noqa: E402  (the sibling example script)

from geomim_hf.data.classes import MAP_CLASSES, WAYMO_CLASSES  # noqa: E402

VERSION = "v1.0-trainval"
REPORTED = ("NDS", "mAP", "mATE", "mASE", "mAOE", "mAVE", "mAAE")
SEGMENT_REPORTED = ("mIoU", *(f"IoU/{name}" for name in MAP_CLASSES))  # BEVFusion's map-segmentation scores
# Waymo's camera-only scores (class means, then APL per class), LEVEL_2 first as the release ranks by it.
WAYMO_REPORTED = (*(f"{metric}/LEVEL_{level}" for level in (2, 1) for metric in ("LET-3D-APL", "LET-3D-AP",
                                                                                  "LET-3D-APH")),
                  *(f"LET-3D-APL/{name}/LEVEL_2" for name in WAYMO_CLASSES))
BASELINES = ("random", "pixel")  # the paper's: no pretraining, and the generic self-supervised init
ARMS = {  # the pretraining flags of each arm; random has no pretraining
    "random": None,
    "pixel": ["--objective", "pixel"],
    "depth": ["--objective", "depth"],
    "geomim": ["--objective", "geomim"],
    "geomim-scratch": ["--objective", "geomim"],  # from random weights; see PRETRAINED_FROM
    "geomim-no-cva": ["--objective", "geomim", "--no-cross-view"],
    "geomim-no-depth-branch": ["--objective", "geomim", "--no-depth-branch"],
    "geomim-masked-loss": ["--objective", "geomim", "--loss-region", "masked"],
}
# The official GeoMIM starts its encoder from MixMAE's pixel MIM; here every GeoMIM-type arm starts from the pixel
# arm's encoder of its seed (our world's stand-in for MixMAE on ImageNet). geomim-scratch starts from random weights.
PRETRAINED_FROM = {arm: "pixel" for arm in ARMS if arm not in ("random", "pixel", "geomim-scratch")}
MAIN_ARMS = ("random", "pixel", "geomim")  # the paper's comparison; the target is stated on these
PROTOCOLS = {  # train split, evaluation split, frozen encoder
    "full": ("train", "val", False),
    "probe": ("train", "val", True),
    "label": ("train_detect", "val", False),
    "segment": ("train", "val", False),  # BEV map segmentation, examples/finetune_segmentation.py
    "waymo": ("train", "val", False),  # the Waymo world's training / validation segments
}
# The Waymo world's components whose rows are fingerprinted in the record (the images and range images follow
# from them and the seed).
WAYMO_TABLES = ("camera_calibration", "lidar_calibration", "vehicle_pose", "lidar_box", "lidar_camera_synced_box")
# The finetuning recipes searched. "light" drops what the diagnosis found to hurt short runs (CBGS, the
# previous frame, EMA, layer decay, drop path); "light-layer-decay" keeps the official layer-wise lr decay
# (0.8), which protects a pretrained encoder's early blocks; "official" keeps BEVDet's recipe.
LIGHT = ["--no-cbgs", "--no-temporal", "--ema-decay", "0", "--drop-path-rate", "0"]
RECIPES = {
    "light": [*LIGHT, "--layer-decay", "1.0"],
    "light-layer-decay": [*LIGHT, "--layer-decay", "0.8"],
    "official": [],
}
# Map segmentation's recipe, the same for every arm and not searched (the search is the detector's): light at
# the learning rate the search chose for random init and GeoMIM.
SEGMENT_RECIPE = {"recipe": "light", "learning_rate": 2e-3}

# A finished stage's files that later stages, the tables or a reader need, copied to --record; the teacher's
# weights too (cached features and every geomim pretraining need it). Of a pretraining only the encoder is
# kept: the decoder is three quarters of its weights and no finetuning reads it.
RECORDED = ("metrics.json", "learning_curve.json", "training_summary.json", "pretrain_summary.json",
            "loss_history.jsonl", "stage.json")
SETTINGS = "stage.json"  # the script and arguments a stage was begun with
TEACHER_WEIGHTS = ("config.json", "model.safetensors")
ENCODER = "encoder.safetensors"
# OpenBLAS's kernel for writing the world (any x86-64 CPU with AVX2 runs it): the one the record's world used.
WORLD_BLAS_KERNEL = "Haswell"


@dataclass(frozen=True)
class Budget:
    scenes: int
    samples_per_scene: int
    teacher_steps: int
    pretrain_steps: int
    finetune_steps: int
    curve: tuple[int, ...]  # extra learning-curve steps of the full protocol
    search: tuple[tuple[str, float], ...]  # (recipe, learning rate) pairs searched
    preset: str = "geomim-tiny"  # the camera model of every arm
    out_indices: tuple[int, ...] = ()  # encoder stages the detector reads, when not the preset's
    secondary_seeds: int | None = None  # how many of --seeds run the secondary cells (None: all)
    # The Waymo world of the transfer: segments x frames (10 Hz), the first validation_segments for validation.
    waymo_segments: int = 3
    waymo_frames: int = 2
    waymo_validation_segments: int = 1
    batch_size: int = 2
    checkpointing_steps: int = 200
    workers: int = 2
    # The pretraining recipe search: (learning rate, warmup steps) candidates, each pretraining on train_track for
    # pretrain_search_steps, scored on train_detect.
    pretrain_search: tuple[tuple[float, int], ...] = ((2e-4, 500),)
    pretrain_search_steps: int = 1500
    extra: dict = field(default_factory=dict)


BUDGETS = {
    "smoke": Budget(scenes=6, samples_per_scene=2, teacher_steps=10, pretrain_steps=4, finetune_steps=4, curve=(2,),
                    search=(("light", 1e-3),), checkpointing_steps=0, workers=0, pretrain_search=((1e-3, 2),),
                    pretrain_search_steps=4),
    # 128 x 352 with stride-8 features over 1500 steps: the first setting whose random-init detector learned on
    # held-out scenes (docs/study_cpu). About 15 min per finetuning cell on 2 cores. 3000 pretraining steps
    # (about 40 min): at 1000 the GeoMIM encoder had only begun to beat an image-blind prediction of its target
    # on held-out scenes (docs/study_cpu, "Pretraining length"). Pretraining candidates: lr 1e-3 with 50 warmup
    # steps left pixel MIM's encoder collapsed where the official 2e-4 with 500 did not (docs/study_cpu,
    # "pretrain_recipe"); the search brackets the official value, and was extended to 1e-3 (500 warmup) when pixel
    # MIM came out best at 5e-4, the grid's edge, before any GeoMIM candidate ran, and to 2e-3 when GeoMIM came
    # out best at 1e-3 (both arms get every candidate). The finetuning search got light lr 5e-4 (gpu's lowest) when
    # pixel MIM, under its searched pretraining, came out best at lr 1e-3, the grid's low edge, for every arm alike.
    # Run it in pieces (--max-stages).
    "cpu": Budget(scenes=40, samples_per_scene=10, teacher_steps=1500, pretrain_steps=3000, finetune_steps=1500,
                  curve=(375, 750, 1125),
                  search=(("light", 5e-4), ("light", 1e-3), ("light", 2e-3), ("light-layer-decay", 1e-3)),
                  preset="geomim-small", out_indices=(1, 2, 3), secondary_seeds=1,
                  pretrain_search=((1e-4, 500), (2e-4, 500), (5e-4, 500), (1e-3, 500), (2e-3, 500)),
                  pretrain_search_steps=1500,
                  # Waymo: 64 segments of 5 frames (many short segments: frames 0.1 s apart are near repeats);
                  # 240 training frames, 80 validation frames.
                  waymo_segments=64, waymo_frames=5, waymo_validation_segments=16),
    "gpu": Budget(scenes=80, samples_per_scene=10, teacher_steps=3000, pretrain_steps=3000, finetune_steps=2000,
                  curve=(250, 500, 1000), search=(("light", 5e-4), ("light", 1e-3), ("light", 2e-3),
                                                  ("light-layer-decay", 1e-3), ("official", 1e-3)),
                  preset="geomim-small", out_indices=(1, 2, 3), batch_size=4, workers=8,
                  pretrain_search=((1e-4, 500), (2e-4, 500), (5e-4, 500), (1e-3, 500), (2e-3, 500)),
                  pretrain_search_steps=1500,
                  waymo_segments=128, waymo_frames=5, waymo_validation_segments=32),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output folder (resumable)")
    parser.add_argument("--budget", default="smoke", choices=sorted(BUDGETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--max-stages", type=int, default=None,
                        help="stop after running this many stages (a piece of the study; run again to go on); 0 "
                        "only rewrites the tables from the cells found")
    parser.add_argument("--world", default=None, help="an existing synthetic v1.0-trainval world to use")
    parser.add_argument("--teacher", default=None, help="an existing teacher folder (with metrics.json) to use")
    parser.add_argument("--record", default=None,
                        help="folder to commit: finished stages' results and the teacher are copied there and back "
                             "into --out on the next run, so the study goes on from a fresh clone")
    return parser.parse_args(argv)


def is_main(arm: str, protocol: str) -> bool:
    """The main comparison: random init, pixel MIM and GeoMIM under full finetuning, the frozen probe, map
    segmentation and the Waymo transfer. The rest (label efficiency, the depth-only target, GeoMIM's ablations)
    is secondary."""
    return arm in MAIN_ARMS and protocol in ("full", "probe", "segment", "waymo")


def reported(protocol: str) -> tuple[str, ...]:
    """The scores of a protocol's cells: the devkit's detection metrics, map segmentation's IoU, or Waymo's
    LET-3D metrics."""
    return {"segment": SEGMENT_REPORTED, "waymo": WAYMO_REPORTED}.get(protocol, REPORTED)


def headline(protocol: str) -> tuple[str, ...]:
    """The scores each arm is compared on with the baselines, seed by seed (``paired_differences``)."""
    return {"segment": ("mIoU",), "waymo": ("LET-3D-APL/LEVEL_2",)}.get(protocol, ("NDS", "mAP", "mATE"))


def table_columns(protocol: str) -> tuple[str, ...]:
    """The scores of a protocol in results.md (every reported score but the devkit's last TP errors)."""
    return REPORTED[:5] if reported(protocol) is REPORTED else reported(protocol)


def cells(args, budget: Budget):
    """Every finetuning cell of the study as (arm, protocol, seed). The main comparison comes first, seed by
    seed, so that a study run in pieces has whole seeds of it early; then the secondary cells, on the first
    ``budget.secondary_seeds`` seeds. The ablations and the depth-only arm run the probe only."""
    secondary_seeds = args.seeds[:budget.secondary_seeds]
    for main in (True, False):
        for seed in args.seeds if main else secondary_seeds:
            for protocol in args.protocols:
                for arm in args.arms:
                    if is_main(arm, protocol) != main or (arm not in MAIN_ARMS and protocol != "probe"):
                        continue
                    yield arm, protocol, seed


def t_interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of the two-sided 95% Student-t interval (half-width NaN for one value)."""
    from scipy import stats

    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, math.nan
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * std / math.sqrt(len(values))


def paired_differences(found: list[dict]) -> list[dict]:
    """Every arm against each baseline, seed by seed: at a protocol's last step, on the seeds both finished, the
    difference (arm - baseline) of each headline score, its mean and 95% t-interval. A seed gives every arm the
    same finetuning data order and augmentation, so pairing by seed removes that part of the seed-to-seed noise
    that separate intervals keep. ``found``: the rows of ``collect``'s "cells"."""
    last = {}
    for row in found:
        last[row["protocol"]] = max(last.get(row["protocol"], 0), row["steps"])
    score = {(r["arm"], r["protocol"], r["seed"]): r for r in found if r["steps"] == last[r["protocol"]]}
    order = list(ARMS)
    differences = []
    for protocol in dict.fromkeys(r["protocol"] for r in found):
        arms = sorted({a for a, p, _ in score if p == protocol}, key=order.index)
        for baseline in (b for b in BASELINES if b in arms):
            # Each pair once: against pixel MIM, random init is not an arm (pixel - random is already there).
            for arm in (a for a in arms if a not in BASELINES[:BASELINES.index(baseline) + 1]):
                seeds = sorted(s for a, p, s in score if a == arm and p == protocol
                               and (baseline, protocol, s) in score)
                if not seeds:
                    continue
                entry = {"arm": arm, "baseline": baseline, "protocol": protocol, "steps": last[protocol],
                         "seeds": seeds}
                for key in headline(protocol):
                    per_seed = [score[arm, protocol, s][key] - score[baseline, protocol, s][key] for s in seeds]
                    mean, half = t_interval(per_seed)
                    entry[key] = {"mean": mean, "ci95": half, "per_seed": per_seed}
                differences.append(entry)
    return differences


def choose_recipes(scores: dict, search_arms, arms, criterion: str = "held_out_NDS", lowest: bool = False) -> dict:
    """Each searched arm's recipe of best held-out ``criterion`` (highest, or ``lowest``), once every candidate
    has scored it; the arms of ``arms`` not searched take geomim's. ``scores``: {candidate: {the recipe's
    settings, "held_out_<score>": {arm: score}, ...}}; a recipe is its candidate's settings."""
    recipes = {}
    for arm in search_arms:
        if all(arm in score[criterion] for score in scores.values()):
            best = (min if lowest else max)(scores.values(), key=lambda score: score[criterion][arm])
            recipes[arm] = {key: value for key, value in best.items() if not key.startswith("held_out_")}
    if "geomim" in recipes:
        recipes.update({arm: recipes["geomim"] for arm in arms if arm not in search_arms})
    return recipes


def read_json(path: str) -> dict | None:
    return json.load(open(path)) if os.path.isfile(path) else None


def stage_settings(script: str, arguments: list[str], roots: dict[str, str]) -> dict:
    """What a stage runs: its script and arguments, each folder under one of ``roots`` ({"$WORLD": dataroot, ...},
    tried in order) named by its root, so that the same study under another ``--out`` or machine agrees."""
    def named(value: str) -> str:
        for name, root in roots.items():
            root = root.rstrip(os.sep)
            if value == root or value.startswith(root + os.sep):
                return name + value[len(root):]
        return value

    return {"script": script, "arguments": [named(value) for value in arguments]}


def flag_values(arguments: list[str]) -> dict[str, list[str]]:
    """{--flag: its values} of a command line (positional values before any flag under "")."""
    found, flag = {}, ""
    for value in arguments:
        if value.startswith("--"):
            flag = value
            found.setdefault(flag, [])
        else:
            found.setdefault(flag, []).append(value)
    return found


def check_settings(output_dir: str, settings: dict) -> bool:
    """Refuse a stage begun or finished with other settings than this run gives it: a changed recipe or budget
    must never reach the tables under an old cell's name. A stage's folder without them (begun before they were
    kept) takes this run's. Returns whether it wrote them."""
    path = os.path.join(output_dir, SETTINGS)
    found = read_json(path)
    if found is None:
        if not os.path.isdir(output_dir):
            return False
        with open(path + ".partial", "w") as handle:
            json.dump(settings, handle, indent=2)
        os.replace(path + ".partial", path)
        return True
    if found != settings:
        old, new = flag_values(found["arguments"]), flag_values(settings["arguments"])
        differ = [f"{flag or 'positional'} {old.get(flag)} (now {new.get(flag)})" for flag in sorted({*old, *new})
                  if old.get(flag) != new.get(flag)]
        if found["script"] != settings["script"]:
            differ.insert(0, f"script {found['script']} (now {settings['script']})")
        raise SystemExit(f"{output_dir} was begun with other settings than this run gives it: {'; '.join(differ)} "
                         f"({path}). Move the folder (and its copy in the record) away to make it again with these "
                         "settings, or run with the ones it was made with")
    return False


def pretrain_tag(chosen: dict) -> str:
    """A pretraining recipe in folder names."""
    return f"lr{chosen['learning_rate']:g}-w{chosen['warmup_steps']}"


def arm_name(arm: str, pretrain_recipes: dict) -> str | None:
    """An arm in folder names: a pretrained arm's carries its pretraining recipe (None before it is chosen), so
    that the cells of two pretraining recipes never mix."""
    if ARMS[arm] is None:
        return arm
    return f"{arm}-{pretrain_tag(pretrain_recipes[arm])}" if arm in pretrain_recipes else None


def finetune_cell(arm: str, protocol: str, seed: int, pretrain_recipes: dict) -> str | None:
    """A finetuning cell's folder under ``OUT/finetune`` (None before the arm's pretraining recipe is chosen)."""
    name = arm_name(arm, pretrain_recipes)
    return name and f"{name}-{protocol}-seed{seed}"


def read_finished(out: str, record: str | None, relative: str) -> dict | None:
    """A stage's result file under ``out``, or else in the record (a stage this run does not restore)."""
    return read_json(os.path.join(out, relative)) or (read_json(os.path.join(record, relative)) if record else None)


def whole_study(args, out: str, budget: Budget) -> list[tuple[str, str, int]]:
    """Every cell the tables report, in one order whatever ran: every arm and protocol, on the seeds of ``--seeds``
    and of every finetuning cell in ``out`` or the record, the secondary cells on every seed (a run's --seeds need
    not begin with the seed that ran them). A run of a few arms or seeds then rewrites the tables whole."""
    seeds = set(args.seeds)
    for root in (out, *([args.record] if args.record else [])):
        folder = os.path.join(root, "finetune")
        for name in os.listdir(folder) if os.path.isdir(folder) else ():
            match = re.fullmatch(r".*-seed(\d+)", name)
            seeds.update([int(match.group(1))] if match else [])
    whole = argparse.Namespace(**{**vars(args), "arms": list(ARMS), "protocols": list(PROTOCOLS),
                                  "seeds": sorted(seeds)})
    return list(cells(whole, replace(budget, secondary_seeds=None)))


def collect(out: str, args, budget: Budget, recipes: dict | None, pretrain_recipes: dict) -> dict:
    """results.json: the cells finished so far (in ``out`` or the record) and their per-arm summaries, for every
    cell of ``whole_study``."""
    found = []
    for arm, protocol, seed in whole_study(args, out, budget):
        name = finetune_cell(arm, protocol, seed, pretrain_recipes)
        curve = name and read_finished(out, args.record, os.path.join("finetune", name, "learning_curve.json"))
        for step, metrics in (curve or {}).items():
            found.append({"arm": arm, "protocol": protocol, "seed": seed, "steps": int(step),
                          **{k: metrics[k] for k in reported(protocol)}})
    summary = {}
    for row in found:
        summary.setdefault((row["arm"], row["protocol"], row["steps"]), []).append(row)
    summaries = []
    order = list(ARMS)
    for (arm, protocol, steps), rows in sorted(summary.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1:])):
        entry = {"arm": arm, "protocol": protocol, "steps": steps, "seeds": sorted(r["seed"] for r in rows)}
        for key in reported(protocol):
            mean, half = t_interval([r[key] for r in rows])
            entry[key] = {"mean": mean, "ci95": half}
        summaries.append(entry)
    teacher = read_json(os.path.join(teacher_dir(out, args), "metrics.json"))
    return {"budget": args.budget, "budget_settings": {k: v for k, v in vars(budget).items() if k != "extra"},
            "version": VERSION, "teacher": {k: teacher[k] for k in ("NDS", "mAP")} if teacher else None,
            "pretrain_recipes": pretrain_recipes,
            "pretrain_search": read_finished(out, args.record, os.path.join("search", "pretrain_search.json")),
            "recipes": recipes, "search": read_finished(out, args.record, os.path.join("search", "search.json")),
            "cells": found, "summary": summaries, "differences": paired_differences(found)}


def write_results(out: str, results: dict, record: str | None = None) -> None:
    for folder in (out, record) if record else (out,):
        os.makedirs(folder, exist_ok=True)
        for name, text in (("results.json", json.dumps(results, indent=2)),
                           ("results.md", results_markdown(results))):
            with open(os.path.join(folder, name + ".partial"), "w") as handle:
                handle.write(text)
            os.replace(os.path.join(folder, name + ".partial"), os.path.join(folder, name))
        if any(entry["protocol"] == "full" for entry in results["summary"]):
            plot_learning_curve(results, os.path.join(folder, "learning_curve.png"))


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def copy_files(source: str, target: str, names, overwrite: bool, renamed: dict | None = None) -> None:
    """Copy the ``names`` present in ``source`` to ``target`` (as ``renamed[name]`` where given), each atomically
    (a stop never leaves half a file)."""
    for name in names:
        target_name = (renamed or {}).get(name, name)
        if os.path.isfile(os.path.join(source, name)) and \
                (overwrite or not os.path.isfile(os.path.join(target, target_name))):
            os.makedirs(target, exist_ok=True)
            shutil.copyfile(os.path.join(source, name), os.path.join(target, target_name + ".partial"))
            os.replace(os.path.join(target, target_name + ".partial"), os.path.join(target, target_name))


def save_encoder(model: str, path: str) -> None:
    """Write the encoder's tensors of a pretraining's ``model`` (the ``geomim.`` keys, all that
    ``GeoMIMForBEVDetection.from_pretrained`` loads from it) to ``path``, atomically."""
    from safetensors.torch import load_file, save_file

    from geomim_hf import GeoMIMPreTrainedModel

    prefix = GeoMIMPreTrainedModel.base_model_prefix + "."
    encoder = {key: value for key, value in load_file(model).items() if key.startswith(prefix)}
    save_file(encoder, path + ".partial", metadata={"format": "pt"})
    os.replace(path + ".partial", path)


def same_tensors(path_a: str, path_b: str) -> bool:
    from safetensors.torch import load_file

    a, b = load_file(path_a), load_file(path_b)
    return a.keys() == b.keys() and all(a[key].dtype == b[key].dtype and a[key].equal(b[key]) for key in a)


def record_stage(output_dir: str, recorded: str, done_file: str, restorable: bool, weights=(),
                 encoder: bool = False) -> None:
    """Keep a stage in the record: copy a recorded stage back into ``output_dir`` when that lacks it (if it is
    ``restorable``), and copy a finished stage's results and ``weights`` into ``recorded``. Of a pretraining
    (``encoder``) the encoder is recorded and restored as its ``model.safetensors``; a pretraining run again
    that does not reproduce the recorded encoder is reported."""
    done = os.path.join(output_dir, done_file)
    if not os.path.isfile(done):
        if restorable:
            copy_files(recorded, output_dir, (*RECORDED, *weights), overwrite=False)
        elif encoder and os.path.isfile(os.path.join(recorded, ENCODER)) and \
                os.path.isfile(os.path.join(recorded, done_file)):
            copy_files(recorded, output_dir, ("config.json", ENCODER), overwrite=True)
            copy_files(recorded, output_dir, (ENCODER,), overwrite=True, renamed={ENCODER: "model.safetensors"})
            copy_files(recorded, output_dir, [name for name in RECORDED if name != done_file], overwrite=True)
            copy_files(recorded, output_dir, (done_file,), overwrite=True)  # last: the stage is done once it is there
    if not os.path.isfile(done):
        return
    if encoder and not os.path.isfile(os.path.join(output_dir, ENCODER)):
        save_encoder(os.path.join(output_dir, "model.safetensors"), os.path.join(output_dir, ENCODER))
    if encoder and os.path.isfile(os.path.join(recorded, ENCODER)) and \
            not same_tensors(os.path.join(output_dir, ENCODER), os.path.join(recorded, ENCODER)):
        print(f"note: {output_dir} did not reproduce the recorded encoder bit for bit; the cells finetuned from "
              "now on use this one, and the record keeps it", flush=True)
    copy_files(output_dir, recorded, (*RECORDED, *weights, *(("config.json", ENCODER) if encoder else ())),
               overwrite=True)


def pixels_sha256(image) -> str:
    """The sha256 of an image's decoded RGB pixels (a path or a file object): the JPEG's bytes also name the
    encoder, its pixels are what the cameras saw."""
    from PIL import Image

    with Image.open(image) as opened:
        return hashlib.sha256(np.asarray(opened.convert("RGB")).tobytes()).hexdigest()


def nuscenes_fingerprint(dataroot: str, version: str = VERSION) -> dict:
    """The sha256 of each table of the nuScenes world, and of the first keyframe's LiDAR sweep and front image:
    the tables alone do not change when only the renderer does."""
    tables = os.path.join(dataroot, version)
    found = {name: sha256(os.path.join(tables, name)) for name in sorted(os.listdir(tables)) if name.endswith(".json")}
    files = [row["filename"] for row in json.load(open(os.path.join(tables, "sample_data.json")))]
    lidar = min(name for name in files if name.startswith("samples/LIDAR_TOP/"))
    camera = min(name for name in files if name.startswith("samples/CAM_FRONT/"))
    found[lidar] = sha256(os.path.join(dataroot, lidar))
    found[f"{camera} (pixels)"] = pixels_sha256(os.path.join(dataroot, camera))
    return found


def waymo_fingerprint(root: str) -> dict:
    """The sha256 of the rows of each split's ``WAYMO_TABLES`` in the Waymo world (of the rows, not the parquet
    bytes, which name the pyarrow version that wrote them)."""
    import pyarrow.parquet as pq

    found = {}
    for split in ("training", "validation"):
        for component in WAYMO_TABLES:
            folder = os.path.join(root, split, component)
            if not os.path.isdir(folder):
                continue
            digest = hashlib.sha256()
            for name in sorted(os.listdir(folder)):
                rows = pq.read_table(os.path.join(folder, name)).to_pylist()
                digest.update(name.encode() + json.dumps(rows, sort_keys=True).encode())
            found[f"{split}/{component}"] = digest.hexdigest()
        folder = os.path.join(root, split, "camera_image")
        if os.path.isdir(folder):  # the first image of the split's first segment
            table = pq.read_table(os.path.join(folder, sorted(os.listdir(folder))[0]))
            first = table.column("[CameraImageComponent].image")[0].as_py()
            found[f"{split}/camera_image (pixels of the first)"] = pixels_sha256(io.BytesIO(first))
    return found


def check_world(found: dict, path: str, where: str) -> None:
    """Record a world's fingerprint (``found``: {table: sha256}) at ``path``, or refuse a world that differs from
    the recorded one: cells made on two different worlds must never be mixed in one table. Entries the record
    lacks (a fingerprint recorded before they existed) are added when the rest agrees."""
    if os.path.isfile(path):
        recorded = json.load(open(path))
        changed = sorted(name for name in recorded if found.get(name) != recorded[name])
        if changed:
            raise SystemExit(f"the world in {where} is not the one recorded in {path} (tables {changed} differ): "
                             "rewrite it from the same seed and code, or record to a new --record folder")
        if set(found) <= set(recorded):
            return
        print(f"note: {path} did not hold {sorted(set(found) - set(recorded))}; recorded from this world, whose "
              "other entries agree", flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as handle:
        json.dump(found, handle, indent=2)


def write_world(format_name: str, out: str, arguments: list[str]) -> None:
    """Write a synthetic world (seed 0) with ``python -m geomim_hf.synthetic``. The simulator's poses go through
    numpy's BLAS, whose kernel (picked per CPU) changes their last bits: one kernel on every machine keeps the
    world's tables bit for bit the recorded ones."""
    subprocess.run([sys.executable, "-m", "geomim_hf.synthetic", "--format", format_name, "--out", out, *arguments,
                    "--seed", "0", "--overwrite"], check=True, env={**os.environ, "OPENBLAS_CORETYPE": WORLD_BLAS_KERNEL})


def recipe_name(chosen: dict) -> str:
    return f"{chosen['recipe']} lr {chosen['learning_rate']:g}"


def pretrain_recipe_name(chosen: dict) -> str:
    return f"lr {chosen['learning_rate']:g}, {chosen['warmup_steps']} warmup"


def _cell(entry: dict, key: str, signed: bool = False) -> str:
    mean, half = entry[key]["mean"], entry[key]["ci95"]
    mean = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    return mean if math.isnan(half) else f"{mean} ± {half:.3f}"


def results_markdown(results: dict) -> str:
    lines = [f"# GeoMIM study, budget `{results['budget']}`", ""]
    if results["teacher"]:
        lines.append(f"LiDAR teacher on val: NDS {results['teacher']['NDS']:.3f}, mAP {results['teacher']['mAP']:.3f}.")
    if results.get("pretrain_search"):
        candidates = list(results["pretrain_search"])
        lines += ["", "Pretraining recipe search, the same for both pretrained main arms: pretrained on train_track "
                  f"({results['budget_settings']['pretrain_search_steps']} steps), the objective's loss on the "
                  "held-out training scenes of train_detect (lower is better; in brackets the reconstruction "
                  "loss / its image-blind baseline); each arm takes its lowest, the secondary arms geomim's.", "",
                  "| arm | " + " | ".join(candidates) + " | chosen |", "|---|" + "---|" * (len(candidates) + 1)]
        for arm in dict.fromkeys(arm for score in results["pretrain_search"].values()
                                 for arm in score["held_out_loss"]):
            row = []
            for score in results["pretrain_search"].values():
                if arm in score["held_out_loss"]:
                    row.append(f"{score['held_out_loss'][arm]:.3f} ({score['held_out_reconstruction_loss'][arm]:.3f}"
                               f" / {score['held_out_reconstruction_baseline'][arm]:.3f})")
                else:
                    row.append("")
            chosen = results["pretrain_recipes"].get(arm)
            lines.append(f"| {arm} | " + " | ".join(row) + f" | {pretrain_recipe_name(chosen) if chosen else ''} |")
    if results["search"]:
        candidates = list(results["search"])
        lines += ["", "Recipe search, the same for every main arm: finetuned on train_track, NDS on the held-out "
                  "training scenes of train_detect (never val); each arm takes its best, the secondary arms "
                  "geomim's.", "", "| arm | " + " | ".join(candidates) + " | chosen |",
                  "|---|" + "---|" * (len(candidates) + 1)]
        for arm, chosen in results["recipes"].items():
            if arm in MAIN_ARMS:
                lines.append(f"| {arm} | " + " | ".join(f"{results['search'][c]['held_out_NDS'][arm]:.3f}"
                                                       for c in candidates) + f" | {recipe_name(chosen)} |")
    lines += ["", "Mean ± half-width of the 95% t-interval over seeds, on val: detection by the devkit "
              "(`detection_cvpr_2019`); `segment` by BEVFusion's map-segmentation IoU (per class the best of "
              f"thresholds 0.35-0.65), every arm with the recipe {recipe_name(SEGMENT_RECIPE)}; `waymo` "
              "finetuned on the synthetic Waymo world's training segments with each arm's recipe above, LET-3D "
              "metrics (Waymo's camera-only evaluation) on its validation segments.", ""]
    final = {}
    for entry in results["summary"]:
        final.setdefault(entry["protocol"], {})
        previous = final[entry["protocol"]].get(entry["arm"])
        if previous is None or entry["steps"] > previous["steps"]:
            final[entry["protocol"]][entry["arm"]] = entry
    for protocol, arms in final.items():
        keys = table_columns(protocol)
        lines += [f"## {protocol}", "", "| arm | steps | seeds | " + " | ".join(keys) + " |",
                  "|---|---|---|" + "---|" * len(keys)]
        for arm, entry in arms.items():
            lines.append(f"| {arm} | {entry['steps']} | {len(entry['seeds'])} | "
                         + " | ".join(_cell(entry, k) for k in keys) + " |")
        lines.append("")
    if results.get("differences"):
        lines += ["## paired by seed: arm - baseline", "",
                  "Per seed, the arm's score minus the baseline's at the protocol's last step (lower is better for "
                  "mATE); mean ± half-width of the 95% t-interval of the differences, then each seed's.", "",
                  "| protocol | arm - baseline | seeds | score | difference | per seed |", "|---|---|---|---|---|---|"]
        for entry in results["differences"]:
            for key in headline(entry["protocol"]):
                lines.append(f"| {entry['protocol']} | {entry['arm']} - {entry['baseline']} | "
                             f"{', '.join(map(str, entry['seeds']))} | {key} | {_cell(entry, key, signed=True)} | "
                             + ", ".join(f"{d:+.3f}" for d in entry[key]["per_seed"]) + " |")
        lines.append("")
    curve = [e for e in results["summary"] if e["protocol"] == "full"]
    if curve:
        lines += ["## learning curve (full finetuning, NDS)", "", "| arm | " + " | ".join(
            str(s) for s in sorted({e["steps"] for e in curve})) + " |"]
        steps = sorted({e["steps"] for e in curve})
        lines.append("|---|" + "---|" * len(steps))
        for arm in dict.fromkeys(e["arm"] for e in curve):
            by_step = {e["steps"]: e for e in curve if e["arm"] == arm}
            lines.append(f"| {arm} | " + " | ".join(_cell(by_step[s], "NDS") if s in by_step else "" for s in steps)
                         + " |")
    return "\n".join(lines) + "\n"


def plot_learning_curve(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    curve = [e for e in results["summary"] if e["protocol"] == "full"]
    for arm in dict.fromkeys(e["arm"] for e in curve):
        points = sorted((e for e in curve if e["arm"] == arm), key=lambda e: e["steps"])
        steps = [e["steps"] for e in points]
        for axis, key in zip(axes, ("NDS", "mATE")):
            mean = [e[key]["mean"] for e in points]
            half = [0.0 if math.isnan(e[key]["ci95"]) else e[key]["ci95"] for e in points]
            axis.plot(steps, mean, marker="o", label=arm)
            axis.fill_between(steps, [m - h for m, h in zip(mean, half)], [m + h for m, h in zip(mean, half)],
                              alpha=0.15)
    for axis, key in zip(axes, ("NDS (higher is better)", "mATE, m (lower is better)")):
        axis.set_xlabel("finetuning steps")
        axis.set_title(key)
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    figure.suptitle(f"full finetuning on val, mean and 95% interval over seeds (budget {results['budget']})")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def teacher_dir(out: str, args) -> str:
    return args.teacher or os.path.join(out, "teacher")


def main(argv=None) -> None:
    args = parse_args(argv)
    budget = BUDGETS[args.budget]
    out = args.out
    os.makedirs(out, exist_ok=True)
    dataroot = args.world or os.path.join(out, "nuscenes")
    stages_run = 0
    started = time.perf_counter()

    def recorded_dir(output_dir: str) -> str | None:
        if not args.record:
            return None
        return os.path.join(args.record, "teacher" if output_dir == teacher else os.path.relpath(output_dir, out))

    def restore(script: str, output_dir: str, arguments: list[str], done_file: str, restorable: bool = True,
                weights=(), encoder: bool = False) -> None:
        """Bring a stage back from the record (when ``restorable``) and refuse it if it was begun with other
        settings than ``arguments``."""
        recorded = recorded_dir(output_dir)
        if recorded:
            record_stage(output_dir, recorded, done_file, restorable, weights, encoder)
        if check_settings(output_dir, stage_settings(script, arguments, roots)) and recorded and \
                os.path.isdir(recorded):
            copy_files(output_dir, recorded, (SETTINGS,), overwrite=False)

    def stage(name: str, script: str, output_dir: str, arguments: list[str], done_file: str, restorable: bool = True,
              weights=(), needs=None, encoder: bool = False, run: bool = True) -> None:
        """Run a stage unless it is done (in --out, or in the record), or only restore it (not ``run``: a stage
        of an arm or seed outside this run, which the tables still report); ``needs`` runs first, only if it will
        run (a finetuning cell's pretraining)."""
        nonlocal stages_run
        restore(script, output_dir, arguments, done_file, restorable, weights, encoder)
        if not run or args.max_stages is not None and stages_run >= args.max_stages:
            return  # (--max-stages 0 only rewrites the tables)
        if not os.path.isfile(os.path.join(output_dir, done_file)) and needs is not None:
            needs()
            if args.max_stages is not None and stages_run >= args.max_stages:
                return
        os.makedirs(output_dir, exist_ok=True)
        check_settings(output_dir, stage_settings(script, arguments, roots))
        if run_stage(name, script, output_dir, arguments, done_file):
            stages_run += 1
            recorded = recorded_dir(output_dir)
            if recorded:
                record_stage(output_dir, recorded, done_file, restorable, weights, encoder)
            write_results(out, collect(out, args, budget, recipes, pretrain_recipes), args.record)

    recipes: dict = {}  # each arm's finetuning recipe, once the search has chosen it
    pretrain_recipes: dict = {}  # each pretrained arm's pretraining recipe, likewise
    if not os.path.isfile(os.path.join(dataroot, VERSION, "sample.json")):
        print(f"writing a synthetic {VERSION} world of {budget.scenes} x {budget.samples_per_scene} keyframes to "
              f"{dataroot}", flush=True)
        write_world("nuscenes", dataroot, ["--version", VERSION, "--scenes", str(budget.scenes), "--samples-per-scene",
                                           str(budget.samples_per_scene), "--camera-sweeps", "0", "--lidar-sweeps",
                                           "0", "--workers", str(max(budget.workers, 1))])
    if args.record:
        check_world(nuscenes_fingerprint(dataroot), os.path.join(args.record, "world.json"),
                    os.path.join(dataroot, VERSION))
    waymo_root = os.path.join(out, "waymo")

    def ensure_waymo_world() -> None:
        """Write the Waymo world when a transfer cell first needs it (whole or not at all)."""
        if not os.path.isdir(waymo_root):
            print(f"writing a synthetic Waymo v2 world of {budget.waymo_segments} x {budget.waymo_frames} frames "
                  f"({budget.waymo_validation_segments} segments for validation) to {waymo_root}", flush=True)
            shutil.rmtree(waymo_root + ".partial", ignore_errors=True)
            write_world("waymo", waymo_root + ".partial", [
                "--scenes", str(budget.waymo_segments), "--samples-per-scene", str(budget.waymo_frames),
                "--validation-segments", str(budget.waymo_validation_segments),
                "--workers", str(max(budget.workers, 1))])
            os.replace(waymo_root + ".partial", waymo_root)
        if args.record:
            check_world(waymo_fingerprint(waymo_root), os.path.join(args.record, "waymo_world.json"), waymo_root)

    # Full JPEG decoding on the nuScenes world: the record's cells were made before reduced-scale decoding
    # existed, and every arm sees the same pixels. The Waymo cells came after it and decode at reduced scale.
    common = ["--num-workers", str(budget.workers), "--sweeps", "0", "--batch-size", str(budget.batch_size),
              "--checkpointing-steps", str(budget.checkpointing_steps), "--resume-from-checkpoint", "latest",
              "--logging-steps", "25"]
    data = ["--dataroot", dataroot, "--version", VERSION, *common, "--full-jpeg-decode"]
    waymo_data = ["--dataset", "waymo", "--dataroot", waymo_root, *common]
    teacher = teacher_dir(out, args)
    roots = {"$WORLD": dataroot, "$TEACHER": teacher, "$WAYMO": waymo_root, "$OUT": out}  # stage.json's names
    stage("LiDAR teacher", "train_lidar_teacher.py", teacher,
          [*data, "--train-split", "train", "--val-split", "val", "--max-steps", str(budget.teacher_steps),
           "--batch-size", "4"], "metrics.json", weights=TEACHER_WEIGHTS)
    features = os.path.join(out, "teacher_features")
    stage("teacher features", "cache_teacher_features.py", features,
          ["--teacher", teacher, "--dataroot", dataroot, "--version", VERSION, "--split", "train", "--sweeps", "0"],
          "index.json", restorable=False)

    def pretrain_flags(arm: str, chosen: dict) -> list[str]:
        return ["--model-config", budget.preset, *ARMS[arm],
                *(["--teacher", teacher, "--teacher-features", features] if arm.startswith("geomim") else []),
                "--learning-rate", f"{chosen['learning_rate']:g}", "--warmup-steps", str(chosen["warmup_steps"])]

    # The pretraining recipe search on held-out training scenes, the same candidates for both pretrained main
    # arms; pixel MIM first, as GeoMIM's candidates start from its chosen encoder (the study's pretrainings do).
    # The searches run for --arms (and the arms they start from), and are restored, scored and chosen for every
    # arm, so that a run of a few arms rewrites search.json, recipes.json and the tables whole.
    pretrained_arms = [arm for arm in args.arms if ARMS[arm] is not None]
    pretrain_search_arms = [arm for arm in MAIN_ARMS if ARMS[arm] is not None and (
        arm in args.arms or any(PRETRAINED_FROM.get(other) == arm for other in pretrained_arms))]
    every_pretrained_arm = [arm for arm in ARMS if ARMS[arm] is not None]
    pretrain_searched_arms = [arm for arm in MAIN_ARMS if ARMS[arm] is not None]

    def pretrain_candidate(arm: str, chosen: dict) -> str:
        return os.path.join(out, "pretrain_search", f"{arm}-{pretrain_tag(chosen)}")

    def pretrain_search_scores() -> dict:
        """Each pretraining candidate's held-out scores, read from its finished stages."""
        scores = {}
        for lr, warmup in budget.pretrain_search:
            candidate = {"learning_rate": lr, "warmup_steps": warmup}
            found = {arm: (read_json(os.path.join(pretrain_candidate(arm, candidate), "pretrain_summary.json"))
                           or {}).get("held_out") for arm in pretrain_searched_arms}
            scores[f"lr {lr:g}, {warmup} warmup"] = {
                **candidate, **{f"held_out_{key}": {arm: held_out[key] for arm, held_out in found.items() if held_out}
                                for key in ("loss", "reconstruction_loss", "reconstruction_baseline")}}
        return scores

    for arm in pretrain_searched_arms:
        base = PRETRAINED_FROM.get(arm)
        if base and base not in pretrain_recipes:
            break  # the base's search is not finished
        steps = budget.pretrain_search_steps
        for lr, warmup in budget.pretrain_search:
            candidate = {"learning_rate": lr, "warmup_steps": warmup}
            # The base arm's candidates keep their encoder in the record: the next arm's start from one of them.
            stage(f"pretraining recipe search: lr {lr:g}, {warmup} warmup steps, {arm}", "pretrain.py",
                  pretrain_candidate(arm, candidate),
                  [*data, "--train-split", "train_track", "--val-split", "train_detect", "--eval-samples", "64",
                   "--eval-steps", *(str(step) for step in (steps // 3, 2 * steps // 3) if step > 0), "--seed", "0",
                   "--max-steps", str(steps),
                   *pretrain_flags(arm, candidate),
                   *(["--init-encoder", pretrain_candidate(base, pretrain_recipes[base])] if base else [])],
                  "pretrain_summary.json", restorable=arm not in PRETRAINED_FROM.values(),
                  encoder=arm in PRETRAINED_FROM.values(), run=arm in pretrain_search_arms)
        pretrain_recipes = choose_recipes(pretrain_search_scores(), pretrain_searched_arms, every_pretrained_arm,
                                          criterion="held_out_loss", lowest=True)
    pretrain_scores = pretrain_search_scores()

    def pretrained(arm: str, seed: int) -> str:
        return os.path.join(out, "pretrain", f"{arm_name(arm, pretrain_recipes)}-seed{seed}")

    def ensure_pretrained(arm: str, seed: int) -> None:
        """Pretrain an arm's encoder with its recipe when a finetuning stage first needs it."""
        if ARMS[arm] is not None:
            base = PRETRAINED_FROM.get(arm)
            stage(f"pretraining {arm}, seed {seed}", "pretrain.py", pretrained(arm, seed),
                  [*data, "--train-split", "train", "--seed", str(seed), "--max-steps", str(budget.pretrain_steps),
                   *pretrain_flags(arm, pretrain_recipes[arm]),
                   *(["--init-encoder", pretrained(base, seed)] if base else [])],
                  "pretrain_summary.json", restorable=False, encoder=True,
                  needs=(lambda: ensure_pretrained(base, seed)) if base else None)

    def init_of(arm: str, seed: int) -> list[str]:
        stages = ["--out-indices", *map(str, budget.out_indices)] if budget.out_indices else []
        # Every arm's detector and segmenter are the preset's: a pretraining checkpoint gives the encoder only.
        return [*(["--init", "scratch", "--model-config", budget.preset] if ARMS[arm] is None else
                  ["--init", pretrained(arm, seed), "--head-config", budget.preset]), *stages]

    def finetune_flags(chosen: dict) -> list[str]:
        return [*RECIPES[chosen["recipe"]], "--learning-rate", str(chosen["learning_rate"]), "--warmup-steps", "50",
                "--max-steps", str(budget.finetune_steps)]

    # The recipe search on held-out training scenes, the same candidates for every main arm.
    search_dir = os.path.join(out, "search")

    def search_cell(name: str, lr: float, arm: str) -> str:
        return os.path.join(search_dir, f"{name}-lr{lr:g}-{arm_name(arm, pretrain_recipes)}")

    for name, lr in budget.search:
        for arm in MAIN_ARMS:
            if arm_name(arm, pretrain_recipes) is None:
                continue  # its pretraining recipe is not chosen yet
            candidate = {"recipe": name, "learning_rate": lr}
            stage(f"recipe search: {name}, lr {lr:g}, {arm}", "finetune_detection.py", search_cell(name, lr, arm),
                  [*data, "--train-split", "train_track", "--val-split", "train_detect", "--seed", "0",
                   *init_of(arm, 0), *finetune_flags(candidate)], "metrics.json",
                  needs=lambda arm=arm: ensure_pretrained(arm, 0), run=arm in args.arms)
    # Each searched arm's recipe, recomputed from the finished search cells on every run (so adding an arm
    # later never changes the others'); the secondary arms take geomim's.
    scores = {}
    for name, lr in budget.search:
        found = {arm: read_json(os.path.join(search_cell(name, lr, arm), "metrics.json")) for arm in MAIN_ARMS
                 if arm_name(arm, pretrain_recipes)}
        scores[f"{name} lr {lr:g}"] = {"recipe": name, "learning_rate": lr,
                                        **{f"held_out_{key}": {arm: m[key] for arm, m in found.items() if m}
                                           for key in ("NDS", "mAP", "mATE")}}
    recipes = choose_recipes(scores, MAIN_ARMS, list(ARMS))
    for folder in (search_dir, *([os.path.join(args.record, "search")] if args.record else [])):
        os.makedirs(folder, exist_ok=True)
        for name, value in (("search.json", scores), ("recipes.json", recipes),
                            ("pretrain_search.json", pretrain_scores), ("pretrain_recipes.json", pretrain_recipes)):
            with open(os.path.join(folder, name), "w") as handle:
                json.dump(value, handle, indent=2)
    missing = [arm for arm in args.arms if arm not in recipes]
    if missing:  # the recorded cells still make the tables
        write_results(out, collect(out, args, budget, recipes, pretrain_recipes), args.record)
        print(f"stopped before the study: the recipe search is not complete for {missing} ({stages_run} stages "
              "run; the secondary arms take geomim's recipe, so they need geomim in --arms)")
        return
    print("recipes chosen on the held-out training scenes: "
          + ", ".join(f"{arm} {recipe_name(r)}" for arm, r in recipes.items()))

    def needs_of(arm: str, protocol: str, seed: int):
        def needs() -> None:
            if protocol == "waymo":
                ensure_waymo_world()
            ensure_pretrained(arm, seed)
        return needs

    # Every cell of the whole study is restored and checked (a recorded cell made with other settings than this
    # run would give it is refused), those of --arms, --protocols and --seeds run.
    study = {}
    for arm, protocol, seed in whole_study(args, out, budget):
        if arm not in recipes or finetune_cell(arm, protocol, seed, pretrain_recipes) is None:
            continue
        train_split, val_split, frozen = PROTOCOLS[protocol]
        curve = ["--eval-steps", *map(str, budget.curve)] if protocol == "full" else []
        segment = protocol == "segment"
        study[arm, protocol, seed] = (
            f"finetuning {arm}, {protocol}, seed {seed}",
            "finetune_segmentation.py" if segment else "finetune_detection.py",
            os.path.join(out, "finetune", finetune_cell(arm, protocol, seed, pretrain_recipes)),
            [*(waymo_data if protocol == "waymo" else data), "--train-split", train_split, "--val-split", val_split,
             "--seed", str(seed), *init_of(arm, seed), *finetune_flags(SEGMENT_RECIPE if segment else recipes[arm]),
             *curve, *(["--freeze-encoder"] if frozen else [])], needs_of(arm, protocol, seed))
    for name, script, output_dir, arguments, needs in study.values():  # every cell checked, the tables whole, first
        restore(script, output_dir, arguments, "metrics.json")
    write_results(out, collect(out, args, budget, recipes, pretrain_recipes), args.record)
    to_run = list(cells(args, budget))  # in the order of --seeds, --protocols and --arms
    for name, script, output_dir, arguments, needs in (study[cell] for cell in to_run):
        stage(name, script, output_dir, arguments, "metrics.json", needs=needs)

    results = collect(out, args, budget, recipes, pretrain_recipes)
    write_results(out, results, args.record)
    total = len(to_run)
    done = len({(c["arm"], c["protocol"], c["seed"]) for c in results["cells"]} & set(to_run))
    print(f"\n{done} of {total} cells done ({stages_run} stages run now, {(time.perf_counter() - started) / 60:.1f} "
          f"min); tables in {os.path.join(out, 'results.md')}")
    print(open(os.path.join(out, "results.md")).read())


if __name__ == "__main__":
    main()
