import json
import subprocess
import sys

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from geomim_hf import GeoMIMConfig, GeoMIMModel
from geomim_hf.convert.convert_timm_swin import convert_timm_swin
from tests.helpers import assert_same_weights

IMAGE_SIZE = (128, 352)


def _timm_swin(window=4, image_size=IMAGE_SIZE):
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=image_size, embed_dim=32,
                              depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=window).eval()
    for parameter in model.parameters():  # away from the identity-like default init
        torch.nn.init.normal_(parameter, std=0.2)
    return model


def _config(**overrides):
    settings = dict(image_size=IMAGE_SIZE, num_views=2, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8),
                    window_size=(4, 4, 4, 4), shifted_windows=True, out_indices=(0, 1, 2, 3))
    return GeoMIMConfig(**{**settings, **overrides})


def test_converted_encoder_computes_timms_features():
    reference = _timm_swin()
    model, report = convert_timm_swin(reference.state_dict(), _config())
    assert set(report.unused) == {"head.fc.weight", "head.fc.bias", "norm.weight", "norm.bias"}
    assert set(report.initialised) == {"encoder.absolute_pos_embed"} | {
        f"out_norms.{i}.{p}" for i in range(4) for p in ("weight", "bias")}
    pixels = torch.randn(1, 2, 3, *IMAGE_SIZE)  # (B, N, 3, H, W)
    with torch.no_grad():
        expected = reference.forward_intermediates(pixels[0], indices=[0, 1, 2, 3], norm=False,
                                                   intermediates_only=True)
        actual = model(pixels).feature_maps
    for stage, (a, e) in enumerate(zip(actual, expected)):
        e = F.layer_norm(e.permute(0, 2, 3, 1), e.shape[1:2]).permute(0, 3, 1, 2)  # our new per-stage norm
        torch.testing.assert_close(a[0], e, atol=1e-4, rtol=1e-4, msg=f"stage {stage}")


def test_original_swin_layout_converts_the_same():
    """The original release keeps patch merging at the end of the previous stage."""
    state_dict = _timm_swin().state_dict()
    original = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "layers" and parts[2] == "downsample":
            parts[1] = str(int(parts[1]) - 1)
        original[".".join(parts)] = value
    new, _ = convert_timm_swin(state_dict, _config())
    old, report = convert_timm_swin(original, _config())
    assert_same_weights(new, old)
    # The report names the checkpoint's own keys.
    assert report.converted["encoder.stages.1.downsample.reduction.weight"] == "layers.0.downsample.reduction.weight"


def test_windows_are_resized_and_bad_sources_refused():
    state_dict = _timm_swin(window=7, image_size=(224, 224)).state_dict()
    model, _ = convert_timm_swin(state_dict, _config(image_size=(224, 224), window_size=(8, 8, 8, 4),
                                                     shifted_windows=False))
    assert model.encoder.stages[0].blocks[0].attn.relative_position_bias_table.shape == (15 * 15, 1)
    with pytest.raises(ValueError, match="embed_dim 32 but the config's embed_dim is 64"):
        convert_timm_swin(state_dict, _config(image_size=(224, 224), embed_dim=64))
    with pytest.raises(KeyError, match="match no known key.*'fc_norm.weight'"):
        convert_timm_swin({**state_dict, "fc_norm.weight": torch.zeros(1)}, _config(image_size=(224, 224)))
    with pytest.raises(KeyError, match="the model does not have.*encoder.stages.9.extra"):
        convert_timm_swin({**state_dict, "layers.9.extra": torch.zeros(1)}, _config(image_size=(224, 224)))
    with pytest.raises(ValueError, match="shape mismatch"):
        convert_timm_swin(state_dict, _config(image_size=(224, 224), window_size=(7,) * 4, num_heads=(2, 2, 4, 8)))
    incomplete = {k: v for k, v in state_dict.items() if not k.startswith("layers.3.blocks.1.mlp.")}
    with pytest.raises(KeyError, match="refusing a partial conversion.*stages.3.blocks.1.mlp"):
        convert_timm_swin(incomplete, _config(image_size=(224, 224), window_size=(7,) * 4))


def test_command_line(tmp_path):
    save_file(_timm_swin().state_dict(), str(tmp_path / "swin.safetensors"))
    _config().save_pretrained(tmp_path / "config")
    subprocess.run([sys.executable, "-m", "geomim_hf.convert.convert_timm_swin", "--checkpoint",
                    str(tmp_path / "swin.safetensors"), "--config", str(tmp_path / "config"), "--output-dir",
                    str(tmp_path / "out")], check=True, capture_output=True)
    loaded = GeoMIMModel.from_pretrained(tmp_path / "out")
    converted, _ = convert_timm_swin(_timm_swin().state_dict(), _config())
    assert_same_weights(converted, loaded)
    report = json.load(open(tmp_path / "out" / "conversion_report.json"))
    assert report["converted"]["encoder.stages.1.downsample.reduction.weight"] == "layers.1.downsample.reduction.weight"
