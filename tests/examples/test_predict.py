"""examples/predict.py: a user's own rig described in a JSON file, through the pipeline, to boxes and a picture."""

import json

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from geomim_hf.synthetic.sensors import four_camera_rig, render_views
from geomim_hf.synthetic.world import location_grid, simulate_scene
from tests.helpers import load_example


def test_predict_reads_a_rig_file_and_draws(detector_dir, tmp_path):
    scene = simulate_scene(2, 0, location_grid(0, "singapore-onenorth"), np.array([0.0]), pre_roll=0.0)
    views = render_views(scene, four_camera_rig(), 0.0)
    (tmp_path / "images").mkdir()
    names = []
    for name, image in zip(views["camera_names"], views["images"]):
        Image.fromarray(image).save(tmp_path / "images" / f"{name}.jpg")
        names.append(f"images/{name}.jpg")
    sample = {"images": names, "intrinsics": views["intrinsics"].tolist(),
              "ego_from_camera": views["ego_from_camera"].tolist()}
    (tmp_path / "rig.json").write_text(json.dumps([sample, sample]))
    script = load_example("predict")
    found = script.main(["--model", str(detector_dir), "--sample", str(tmp_path / "rig.json"), "--output",
                         str(tmp_path / "detections.json"), "--plot", str(tmp_path / "picture.png"),
                         "--score-threshold", "0.05", "--batch-size", "2"])
    # The pipeline called directly, batched as the script batches (a batch of one differs in the last float bits).
    absolute = {**sample, "images": [str(tmp_path / name) for name in names]}
    direct = pipeline("bev-object-detection", model=str(detector_dir))([absolute, absolute], score_threshold=0.05,
                                                                        batch_size=2)[0]
    assert len(found) == 2 and found[0] == found[1]
    assert [d["score"] for d in found[0]] == pytest.approx([d["score"] for d in direct], abs=1e-6)
    assert json.loads((tmp_path / "detections.json").read_text()) == json.loads(json.dumps(found))
    for index in (0, 1):
        assert Image.open(tmp_path / f"picture_{index}.png").size[0] > 500
    (tmp_path / "bad.json").write_text(json.dumps({"views": names}))
    with pytest.raises(ValueError, match="bad.json: sample 0 must be an object with 'images'"):
        script.main(["--model", str(detector_dir), "--sample", str(tmp_path / "bad.json")])
