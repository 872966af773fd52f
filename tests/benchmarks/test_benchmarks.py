"""The benchmark scripts run as a user runs them, on tiny settings; what they check before timing holds (no
timings are asserted: speed is measured by the scripts themselves)."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[2]


def _run(script, *arguments):
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / script), *map(str, arguments)],
                            capture_output=True, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def test_encoder_benchmark_checks_the_timm_layout_against_timm(tmp_path):
    _run("encoder.py", "--preset", "geomim-tiny", "--device", "cpu", "--iters", 1, "--warmup", 0,
         "--json", tmp_path / "encoder.json")
    results = json.loads((tmp_path / "encoder.json").read_text())
    assert results["max_difference_vs_timm"] < 1e-4 and results["window"] == 2  # tiny's last stage is 2 x 6
    assert set(results["encoders"]) == {"timm", "ours, timm layout", "ours, official layout",
                                        "ours, official layout, two-group masked"}
    refused = subprocess.run([sys.executable, str(REPO / "benchmarks" / "encoder.py"), "--preset", "geomim-tiny",
                              "--window", "4"], capture_output=True, text=True)
    assert refused.returncode != 0 and "--window 4 is larger than the last stage's 2 x 6 tokens" in refused.stderr


def test_train_step_breakdown_covers_the_model(nuscenes_root, tmp_path):
    for task, parts in (("detect", {"geomim", "neck", "depth_net", "lift_splat", "lift_splat: pooling indices",
                                    "bev_encoder", "head"}),
                        ("pretrain", {"geomim", "decoder", "depth_net", "lift_splat", "bev_downsample", "bev_head"})):
        _run("train_step.py", "--task", task, "--dataroot", nuscenes_root, "--split", "mini_val", "--steps", 1,
             "--warmup", 0, "--workers", 0, "--no-temporal", "--json", tmp_path / f"{task}.json")
        results = json.loads((tmp_path / f"{task}.json").read_text())
        expected = parts | {"loss (the forward outside the parts)", "backward", "optimizer"}
        assert expected <= set(results["parts_seconds"])
        assert abs(sum(results["parts_seconds"].values()) - results["step_with_hooks_seconds"]) < 1e-9
        assert all(row["wait"] >= 0 and row["compute"] > 0 for row in results["pipeline"].values())


def test_onnx_runtime_benchmark_checks_the_exports_against_pytorch(tmp_path):
    _run("onnx_runtime.py", "--preset", "geomim-tiny", "--temporal", "--iters", 1, "--warmup", 0,
         "--json", tmp_path / "onnx.json")
    results = json.loads((tmp_path / "onnx.json").read_text())
    assert set(results["seconds_per_call"]) == {"pytorch", "torch-export", "onnxruntime"}
    assert set(results["file_bytes"]) == {"torch-export", "onnxruntime"}
    differences = results["max_relative_difference"]
    assert set(differences) == {"heatmap", "regression", "attributes"}
    assert all(0 <= value < 1e-4 for runtime in differences.values() for value in runtime.values())
