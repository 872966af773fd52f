"""examples/quickstart.py end to end, with tiny budgets: world -> teacher -> pretraining -> two finetunings ->
devkit evaluation, and a rerun that continues instead of starting over."""

import json
import pathlib
import subprocess
import sys

from huggingface_hub import ModelCard
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_runs_the_whole_chain_and_resumes(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "quickstart.py"), "--out", str(tmp_path), "--scenes", "3",
               "--samples-per-scene", "3", "--workers", "1", "--teacher-steps", "2", "--pretrain-steps", "2",
               "--finetune-steps", "2"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mini_val: 2 scenes ['scene-0103', 'scene-0916']" in result.stdout
    with Image.open(tmp_path / "sample.png") as picture:
        assert picture.size[0] > 1000
    with Image.open(tmp_path / "detections.png") as picture:  # the pipeline's boxes on a mini_val keyframe
        assert picture.size[0] > 1000
    summary = json.load(open(tmp_path / "quickstart_summary.json"))
    assert len(summary["stage_seconds"]) == 5 and all(t > 0 for t in summary["stage_seconds"].values())
    table = result.stdout[result.stdout.index("camera detectors on mini_val"):]
    for name, folder in (("from scratch", "detector_scratch"), ("GeoMIM", "detector_geomim")):
        metrics = json.load(open(tmp_path / folder / "metrics.json"))
        assert summary[name]["NDS"] == metrics["NDS"]
        assert metrics["init"] == ("scratch" if folder == "detector_scratch" else str(tmp_path / "geomim"))
        card = ModelCard.load(tmp_path / folder / "README.md")
        assert {r.metric_name: r.metric_value for r in card.data.eval_results}["NDS"] == round(metrics["NDS"], 4)
    nds_row = next(line for line in table.splitlines() if line.startswith("NDS"))
    assert nds_row.split()[1:] == [f"{summary[n]['NDS']:.4f}" for n in ("from scratch", "GeoMIM")]
    for folder in ("teacher", "geomim"):
        assert (tmp_path / folder / "model.safetensors").is_file() and (tmp_path / folder / "README.md").is_file()

    # A second run reuses the world and every finished stage.
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "using the synthetic world already in" in again.stdout
    assert again.stdout.count("already done in") == 4
