import contextlib
import io

import numpy as np
import pytest
import torch

from geomim_hf import GeoMIMConfig, GeoMIMForBEVDetection, GeoMIMForBEVSegmentation, GeoMIMImageProcessor
from geomim_hf.data.geometry import make_transform, rotation_z
from geomim_hf.export import export_program, input_names, main, output_names, run_onnx
from geomim_hf.pipelines import model_inputs
from geomim_hf.synthetic.sensors import four_camera_rig

onnxruntime = pytest.importorskip("onnxruntime")


def _rig_inputs(model, batch_size: int, seed: int) -> dict[str, torch.Tensor]:
    """The four-camera rig (four image sizes, other heights and focal lengths than the presets were built for) seen
    ``batch_size`` times, random images, and a previous frame 3 m behind and 5 degrees turned."""
    rng = np.random.default_rng(seed)
    cameras = four_camera_rig()
    processor = GeoMIMImageProcessor(image_size=model.config.image_size)
    samples = []
    for index in range(batch_size):
        images = [rng.integers(0, 256, (c.height // 8, c.width // 8, 3), dtype=np.uint8) for c in cameras]
        intrinsics = np.stack([np.diag([1 / 8, 1 / 8, 1.0]) @ c.intrinsics for c in cameras])
        sample = {"images": images, "intrinsics": intrinsics,
                  "ego_from_camera": np.stack([c.ego_from_camera for c in cameras]),
                  "prev_images": [rng.integers(0, 256, image.shape, dtype=np.uint8) for image in images],
                  "ego_from_prev_ego": make_transform(rotation_z(np.deg2rad(5.0 * index)), [-3.0, 0.2 * index, 0])}
        samples.append(model_inputs(sample, processor, temporal=model.config.det_temporal))
    return {name: torch.cat([s[name] for s in samples]) for name in input_names(model)}


def _relative_error(actual: np.ndarray, expected: torch.Tensor) -> float:
    expected = expected.numpy()
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def exported_dir(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("detector")
    model = GeoMIMForBEVDetection(GeoMIMConfig.from_preset("geomim-tiny"))
    for module in model.modules():  # trained-looking normalisation statistics, so that eval mode is not trivial
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 2.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def onnx_file(exported_dir, tmp_path_factory):
    """The CLI's ONNX file of ``exported_dir`` for four views, and what the CLI printed."""
    path = tmp_path_factory.mktemp("onnx") / "detector.onnx"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["--model", str(exported_dir), "--format", "onnx", "--output", str(path), "--num-views", "4"])
    return path, printed.getvalue()


def test_onnx_runs_in_onnxruntime_like_pytorch(exported_dir, onnx_file):
    """The CLI's ONNX file, in onnxruntime on a batch size and a rig it was not traced with, gives the PyTorch
    model's heads (whose pooling is the sorted-interval op, not the exported scatter)."""
    path, printed = onnx_file
    assert f"wrote {path}" in printed
    model = GeoMIMForBEVDetection.from_pretrained(exported_dir).eval()
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [node.name for node in session.get_inputs()] == list(input_names(model))
    inputs = _rig_inputs(model, batch_size=3, seed=0)
    with torch.no_grad():
        expected = model(**inputs)
    outputs = run_onnx(session, inputs)
    assert list(outputs) == list(output_names(model)) == ["heatmap", "regression", "attributes"]
    for name, actual in outputs.items():
        assert actual.shape == getattr(expected, name).shape
        assert _relative_error(actual, getattr(expected, name)) < 1e-4, name
    with torch.no_grad():  # the previous frame is live in the graph: a still ego changes the heads
        still = model(**{**inputs, "ego_from_prev_ego": torch.eye(4).expand(3, 4, 4)})
    assert _relative_error(run_onnx(session, {**inputs, "ego_from_prev_ego": torch.eye(4).expand(3, 4, 4)})["heatmap"],
                           still.heatmap) < 1e-4
    assert (still.heatmap - expected.heatmap).abs().max() > 1e-3


def test_the_onnx_pooling_is_a_scatter_that_onnxruntime_adds_in_order(onnx_file):
    """onnxruntime's CPU ScatterND adds its index rows on several threads without a guard, so frustum points that
    share a cell lose updates now and then (a CI run: 3e-3 of the heatmap); its ScatterElements gives each thread its
    own channels."""
    onnx = pytest.importorskip("onnx")
    nodes = onnx.load(str(onnx_file[0])).graph.node
    scatters = [(node.op_type, {a.name: a.s for a in node.attribute}.get("reduction")) for node in nodes
                if node.op_type.startswith("Scatter")]
    assert scatters == [("ScatterElements", b"add")] * 2, scatters  # the current and the previous frame


def test_torch_export_round_trips(exported_dir, tmp_path):
    model = GeoMIMForBEVDetection.from_pretrained(exported_dir).eval()
    path = tmp_path / "detector.pt2"
    torch.export.save(export_program(model, num_views=4), path)
    loaded = torch.export.load(path).module()
    inputs = _rig_inputs(model, batch_size=1, seed=1)
    with torch.no_grad():
        expected = model(**inputs)
        actual = loaded(*inputs.values())
    for name, tensor in zip(output_names(model), actual):
        assert torch.allclose(tensor, getattr(expected, name), rtol=1e-4, atol=1e-5 * getattr(expected, name).abs().max())


def test_a_segmenter_exports_its_logits(tmp_path):
    torch.manual_seed(0)
    model = GeoMIMForBEVSegmentation(GeoMIMConfig.from_preset("geomim-tiny", det_temporal=False)).eval()
    assert input_names(model) == ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original")
    inputs = _rig_inputs(model, batch_size=2, seed=2)
    loaded = export_program(model, num_views=4).module()
    with torch.no_grad():
        (logits,) = loaded(*inputs.values())
        assert torch.allclose(logits, model(**inputs).logits, atol=1e-5)


def test_export_arguments_are_checked(exported_dir, tmp_path, capsys):
    for arguments, message in ((["--format", "onnx", "--opset", "13"], "--opset must be >= 16"),
                               (["--format", "tensorrt"], "invalid choice: 'tensorrt'"),
                               (["--format", "onnx", "--num-views", "0"], "--num-views must be >= 1")):
        with pytest.raises(SystemExit):
            main(["--model", str(exported_dir), "--output", str(tmp_path / "model.onnx"), *arguments])
        assert message in capsys.readouterr().err
