"""examples/finetune_detection.py's model building (the script itself runs in tests/examples/test_reproduce.py and
test_finetune_segmentation.py)."""

import json
import logging

import torch
from accelerate import PartialState

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling
from tests.helpers import load_example


def test_head_config_makes_a_pretrained_arm_the_presets_model(tmp_path, caplog):
    """A pretraining checkpoint written before ``seg_head_channels`` existed gave the GeoMIM arm of the study an
    8x wider segmentation head than random init's (the class default 256, not the preset's 32). ``--head-config``
    takes every det_*/seg_* field from the preset; the encoder stays the checkpoint's."""
    PartialState()  # the script's accelerate logger needs it
    preset = GeoMIMConfig.from_preset("geomim-tiny")
    torch.manual_seed(0)
    pretrained = GeoMIMForMaskedBEVModeling(preset)
    pretrained.save_pretrained(tmp_path / "pretrained")
    saved = json.loads((tmp_path / "pretrained" / "config.json").read_text())
    del saved["seg_head_channels"]
    saved["det_head_channels"] = 48
    (tmp_path / "pretrained" / "config.json").write_text(json.dumps(saved))

    script = load_example("finetune_detection")
    base = ["--dataroot", "unused", "--output-dir", str(tmp_path / "out"), "--no-temporal"]
    pretrained_args = [*base, "--init", str(tmp_path / "pretrained")]
    with caplog.at_level(logging.WARNING):
        as_saved = script.build_model(script.parse_args(pretrained_args), script.SEGMENTATION)
    assert as_saved.config.seg_head_channels == GeoMIMConfig().seg_head_channels != preset.seg_head_channels
    assert "has no seg_head_channels" in caplog.text

    scratch = script.build_model(script.parse_args([*base, "--init", "scratch", "--model-config", "geomim-tiny"]),
                                 script.SEGMENTATION)
    for task in (script.SEGMENTATION, script.DETECTION):
        model = script.build_model(script.parse_args([*pretrained_args, "--head-config", "geomim-tiny"]), task)
        assert model.config.finetuning_fields() == {**preset.finetuning_fields(), "det_temporal": False}
        if task is script.SEGMENTATION:  # the same architecture as the random-init arm's, parameter by parameter
            assert {k: v.shape for k, v in model.state_dict().items()} == \
                {k: v.shape for k, v in scratch.state_dict().items()}
        for name, tensor in pretrained.geomim.state_dict().items():
            torch.testing.assert_close(model.geomim.state_dict()[name], tensor, msg=name)
