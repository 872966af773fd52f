import pathlib
import subprocess
import sys

from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_writes_loads_and_draws_a_world(tmp_path):
    command = [sys.executable, str(REPO / "examples" / "quickstart.py"), "--out", str(tmp_path), "--scenes", "2",
               "--samples-per-scene", "2", "--workers", "1"]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "mini_val: 2 scenes ['scene-0103', 'scene-0916']" in result.stdout
    with Image.open(tmp_path / "sample.png") as picture:
        assert picture.size[0] > 1000
    # A second run reuses the world instead of writing it again.
    again = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "using the synthetic world already in" in again.stdout
