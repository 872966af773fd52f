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


# Modules `import geomim_hf` must not load: each costs import time that a script reading configs or data
# need not pay, and the optional ones may be missing.
HEAVY = ("torchvision", "datasets", "pyarrow", "spconv", "triton", "nuscenes", "matplotlib", "accelerate",
         "transformers.modeling_utils", "transformers.image_processing_utils", "geomim_hf.modeling_geomim",
         "geomim_hf.synthetic")


def _python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_import_is_light_and_names_resolve_on_first_use():
    out = _python("import sys, geomim_hf, geomim_hf.data\n"
                  f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
                  "print(geomim_hf.GeoMIMForBEVDetection.__module__, geomim_hf.data.load_nuscenes.__module__)\n"
                  "print(sorted(set(geomim_hf.__all__) - set(dir(geomim_hf))))")
    loaded, modules, missing = out.splitlines()
    assert loaded == "[]"
    assert modules == "geomim_hf.modeling_geomim geomim_hf.data.nuscenes_dataset"
    assert missing == "[]"


def test_auto_classes_find_geomim_in_any_order(tmp_path):
    """The models and the processor register when transformers imports their Auto module, so a fresh
    process that only ran `import geomim_hf` loads a saved detector through either Auto class first."""
    _python("from geomim_hf import GeoMIMConfig, GeoMIMForBEVDetection, GeoMIMImageProcessor\n"
            f"GeoMIMForBEVDetection(GeoMIMConfig.from_preset('geomim-tiny')).save_pretrained({str(tmp_path)!r})\n"
            f"GeoMIMImageProcessor().save_pretrained({str(tmp_path)!r})")
    for first, second in (("AutoImageProcessor", "AutoModelForObjectDetection"),
                          ("AutoModelForObjectDetection", "AutoImageProcessor")):
        out = _python(f"import geomim_hf, transformers\n"
                      f"for name in ({first!r}, {second!r}):\n"
                      f"    print(type(getattr(transformers, name).from_pretrained({str(tmp_path)!r})).__name__)")
        assert out.split()[-2:] == (["GeoMIMImageProcessor", "GeoMIMForBEVDetection"] if first == "AutoImageProcessor"
                                    else ["GeoMIMForBEVDetection", "GeoMIMImageProcessor"])
