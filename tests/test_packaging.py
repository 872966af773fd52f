import pathlib
import subprocess
import sys
import zipfile

import geomim_hf
import geomim_hf.convert
import geomim_hf.modeling

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_modeling_and_convert_folders_are_geomim_hf_subpackages():
    assert pathlib.Path(geomim_hf.modeling.__file__).resolve() == REPO / "modeling" / "__init__.py"
    assert pathlib.Path(geomim_hf.convert.__file__).resolve() == REPO / "convert" / "__init__.py"
    assert geomim_hf.__version__


def test_wheel_installs_modeling_under_geomim_hf(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("geomim_hf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    # Every module of the source tree ships (a subpackage missing from setup.cfg would not).
    expected = {f"geomim_hf/{p.relative_to(REPO / 'geomim_hf').as_posix()}" for p in (REPO / "geomim_hf").rglob("*.py")}
    for folder in ("modeling", "convert"):
        expected |= {f"geomim_hf/{folder}/{p.relative_to(REPO / folder).as_posix()}"
                     for p in (REPO / folder).rglob("*.py")}
    assert expected - names == set()
    assert not any(name.startswith(("modeling/", "convert/")) for name in names)  # no bare top-level packages
