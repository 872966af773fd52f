import pytest
from transformers import AutoConfig

import geomim_hf  # noqa: F401  (registers the Auto classes)
from geomim_hf import PRESETS, GeoMIMConfig


def test_official_defaults_and_derived_values():
    config = GeoMIMConfig()
    assert config.model_type == "geomim"
    assert config.stage_dims == (128, 256, 512, 1024) and config.stage_strides == (4, 8, 16, 32)
    assert config.pretraining_depth_bins.count == 118  # [1, 60) step 0.5
    assert config.pretraining_grid.size == (360, 360) and config.target_grid.size == (180, 180)  # 0.3 m, then 0.6 m
    assert config.target_grid.size[0] // config.target_patch_size == 10


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_auto_config(name, tmp_path):
    config = GeoMIMConfig.from_preset(name)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert type(loaded) is GeoMIMConfig
    fields = {k: v for k, v in config.to_dict().items() if k != "_name_or_path"}
    assert {k: loaded.to_dict()[k] for k in fields} == fields


def test_presets_differ_where_they_should():
    small, tiny = GeoMIMConfig.from_preset("geomim-small"), GeoMIMConfig.from_preset("geomim-tiny")
    assert small.image_size == (128, 352) and small.target_grid.size == tiny.target_grid.size
    assert GeoMIMConfig.from_preset("geomim-swin-l").stage_dims[-1] == 1536
    assert GeoMIMConfig.from_preset("geomim-swin-t").depths == (2, 2, 6, 2)
    tiny = GeoMIMConfig.from_preset("geomim-tiny", mask_ratio=0.4)
    assert tiny.image_size == (64, 176) and tiny.mask_ratio == 0.4 and tiny.target_grid.size == (32, 32)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"num_heads": (4, 8, 16)}, "num_heads has 3 entries for 4 stages"),
        ({"mask_cell_size": 16}, "mask_cell_size 16 must be a multiple of the deepest encoder stride 32"),
        ({"mask_ratio": 1.0}, "mask_ratio must lie in"),
        ({"kernel_backend": "cuda"}, "kernel_backend must be"),
        ({"depth_bins": (60.0, 1.0, 0.5)}, "depth_bins"),
        ({"target_patch_size": 17}, "divisible by target_patch_size 17"),
    ],
)
def test_bad_settings_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        GeoMIMConfig(**overrides)
    with pytest.raises(ValueError, match="unknown preset"):
        GeoMIMConfig.from_preset("geomim-huge")


def test_preset_or_folder(tmp_path):
    GeoMIMConfig.from_preset("geomim-tiny", embed_dim=48).save_pretrained(tmp_path)
    assert GeoMIMConfig.from_preset_or_folder(str(tmp_path)).embed_dim == 48
    assert GeoMIMConfig.from_preset_or_folder("geomim-tiny").embed_dim == 32
    with pytest.raises(ValueError, match="unknown preset 'no-such-thing'"):
        GeoMIMConfig.from_preset_or_folder("no-such-thing")
