import pathlib
import subprocess
import sys
import zipfile

import geomim_hf
import geomim_hf.modeling

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_modeling_folder_is_the_geomim_hf_modeling_subpackage():
    assert pathlib.Path(geomim_hf.modeling.__file__).resolve() == REPO / "modeling" / "__init__.py"
    assert geomim_hf.__version__


def test_wheel_installs_modeling_under_geomim_hf(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("geomim_hf-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "geomim_hf/modeling/__init__.py" in names
    assert "geomim_hf/data/synthetic.py" in names
    assert not any(name.startswith("modeling/") for name in names)  # no bare top-level package
