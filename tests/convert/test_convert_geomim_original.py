import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from geomim_hf import GeoMIMConfig, GeoMIMForBEVDetection
from geomim_hf.convert.convert_geomim_original import convert_geomim_original
from tests.helpers import assert_same_weights

DEPTHS, HEADS, WINDOWS, EMBED = (1, 1, 2, 1), (1, 2, 2, 4), (4, 4, 4, 2), 16


def _config():
    return GeoMIMConfig.from_preset("geomim-tiny", embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS,
                                    window_size=WINDOWS, absolute_position_embedding_size=(16, 44))


def _official_backbone(generator):
    """The official mmdet-style Swin's names and shapes (Sense-X/GeoMIM swin_geomim.py / swin_bev.py)."""
    def tensor(*shape):
        return torch.randn(*shape, generator=generator)

    weights = {"patch_embed.projection.weight": tensor(EMBED, 3, 4, 4), "patch_embed.projection.bias": tensor(EMBED),
               "patch_embed.norm.weight": tensor(EMBED), "patch_embed.norm.bias": tensor(EMBED),
               "absolute_pos_embed": tensor(1, EMBED, 16, 44)}
    for i, depth in enumerate(DEPTHS):
        dim, window = EMBED * 2**i, WINDOWS[i]
        for j in range(depth):
            block = f"stages.{i}.blocks.{j}."
            weights.update({
                block + "norm1.weight": tensor(dim), block + "norm1.bias": tensor(dim),
                block + "attn.w_msa.relative_position_bias_table": tensor((2 * window - 1) ** 2, HEADS[i]),
                block + "attn.w_msa.relative_position_index": torch.zeros(window**2, window**2, dtype=torch.long),
                block + "attn.w_msa.qkv.weight": tensor(3 * dim, dim), block + "attn.w_msa.qkv.bias": tensor(3 * dim),
                block + "attn.w_msa.proj.weight": tensor(dim, dim), block + "attn.w_msa.proj.bias": tensor(dim),
                block + "norm2.weight": tensor(dim), block + "norm2.bias": tensor(dim),
                block + "ffn.layers.0.0.weight": tensor(4 * dim, dim), block + "ffn.layers.0.0.bias": tensor(4 * dim),
                block + "ffn.layers.1.weight": tensor(dim, 4 * dim), block + "ffn.layers.1.bias": tensor(dim)})
        if i < len(DEPTHS) - 1:  # patch merging at the end of the stage, nn.Unfold channel order
            weights.update({f"stages.{i}.downsample.norm.weight": tensor(4 * dim),
                            f"stages.{i}.downsample.norm.bias": tensor(4 * dim),
                            f"stages.{i}.downsample.reduction.weight": tensor(2 * dim, 4 * dim)})
    for i in (2, 3):
        weights.update({f"norm{i}.weight": tensor(EMBED * 2**i), f"norm{i}.bias": tensor(EMBED * 2**i)})
    return weights


def _pretraining_checkpoint(generator):
    backbone = _official_backbone(generator)
    decoder = {"mask_token": torch.zeros(1, 1, 32), "decoder_blocks.0.attn.qkv.weight": torch.zeros(96, 32),
               "cam_pose.bn.running_mean": torch.zeros(22), "up_p4_fc.weight": torch.zeros(32, 128)}
    state = {f"encoders.camera.backbone.{k}": v for k, v in {**backbone, **decoder}.items()}
    state.update({"encoders.camera.vtransform.depthnet.0.weight": torch.zeros(4, 4),
                  "encoders.lidar.backbone.conv_input.0.weight": torch.zeros(3, 3, 3, 5, 16),
                  "prediction_head.weight": torch.zeros(64, 80, 1, 1)})
    return backbone, state


def test_every_official_tensor_lands_where_it_should():
    backbone, state = _pretraining_checkpoint(torch.Generator().manual_seed(0))
    model, report = convert_geomim_original(state, _config(), "pretrain.pth")
    ours = model.state_dict()
    # Renamed tensors arrive unchanged.
    for i, depth in enumerate(DEPTHS):
        for j in range(depth):
            for official, target in (("attn.w_msa.qkv.weight", "attn.qkv.weight"), ("ffn.layers.0.0.bias", "mlp.fc1.bias"),
                                     ("ffn.layers.1.weight", "mlp.fc2.weight"), ("norm2.weight", "norm2.weight"),
                                     ("attn.w_msa.relative_position_bias_table", "attn.relative_position_bias_table")):
                assert torch.equal(ours[f"encoder.stages.{i}.blocks.{j}.{target}"],
                                   backbone[f"stages.{i}.blocks.{j}.{official}"])
    assert torch.equal(ours["encoder.patch_embed.weight"], backbone["patch_embed.projection.weight"])
    assert torch.equal(ours["encoder.absolute_pos_embed"], backbone["absolute_pos_embed"])
    assert torch.equal(ours["out_norms.3.bias"], backbone["norm3.bias"])
    # Everything else is accounted for, with a reason.
    assert set(report.converted.values()) | set(report.unused) == set(state)
    assert "encoders.lidar.backbone.conv_input.0.weight" in report.unused
    assert "MIM decoder" in report.unused["encoders.camera.backbone.mask_token"]
    assert report.initialised == {}  # the tiny preset's outputs are stages 2 and 3, as the official norms


def test_patch_merging_computes_what_the_official_unfold_merging_computes():
    """mmdet's PatchMerging: nn.Unfold(2, stride 2) -> LayerNorm -> Linear; ours: Swin's 2x2 concatenation."""
    backbone, state = _pretraining_checkpoint(torch.Generator().manual_seed(1))
    model, _ = convert_geomim_original(state, _config(), "pretrain.pth")
    x = torch.randn(2, 8, 12, EMBED)  # (B, H, W, C) tokens of stage 0
    unfolded = F.unfold(x.permute(0, 3, 1, 2), kernel_size=2, stride=2).transpose(1, 2)  # (B, H/2*W/2, 4C)
    expected = F.linear(F.layer_norm(unfolded, (4 * EMBED,), backbone["stages.0.downsample.norm.weight"],
                                     backbone["stages.0.downsample.norm.bias"]),
                        backbone["stages.0.downsample.reduction.weight"])
    with torch.no_grad():
        actual = model.encoder.stages[1].downsample(x)  # (B, H/2, W/2, 2C)
    torch.testing.assert_close(actual.reshape(2, -1, 2 * EMBED), expected, atol=1e-5, rtol=1e-5)


def test_bevdet_checkpoint_and_refusals():
    backbone, _ = _pretraining_checkpoint(torch.Generator().manual_seed(2))
    bevdet = {f"img_backbone.{k}": v for k, v in backbone.items()}
    bevdet.update({"img_neck.conv.weight": torch.zeros(1), "pts_bbox_head.task_heads.0.heatmap.1.bias": torch.zeros(10)})
    model, report = convert_geomim_original(bevdet, _config(), "bevdet.pth")
    assert torch.equal(model.state_dict()["encoder.stages.2.blocks.1.mlp.fc1.weight"],
                       backbone["stages.2.blocks.1.ffn.layers.0.0.weight"])
    assert "BEVDet CenterPoint head" in report.unused["pts_bbox_head.task_heads.0.heatmap.1.bias"]
    with pytest.raises(KeyError, match="match no known key.*img_backbone.stages.0.blocks.0.attn.w_msa.extra"):
        convert_geomim_original({**bevdet, "img_backbone.stages.0.blocks.0.attn.w_msa.extra": torch.zeros(1)},
                                _config())
    with pytest.raises(KeyError, match="match no known key.*'something.else'"):
        convert_geomim_original({**bevdet, "something.else": torch.zeros(1)}, _config())
    partial = {k: v for k, v in bevdet.items() if ".stages.2.blocks.1." not in k}
    with pytest.raises(KeyError, match="refusing a partial conversion.*encoder.stages.2.blocks.1"):
        convert_geomim_original(partial, _config())
    with pytest.raises(ValueError, match="shape mismatch.*absolute_pos_embed"):
        convert_geomim_original(bevdet, GeoMIMConfig.from_preset(
            "geomim-tiny", embed_dim=EMBED, depths=DEPTHS, num_heads=HEADS, window_size=WINDOWS,
            absolute_position_embedding_size=(8, 22)))
    with pytest.raises(KeyError, match="no mmdet-style Swin found"):
        convert_geomim_original({"layers.0.blocks.0.norm1.weight": torch.zeros(1)}, _config())


def test_command_line_output_initialises_the_detector(tmp_path):
    _, state = _pretraining_checkpoint(torch.Generator().manual_seed(3))
    torch.save({"meta": {"epoch": 50}, "state_dict": state}, tmp_path / "geomim_tiny.pth")
    _config().save_pretrained(tmp_path / "config")
    subprocess.run([sys.executable, "-m", "geomim_hf.convert.convert_geomim_original", "--checkpoint",
                    str(tmp_path / "geomim_tiny.pth"), "--config", str(tmp_path / "config"), "--output-dir",
                    str(tmp_path / "out")], check=True, capture_output=True)
    detector = GeoMIMForBEVDetection.from_pretrained(tmp_path / "out")
    converted, _ = convert_geomim_original(state, _config())
    assert_same_weights(converted, detector.geomim)
    report = json.load(open(tmp_path / "out" / "conversion_report.json"))
    assert report["converted"]["encoder.stages.1.downsample.reduction.weight"] == \
        "encoders.camera.backbone.stages.0.downsample.reduction.weight"
