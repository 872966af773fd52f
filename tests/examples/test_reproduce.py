"""examples/reproduce.py: the study's bookkeeping against independent computations, and the smoke budget
run end to end as a user runs it."""

import dataclasses
import io
import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from tests.helpers import load_example

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_t_interval_is_scipys():
    reproduce = load_example("reproduce")
    values = [0.12, 0.18, 0.15]
    mean, half = reproduce.t_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert mean == pytest.approx(np.mean(values)) and half == pytest.approx((high - low) / 2)
    assert math.isnan(reproduce.t_interval([0.3])[1])


def test_cells_run_the_main_comparison_first_and_the_secondary_on_fewer_seeds(tmp_path):
    reproduce = load_example("reproduce")
    args = reproduce.parse_args(["--out", str(tmp_path), "--arms", "random", "geomim", "depth", "geomim-no-cva",
                                 "--protocols", "full", "probe", "label", "waymo", "--seeds", "0", "1"])
    budget = dataclasses.replace(reproduce.BUDGETS["smoke"], secondary_seeds=1)
    main = [(arm, protocol, seed) for seed in (0, 1) for protocol in ("full", "probe", "waymo")
            for arm in ("random", "geomim")]
    secondary = [("depth", "probe", 0), ("geomim-no-cva", "probe", 0), ("random", "label", 0), ("geomim", "label", 0)]
    assert list(reproduce.cells(args, budget)) == main + secondary
    everywhere = list(reproduce.cells(args, dataclasses.replace(budget, secondary_seeds=None)))
    assert everywhere == main + secondary + [(arm, protocol, 1) for arm, protocol, _ in secondary]


def test_each_searched_arm_takes_its_best_recipe_and_the_secondary_arms_geomims():
    reproduce = load_example("reproduce")
    scores = {"a": {"recipe": "light", "learning_rate": 1e-3, "held_out_NDS": {"random": 0.2, "geomim": 0.1,
                                                                              "pixel": 0.3}},
              "b": {"recipe": "light", "learning_rate": 2e-3, "held_out_NDS": {"random": 0.1, "geomim": 0.4}}}
    recipes = reproduce.choose_recipes(scores, ["random", "pixel", "geomim"], ["random", "pixel", "geomim", "depth"])
    a, b = ({"recipe": "light", "learning_rate": lr} for lr in (1e-3, 2e-3))
    assert recipes == {"random": a, "geomim": b, "depth": b}  # pixel lacks candidate b: not chosen yet
    assert reproduce.choose_recipes(scores, ["random"], ["random", "depth"]) == {"random": a}


def test_each_pretrained_arm_takes_its_pretraining_recipe_of_lowest_held_out_loss():
    reproduce = load_example("reproduce")
    scores = {"a": {"learning_rate": 1e-3, "warmup_steps": 50, "held_out_loss": {"pixel": 0.7, "geomim": 0.5},
                    "held_out_reconstruction_loss": {"pixel": 0.7, "geomim": 0.4}},
              "b": {"learning_rate": 2e-4, "warmup_steps": 500, "held_out_loss": {"pixel": 0.6, "geomim": 0.6},
                    "held_out_reconstruction_loss": {"pixel": 0.6, "geomim": 0.3}}}
    recipes = reproduce.choose_recipes(scores, ["pixel", "geomim"], ["pixel", "geomim", "geomim-no-cva"],
                                       criterion="held_out_loss", lowest=True)
    a, b = {"learning_rate": 1e-3, "warmup_steps": 50}, {"learning_rate": 2e-4, "warmup_steps": 500}
    assert recipes == {"pixel": b, "geomim": a, "geomim-no-cva": a}
    # Every pretrained arm's folders carry its recipe; random's never change; none before the choice.
    assert reproduce.finetune_cell("geomim", "full", 1, recipes) == "geomim-lr0.001-w50-full-seed1"
    assert reproduce.finetune_cell("random", "full", 1, recipes) == "random-full-seed1"
    assert reproduce.finetune_cell("depth", "probe", 0, recipes) is None


def test_results_summarise_the_cells_found(tmp_path):
    reproduce = load_example("reproduce")
    args = reproduce.parse_args(["--out", str(tmp_path), "--budget", "smoke", "--arms", "random", "geomim",
                                 "--protocols", "full", "probe", "segment", "waymo", "--seeds", "0", "1"])
    budget = reproduce.BUDGETS["smoke"]
    rng = np.random.default_rng(0)
    pretrain_recipes = {"geomim": {"learning_rate": 2e-4, "warmup_steps": 500}}
    written = {}
    for arm, protocol, seed in reproduce.cells(args, budget):
        if (arm, protocol, seed) == ("geomim", "probe", 1):
            continue  # a cell not finished yet
        folder = tmp_path / "finetune" / reproduce.finetune_cell(arm, protocol, seed, pretrain_recipes)
        folder.mkdir(parents=True)
        curve = {str(step): {key: float(rng.random()) for key in reproduce.reported(protocol)}
                 for step in ((2, 4) if protocol == "full" else (4,))}
        (folder / "learning_curve.json").write_text(json.dumps(curve))
        written[arm, protocol, seed] = curve
    results = reproduce.collect(str(tmp_path), args, budget, {"random": {"recipe": "light", "learning_rate": 1e-3}},
                                pretrain_recipes)
    assert len(results["cells"]) == sum(len(c) for c in written.values())
    summary = {(e["arm"], e["protocol"], e["steps"]): e for e in results["summary"]}
    entry = summary["random", "full", 2]
    nds = [written["random", "full", s]["2"]["NDS"] for s in (0, 1)]
    assert entry["seeds"] == [0, 1] and entry["NDS"]["mean"] == pytest.approx(np.mean(nds))
    assert entry["NDS"]["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * stats.sem(nds))
    assert summary["geomim", "probe", 4]["seeds"] == [0] and math.isnan(summary["geomim", "probe", 4]["NDS"]["ci95"])
    miou = [written["geomim", "segment", s]["4"]["mIoU"] for s in (0, 1)]
    assert summary["geomim", "segment", 4]["mIoU"]["mean"] == pytest.approx(np.mean(miou))
    assert "NDS" not in summary["geomim", "segment", 4] and "mIoU" not in entry
    apl = [written["random", "waymo", s]["4"]["LET-3D-APL/LEVEL_2"] for s in (0, 1)]
    assert summary["random", "waymo", 4]["LET-3D-APL/LEVEL_2"]["mean"] == pytest.approx(np.mean(apl))
    assert set(summary["random", "waymo", 4]) - {"arm", "protocol", "steps", "seeds"} == set(reproduce.WAYMO_REPORTED)
    reproduce.write_results(str(tmp_path), results)
    table = (tmp_path / "results.md").read_text()
    assert "| geomim | 4 | 1 |" in table and f"{np.mean(nds):.3f} ± " in table
    assert "## segment\n\n| arm | steps | seeds | mIoU | IoU/drivable_area |" in table and f"{np.mean(miou):.3f} ± " in table
    assert "## waymo\n\n| arm | steps | seeds | LET-3D-APL/LEVEL_2 | LET-3D-AP/LEVEL_2 |" in table
    assert f"| random | 4 | 2 | {np.mean(apl):.3f} ± " in table
    assert (tmp_path / "learning_curve.png").stat().st_size > 0
    # Paired by seed, at each protocol's last step and only on the seeds both arms finished.
    differences = {(e["arm"], e["baseline"], e["protocol"]): e for e in results["differences"]}
    assert set(differences) == {("geomim", "random", p) for p in ("full", "probe", "segment", "waymo")}
    gain = [written["geomim", "full", s]["4"]["NDS"] - written["random", "full", s]["4"]["NDS"] for s in (0, 1)]
    full = differences["geomim", "random", "full"]
    assert full["NDS"]["per_seed"] == pytest.approx(gain) and full["NDS"]["mean"] == pytest.approx(np.mean(gain))
    assert full["NDS"]["ci95"] == pytest.approx(stats.t.ppf(0.975, 1) * stats.sem(gain))
    assert set(full) - {"arm", "baseline", "protocol", "steps", "seeds"} == {"NDS", "mAP", "mATE"}
    probe = differences["geomim", "random", "probe"]
    assert probe["seeds"] == [0] and math.isnan(probe["mATE"]["ci95"])
    assert probe["mATE"]["mean"] == pytest.approx(written["geomim", "probe", 0]["4"]["mATE"]
                                                  - written["random", "probe", 0]["4"]["mATE"])
    assert "mIoU" in differences["geomim", "random", "segment"] and "NDS" not in differences["geomim", "random",
                                                                                           "segment"]
    assert f"| full | geomim - random | 0, 1 | NDS | {np.mean(gain):+.3f} ± " in table
    assert f"| {gain[0]:+.3f}, {gain[1]:+.3f} |" in table


def test_each_arm_is_paired_with_the_baselines_on_the_seeds_both_finished():
    reproduce = load_example("reproduce")
    nds = {("random", 0): 0.10, ("random", 1): 0.14, ("pixel", 0): 0.12, ("pixel", 2): 0.2,
           ("geomim", 0): 0.15, ("geomim", 1): 0.13, ("geomim", 2): 0.16}
    found = [{"arm": arm, "protocol": "full", "seed": seed, "steps": steps, "NDS": value + steps, "mAP": 0.0,
              "mATE": 1.0} for (arm, seed), value in nds.items() for steps in (1, 2)]
    differences = {(e["arm"], e["baseline"]): e for e in reproduce.paired_differences(found)}
    assert set(differences) == {("pixel", "random"), ("geomim", "random"), ("geomim", "pixel")}
    assert differences["geomim", "random"]["seeds"] == [0, 1] and differences["geomim", "pixel"]["seeds"] == [0, 2]
    assert differences["geomim", "pixel"]["NDS"]["per_seed"] == pytest.approx([0.03, -0.04])  # at step 2
    assert differences["pixel", "random"]["seeds"] == [0] and differences["pixel", "random"]["steps"] == 2


def test_a_waymo_world_that_differs_from_the_record_is_refused(waymo_root, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    reproduce = load_example("reproduce")
    world = tmp_path / "waymo"
    shutil.copytree(waymo_root, world)
    path = tmp_path / "record" / "waymo_world.json"
    found = reproduce.waymo_fingerprint(str(world))
    image = "validation/camera_image (pixels of the first)"
    assert set(found) == {f"validation/{component}" for component in reproduce.WAYMO_TABLES} | {image}
    # A record from before the image was fingerprinted takes it when the rest agrees.
    path.parent.mkdir()
    path.write_text(json.dumps({k: v for k, v in found.items() if k != image}))
    reproduce.check_world(found, str(path), str(world))
    assert json.loads(path.read_text()) == found
    reproduce.check_world(reproduce.waymo_fingerprint(str(world)), str(path), str(world))  # the same world passes
    # The renderer changed, the tables not: its first image is named.
    segment = next((world / "validation" / "camera_image").iterdir())
    table = pq.read_table(segment)
    column = "[CameraImageComponent].image"
    images = table.column(column).to_pylist()
    from PIL import Image

    first = np.asarray(Image.open(io.BytesIO(images[0])).convert("RGB")).copy()
    first[:8] = 255 - first[:8]
    edited = io.BytesIO()
    Image.fromarray(first).save(edited, format="JPEG", quality=95)
    pq.write_table(table.set_column(table.schema.get_field_index(column), column,
                                    pa.array([edited.getvalue(), *images[1:]], pa.binary())), segment)
    with pytest.raises(SystemExit, match=r"camera_image \(pixels of the first\)"):
        reproduce.check_world(reproduce.waymo_fingerprint(str(world)), str(path), str(world))
    pq.write_table(table, segment)
    # One box moved by a millimetre: its table is named.
    box = next((world / "validation" / "lidar_box").iterdir())
    table = pq.read_table(box)
    column = "[LiDARBoxComponent].box.center.x"
    moved = table.set_column(table.schema.get_field_index(column), column,
                             [[x + 1e-3 if i == 0 else x for i, x in enumerate(table.column(column).to_pylist())]])
    pq.write_table(moved, box)
    with pytest.raises(SystemExit, match=r"tables \['validation/lidar_box'\] differ"):
        reproduce.check_world(reproduce.waymo_fingerprint(str(world)), str(path), str(world))


def test_a_stage_begun_with_other_settings_is_refused(tmp_path):
    reproduce = load_example("reproduce")
    out = tmp_path / "S"
    roots = {"$WORLD": str(out / "nuscenes"), "$OUT": str(out)}
    arguments = ["--dataroot", str(out / "nuscenes"), "--init", str(out / "pretrain" / "pixel-seed0"),
                 "--teacher", str(tmp_path / "S2"), "--learning-rate", "0.001", "--freeze-encoder"]
    settings = reproduce.stage_settings("finetune_detection.py", arguments, roots)
    # Folders are named by their root (the longest first), a sibling that only shares the prefix is not.
    assert settings == {"script": "finetune_detection.py", "arguments": [
        "--dataroot", "$WORLD", "--init", "$OUT/pretrain/pixel-seed0", "--teacher", str(tmp_path / "S2"),
        "--learning-rate", "0.001", "--freeze-encoder"]}
    cell = out / "finetune" / "pixel-full-seed0"
    assert not reproduce.check_settings(str(cell), settings) and not cell.exists()  # nothing begun, nothing kept
    cell.mkdir(parents=True)
    assert reproduce.check_settings(str(cell), settings)  # begun before settings were kept: takes these
    assert json.loads((cell / "stage.json").read_text()) == settings
    assert not reproduce.check_settings(str(cell), settings)
    other = reproduce.stage_settings("finetune_detection.py", [*arguments[:-2], "0.002"], roots)
    with pytest.raises(SystemExit, match=r"--freeze-encoder \[\] \(now None\); --learning-rate \['0.001'\] "
                                         r"\(now \['0.002'\]\)") as refused:
        reproduce.check_settings(str(cell), other)
    assert str(cell) in str(refused.value)


def test_smoke_study_runs_and_resumes(tmp_path):
    reproduce = load_example("reproduce")
    record = tmp_path / "record"
    tmp_path = tmp_path / "out"
    command = [sys.executable, str(REPO / "examples" / "reproduce.py"), "--out", str(tmp_path), "--budget", "smoke",
               "--arms", "random", "geomim", "--protocols", "full", "probe", "segment", "waymo", "--seeds", "0",
               "--record",
               str(record)]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    light = {"recipe": "light", "learning_rate": 1e-3}
    # Pixel MIM is not searched (not in --arms); the secondary arms take GeoMIM's recipe.
    assert results["teacher"] is not None and results["recipes"] == {arm: light for arm in reproduce.ARMS
                                                                     if arm != "pixel"}
    # The pretraining recipe search: pixel MIM (GeoMIM's starting point) and GeoMIM, each scored by its loss on
    # held-out training scenes; GeoMIM's candidate started from pixel MIM's chosen one.
    candidate = {"learning_rate": 1e-3, "warmup_steps": 2}
    tag = "lr0.001-w2"
    assert results["pretrain_recipes"] == {arm: candidate for arm, flags in reproduce.ARMS.items() if flags}
    for arm in ("pixel", "geomim"):
        held_out = json.loads((tmp_path / "pretrain_search" / f"{arm}-{tag}" / "pretrain_summary.json").read_text())
        assert held_out["held_out"]["split"] == "train_detect"
        assert results["pretrain_search"]["lr 0.001, 2 warmup"]["held_out_loss"][arm] == held_out["held_out"]["loss"]
    summary = json.loads((tmp_path / "pretrain_search" / f"geomim-{tag}" / "training_summary.json").read_text())
    assert summary["encoder init"] == str(tmp_path / "pretrain_search" / f"pixel-{tag}")
    assert "Pretraining recipe search" in (tmp_path / "results.md").read_text()
    assert set(results["search"]["light lr 0.001"]["held_out_NDS"]) == {"random", "geomim"}
    found = {(c["arm"], c["protocol"], c["steps"]) for c in results["cells"]}
    assert found == {("random", "full", 2), ("random", "full", 4), ("geomim", "full", 2), ("geomim", "full", 4),
                     ("random", "probe", 4), ("geomim", "probe", 4), ("random", "segment", 4), ("geomim", "segment", 4),
                     ("random", "waymo", 4), ("geomim", "waymo", 4)}
    for cell in results["cells"]:
        if cell["protocol"] == "segment":  # BEVFusion's IoU (NaN for a class absent from val and never predicted)
            assert all(math.isnan(cell[k]) or 0.0 <= cell[k] <= 1.0 for k in reproduce.SEGMENT_REPORTED)
        elif cell["protocol"] == "waymo":
            assert all(0.0 <= cell[k] <= 1.0 for k in reproduce.WAYMO_REPORTED)
        else:
            assert 0.0 <= cell["NDS"] <= 1.0 and cell["mATE"] >= 0.0
    # The probe's encoder stayed as pretrained; the full finetuning's moved.
    from safetensors.torch import load_file

    pretrained = load_file(tmp_path / "pretrain" / f"geomim-{tag}-seed0" / "model.safetensors")
    key = "geomim.encoder.patch_embed.weight"
    probe = load_file(tmp_path / "finetune" / f"geomim-{tag}-probe-seed0" / "model.safetensors")
    full = load_file(tmp_path / "finetune" / f"geomim-{tag}-full-seed0" / "model.safetensors")
    assert (probe[key] == pretrained[key]).all() and not (full[key] == pretrained[key]).all()
    # The transfer: a Waymo detector (five views, Waymo's classes) finetuned from the nuScenes-world encoder, on
    # the Waymo world's training segments.
    waymo = tmp_path / "finetune" / f"geomim-{tag}-waymo-seed0"
    config = json.loads((waymo / "config.json").read_text())
    assert config["num_views"] == 5 and tuple(config["class_names"]) == reproduce.WAYMO_CLASSES
    assert json.loads((waymo / "metrics.json").read_text())["init"] == \
        str(tmp_path / "pretrain" / f"geomim-{tag}-seed0")
    smoke = reproduce.BUDGETS["smoke"]
    assert len(list((tmp_path / "waymo" / "training" / "lidar_box").iterdir())) == \
        smoke.waymo_segments - smoke.waymo_validation_segments
    assert (record / "waymo_world.json").is_file()
    sensors = [name for name in json.loads((record / "world.json").read_text()) if name.startswith("samples/")]
    assert len(sensors) == 2 and any(name.endswith("(pixels)") for name in sensors)
    # GeoMIM's pretraining started from the pixel-MIM arm's encoder (the official recipe starts from MixMAE's)
    summary = json.loads((tmp_path / "pretrain" / f"geomim-{tag}-seed0" / "training_summary.json").read_text())
    assert summary["encoder init"] == str(tmp_path / "pretrain" / f"pixel-{tag}-seed0")
    assert (tmp_path / "results.md").is_file() and (tmp_path / "learning_curve.png").is_file()

    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "$ " not in again.stdout and "already done" in again.stdout  # every stage skipped

    # A fresh machine with only the record: the world is rewritten from its seed, the teacher and every cell
    # come back from the record (no teacher training, no finetuning, no pretraining), the tables are the same.
    assert (record / "teacher" / "model.safetensors").is_file()
    assert json.loads((record / "results.json").read_text()) == results
    shutil.rmtree(tmp_path)
    fresh = subprocess.run(command, capture_output=True, text=True, env=env)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]
    ran = [line for line in fresh.stdout.splitlines() if line.startswith("$ ")]
    assert len(ran) == 1 and "cache_teacher_features.py" in ran[0], ran
    assert not (tmp_path / "waymo").exists()  # no Waymo cell to run: its world is not written
    assert json.loads((tmp_path / "results.json").read_text()) == results

    # --arms, --protocols and --seeds choose what runs, not what the tables report: a run of one arm, protocol
    # and another seed on a fresh machine rewrites the tables, the searches and the recipes as they were.
    searches = {name: (record / "search" / name).read_text() for name in ("search.json", "recipes.json",
                                                                          "pretrain_search.json",
                                                                          "pretrain_recipes.json")}
    shutil.rmtree(tmp_path)
    arms, seeds = command.index("--arms"), command.index("--seeds")
    subset = [*command[:arms + 1], "random", "--protocols", "probe", *command[seeds:seeds + 1], "1",
              *command[seeds + 2:], "--max-stages", "0"]
    assert subset[subset.index("--seeds") + 1:subset.index("--record")] == ["1"]
    part = subprocess.run(subset, capture_output=True, text=True, env=env)
    assert part.returncode == 0, part.stdout[-3000:] + part.stderr[-3000:]
    assert not [line for line in part.stdout.splitlines() if line.startswith("$ ")]
    assert json.loads((record / "results.json").read_text()) == results
    assert json.loads((tmp_path / "results.json").read_text()) == results
    assert {name: (record / "search" / name).read_text() for name in searches} == searches
    fresh = subprocess.run(command, capture_output=True, text=True, env=env)  # (back to the whole study's folder)
    assert fresh.returncode == 0, fresh.stdout[-3000:] + fresh.stderr[-3000:]

    # A cell missing from the record is finetuned again from the recorded encoder (no pretraining), and comes out
    # as it was.
    recorded_encoder = record / "pretrain" / f"geomim-{tag}-seed0" / "encoder.safetensors"
    assert set(load_file(recorded_encoder)) == {k for k in pretrained if k.startswith("geomim.")}
    assert all((load_file(recorded_encoder)[k] == pretrained[k]).all() for k in load_file(recorded_encoder))
    shutil.rmtree(tmp_path / "finetune" / f"geomim-{tag}-probe-seed0")
    shutil.rmtree(record / "finetune" / f"geomim-{tag}-probe-seed0")
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    ran = [line for line in again.stdout.splitlines() if line.startswith("$ ")]
    assert len(ran) == 1 and "finetune_detection.py" in ran[0], ran
    assert json.loads((tmp_path / "results.json").read_text()) == results

    # Without the recorded encoder the pretraining runs again and reproduces it bit for bit.
    kept = tmp_path / "encoder-kept.safetensors"
    shutil.move(recorded_encoder, kept)
    shutil.rmtree(tmp_path / "pretrain" / f"geomim-{tag}-seed0")
    shutil.rmtree(tmp_path / "finetune" / f"geomim-{tag}-probe-seed0")
    shutil.rmtree(record / "finetune" / f"geomim-{tag}-probe-seed0")
    again = subprocess.run(command, capture_output=True, text=True, env=env)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    ran = [line for line in again.stdout.splitlines() if line.startswith("$ ")]
    assert [("pretrain.py" in line, "finetune_detection.py" in line) for line in ran] == [(True, False), (False, True)]
    assert reproduce.same_tensors(str(kept), str(recorded_encoder))
    assert json.loads((tmp_path / "results.json").read_text()) == results

    # --max-stages 0 runs nothing, not even what a missing cell needs first (the Waymo world: this machine has
    # not written it), and writes the tables from the cells found.
    assert not (tmp_path / "waymo").exists()
    shutil.rmtree(tmp_path / "finetune" / f"geomim-{tag}-waymo-seed0")
    shutil.rmtree(record / "finetune" / f"geomim-{tag}-waymo-seed0")
    tables = subprocess.run([*command, "--max-stages", "0"], capture_output=True, text=True, env=env)
    assert tables.returncode == 0, tables.stdout[-3000:] + tables.stderr[-3000:]
    assert not [line for line in tables.stdout.splitlines() if line.startswith("$ ")]
    assert not (tmp_path / "waymo").exists()
    assert {(c["arm"], c["protocol"]) for c in json.loads((record / "results.json").read_text())["cells"]} == \
        {(c["arm"], c["protocol"]) for c in results["cells"]} - {("geomim", "waymo")}
    # An arm whose recipe search has not run (pixel) stops the study before its cells, and the recorded cells of
    # the others still make the tables.
    shutil.rmtree(tmp_path / "finetune")
    pixel = [*command[:command.index("--arms") + 1], "pixel", *command[command.index("--arms") + 1:]]
    tables = subprocess.run([*pixel, "--max-stages", "0"], capture_output=True, text=True, env=env)
    assert tables.returncode == 0 and "not complete for ['pixel']" in tables.stdout, tables.stdout[-3000:]
    assert {(c["arm"], c["protocol"]) for c in json.loads((record / "results.json").read_text())["cells"]} == \
        {(c["arm"], c["protocol"]) for c in results["cells"]} - {("geomim", "waymo")}

    # Each stage keeps what it was begun with, its folders named by role; a recorded cell whose settings are not
    # the ones this run gives it (a recipe changed since) is refused before any stage runs.
    cell = f"geomim-{tag}-full-seed0"
    settings = json.loads((record / "finetune" / cell / "stage.json").read_text())
    arguments = settings["arguments"]
    assert arguments[arguments.index("--dataroot") + 1] == "$WORLD"
    assert arguments[arguments.index("--init") + 1] == f"$OUT/pretrain/geomim-{tag}-seed0"
    arguments[arguments.index("--learning-rate") + 1] = "0.5"
    # (--out lost its cells above: the run restores this one from the record, then checks it)
    (record / "finetune" / cell / "stage.json").write_text(json.dumps(settings))
    refused = subprocess.run(command, capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and cell in refused.stderr and "--learning-rate ['0.5']" in refused.stderr
    assert not [line for line in refused.stdout.splitlines() if line.startswith("$ ")]

    # A world that is not the recorded one is refused, naming the record.
    tables = json.loads((record / "world.json").read_text())
    tables["sample.json"] = "0" * 64
    (record / "world.json").write_text(json.dumps(tables))
    refused = subprocess.run(command, capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "world.json" in refused.stderr and "sample.json" in refused.stderr
