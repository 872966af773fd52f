"""examples/pretrain.py and examples/cache_teacher_features.py, run as a user runs them."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch
from accelerate import PartialState

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling, GeoMIMModel
from geomim_hf.configuration_lidar_teacher import TEACHER_PRESETS, GeoMIMLidarTeacherConfig
from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher
from geomim_hf.teacher_cache import TeacherFeatureCache
from geomim_hf.training import cosine_lr_lambda
from tests.helpers import assert_same_weights, load_example

REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    """An untrained teacher is enough to exercise the pipeline."""
    torch.manual_seed(0)
    config = GeoMIMLidarTeacherConfig.for_student(GeoMIMConfig.from_preset("geomim-tiny"),
                                                  **TEACHER_PRESETS["geomim-tiny"])
    path = tmp_path_factory.mktemp("teacher")
    GeoMIMLidarTeacher(config).save_pretrained(path)
    return path


def _pretrain(nuscenes_root, teacher_dir, output_dir, *extra, launcher=()):
    command = [*launcher, str(REPO / "examples" / "pretrain.py"), "--dataroot", str(nuscenes_root), "--version",
               "v1.0-mini", "--train-split", "mini_val", "--model-config", "geomim-tiny", "--teacher", str(teacher_dir),
               "--output-dir", str(output_dir), "--batch-size", "1", "--num-workers", "0", "--logging-steps", "1",
               "--checkpointing-steps", "2", "--warmup-steps", "2", "--sweeps", "2", *extra]
    if not launcher:
        command.insert(0, sys.executable)
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in open(output_dir / "loss_history.jsonl")]


def test_pretrain_saves_a_model_and_resumes_exactly(nuscenes_root, teacher_dir, tmp_path):
    straight = _pretrain(nuscenes_root, teacher_dir, tmp_path / "straight", "--max-steps", "4")
    assert [r["step"] for r in straight] == [1, 2, 3, 4]
    out = tmp_path / "straight"
    for name in ("model.safetensors", "config.json", "preprocessor_config.json", "loss_curve.png",
                 "pretrain_summary.json", "checkpoint-2", "checkpoint-4"):
        assert (out / name).exists(), name
    assert not list(out.glob("*.partial"))
    GeoMIMForMaskedBEVModeling.from_pretrained(out)
    GeoMIMModel.from_pretrained(out)  # the encoder alone

    # A run stopped after step 3, resumed from its checkpoint at step 2: the same losses as the straight run,
    # each step logged once (step 3 of the stopped run, past its checkpoint, is run and logged again).
    _pretrain(nuscenes_root, teacher_dir, tmp_path / "stopped", "--max-steps", "3")
    resumed = _pretrain(nuscenes_root, teacher_dir, tmp_path / "stopped", "--max-steps", "4",
                        "--resume-from-checkpoint", "latest")
    assert resumed == straight


def test_steps_count_optimizer_steps_under_gradient_accumulation(nuscenes_root, teacher_dir, tmp_path):
    """Accumulating 2 batches of 1 is one optimizer step over a batch of 2: the same schedule, losses and
    weights (the pixel objective's loss is a mean over samples with equally many masked cells, and no
    BatchNorm); resuming mid-run under accumulation changes nothing."""
    from safetensors.torch import load_file

    flags = ("--objective", "pixel", "--max-steps", "4", "--learning-rate", "1e-3")
    whole = _pretrain(nuscenes_root, teacher_dir, tmp_path / "whole", *flags, "--batch-size", "2")
    accumulated = _pretrain(nuscenes_root, teacher_dir, tmp_path / "accumulated", *flags,
                            "--gradient-accumulation-steps", "2")
    assert [r["step"] for r in accumulated] == [1, 2, 3, 4]
    multiplier = cosine_lr_lambda(warmup_steps=2, total_steps=4)
    for run in (whole, accumulated):  # lr logged after step s is the schedule's value at s
        assert [r["lr"] for r in run] == pytest.approx([1e-3 * multiplier(s) for s in (1, 2, 3, 4)])
    assert [r["loss"] for r in accumulated] == pytest.approx([r["loss"] for r in whole], rel=1e-4)
    weights = {name: load_file(tmp_path / name / "model.safetensors") for name in ("whole", "accumulated")}
    for key, value in weights["whole"].items():
        torch.testing.assert_close(weights["accumulated"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    summary = json.load(open(tmp_path / "accumulated" / "training_summary.json"))
    assert summary["optimizer_steps"] == 4 and summary["final_learning_rate"] == pytest.approx(1e-3 * 1e-3)
    assert sorted(p.name for p in (tmp_path / "accumulated").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]

    _pretrain(nuscenes_root, teacher_dir, tmp_path / "stopped", *flags, "--gradient-accumulation-steps", "2",
              "--max-steps", "2")
    resumed = _pretrain(nuscenes_root, teacher_dir, tmp_path / "stopped", *flags, "--gradient-accumulation-steps",
                        "2", "--resume-from-checkpoint", "latest")
    assert resumed == accumulated
    resumed_weights = load_file(tmp_path / "stopped" / "model.safetensors")
    assert all(torch.equal(resumed_weights[k], v) for k, v in weights["accumulated"].items())


def test_held_out_scores_beside_the_image_blind_baseline(nuscenes_root, teacher_dir, tmp_path):
    """--val-split scores the model at --eval-steps and at the end; the final scores are those of the saved
    model, computed again here from its files, on the evenly spaced samples --eval-samples allows."""
    from geomim_hf import GeoMIMImageProcessor
    from geomim_hf.data import load_nuscenes, make_dataloader
    from geomim_hf.evaluation.pretraining import ImageBlindBaseline, evaluate_pretraining
    from geomim_hf.teachers import load_teacher

    out = tmp_path / "scored"
    _pretrain(nuscenes_root, teacher_dir, out, "--max-steps", "3", "--val-split", "mini_train", "--eval-steps", "1",
              "--eval-samples", "2")
    curve = json.loads((out / "learning_curve.json").read_text())
    assert list(curve) == ["1", "3"]
    assert set(curve["3"]) == {"loss", "reconstruction_loss", "depth_loss", "reconstruction_baseline",
                               "depth_baseline", "samples"}
    assert curve["1"]["reconstruction_baseline"] == curve["3"]["reconstruction_baseline"]  # no model in it
    assert curve["1"]["reconstruction_loss"] != curve["3"]["reconstruction_loss"]
    summary = json.loads((out / "pretrain_summary.json").read_text())
    assert summary["held_out"] == {"split": "mini_train", **curve["3"]}

    model = GeoMIMForMaskedBEVModeling.from_pretrained(out)
    teacher = load_teacher(str(teacher_dir))
    processor = GeoMIMImageProcessor.from_pretrained(out)
    inputs = model.model_input_names + ("lidar_points", "ego_from_lidar", "point_mask")

    def batches(split, rows):
        data = load_nuscenes(str(nuscenes_root), "v1.0-mini", split, sweeps=2).select(rows)
        for batch in make_dataloader(data, processor, 1, return_depth=True, with_targets=False, input_names=inputs):
            with torch.no_grad():
                batch["teacher_features"] = teacher.bev_features(
                    **{k: batch.pop(k) for k in ("lidar_points", "ego_from_lidar", "point_mask")})
            yield batch

    baseline = ImageBlindBaseline(model)
    for batch in batches("mini_val", [0, 3]):  # 6 samples, at most 2: every third
        baseline.update(batch)
    scores = evaluate_pretraining(model, list(batches("mini_train", [0, 2])), baseline, seed=0)  # 3 samples
    assert scores == pytest.approx(curve["3"], rel=1e-5)


def test_pretrain_runs_as_two_cpu_processes(nuscenes_root, teacher_dir, tmp_path):
    launcher = (shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate", "launch",
                "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                "--dynamo_backend", "no")
    history = _pretrain(nuscenes_root, teacher_dir, tmp_path / "ddp", "--max-steps", "3", launcher=launcher)
    assert [r["step"] for r in history] == [1, 2, 3] and all(r["loss"] > 0 for r in history)
    assert (tmp_path / "ddp" / "model.safetensors").is_file()


def test_cached_teacher_features(nuscenes_root, teacher_dir, tmp_path):
    cache_dir = tmp_path / "features"
    subprocess.run([sys.executable, str(REPO / "examples" / "cache_teacher_features.py"), "--teacher", str(teacher_dir),
                    "--dataroot", str(nuscenes_root), "--version", "v1.0-mini", "--split", "mini_val", "--sweeps", "2",
                    "--output-dir", str(cache_dir)], check=True, capture_output=True)
    cache = TeacherFeatureCache(str(cache_dir))
    assert cache.info["samples"] == 6 and len(list(cache_dir.glob("*.safetensors"))) == 6
    token = next(cache_dir.glob("*.safetensors")).stem
    mirror_y = torch.diag(torch.tensor([1.0, -1.0, 1.0, 1.0]))[None]
    plain = cache.load([token], torch.eye(4)[None])
    torch.testing.assert_close(cache.load([token], mirror_y), torch.flip(plain, [-2]))
    with pytest.raises(ValueError, match="allow BEV mirrors only"):
        rotation = torch.eye(4)[None].clone()
        rotation[0, :2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        cache.load([token], rotation)
    history = _pretrain(nuscenes_root, teacher_dir, tmp_path / "cached", "--max-steps", "2", "--teacher-features",
                        str(cache_dir))
    assert len(history) == 2
    # A cache made on another grid is refused before training, naming the cache and the field.
    index = json.loads((cache_dir / "index.json").read_text())
    (cache_dir / "index.json").write_text(json.dumps({**index, "resolution": index["resolution"] * 2}))
    with pytest.raises(AssertionError, match=r"the teacher features in .*target cell"):
        _pretrain(nuscenes_root, teacher_dir, tmp_path / "refused", "--max-steps", "1", "--teacher-features",
                  str(cache_dir))


@pytest.mark.parametrize("flags, losses", [(["--objective", "pixel"], {"reconstruction_loss"}),
                                           (["--objective", "depth"], {"depth_loss"}),
                                           (["--no-cross-view", "--no-depth-branch", "--loss-region", "masked"],
                                            {"reconstruction_loss", "depth_loss"})])
def test_baselines_and_ablations_by_flag(nuscenes_root, teacher_dir, tmp_path, flags, losses):
    """The paper's baselines need no teacher; every arm saves a model whose config says what it trained."""
    command = [sys.executable, str(REPO / "examples" / "pretrain.py"), "--dataroot", str(nuscenes_root), "--version",
               "v1.0-mini", "--train-split", "mini_val", "--output-dir", str(tmp_path), "--batch-size", "1",
               "--num-workers", "0", "--logging-steps", "1", "--checkpointing-steps", "0", "--sweeps", "2",
               "--max-steps", "2", *flags]
    if "--objective" not in flags:
        command += ["--teacher", str(teacher_dir)]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "ACCELERATE_USE_CPU": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in open(tmp_path / "loss_history.jsonl")]
    assert len(history) == 2 and losses <= set(history[0]) and all(r["loss"] > 0 for r in history)
    config = GeoMIMConfig.from_pretrained(tmp_path)
    if "pixel" in flags:
        assert config.pretrain_objective == "pixel"
    elif "depth" in flags:
        assert config.pretrain_objective == "depth"
    else:
        assert (config.decoder_cross_view_layers, config.decoder_depth_branch, config.reconstruction_region) == \
            ((), False, "masked")
    GeoMIMModel.from_pretrained(tmp_path)  # the encoder loads alone, whatever the objective


def test_geomim_without_a_teacher_is_refused(nuscenes_root, tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "examples" / "pretrain.py"), "--dataroot", str(nuscenes_root),
                             "--output-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and "--objective geomim needs --teacher" in result.stderr


def test_init_encoder_loads_the_encoder_only_and_refuses_another_architecture(tmp_path):
    """--init-encoder: the encoder's tensors are the folder's, the decoder starts new; an encoder of another
    architecture is refused, naming the folder."""
    PartialState()  # the script's accelerate logger needs it
    script = load_example("pretrain")
    torch.manual_seed(0)
    source = GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny", pretrain_objective="pixel"))
    source.save_pretrained(tmp_path / "pixel")
    torch.manual_seed(1)
    model = GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny"))
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    script.load_encoder(model, str(tmp_path / "pixel"))
    assert_same_weights(source.geomim, model.geomim)
    assert all((model.decoder.state_dict()[k] == v).all() for k, v in decoder.items())
    wider = GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny", embed_dim=48))
    with pytest.raises(ValueError, match="--init-encoder .*pixel: its encoder is not the one"):
        script.load_encoder(wider, str(tmp_path / "pixel"))
