"""BEVFusion's LiDAR-only checkpoint (key names and shapes of docs/official_checkpoint_layouts.md, section 4)
into GeoMIMSparseTeacher: every tensor where it belongs, every weight layout found in the wild, and the
layout checked numerically against the source convention's own definition of a sparse convolution."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from geomim_hf.convert.convert_bevfusion_lidar import convert_bevfusion_lidar
from geomim_hf.modeling.sparse_encoder import require_spconv
from geomim_hf.configuration_sparse_teacher import GeoMIMSparseTeacherConfig
from geomim_hf.modeling_sparse_teacher import GeoMIMSparseTeacher
from geomim_hf.teachers import load_teacher
from tests.helpers import assert_same_weights
from tests.modeling.test_sparse_encoder import needs_spconv

# BEVFusion's structure with few channels on a small grid: (32, 16, 41) voxel sites -> (4, 2, 2) output cells.
TINY = dict(point_cloud_range=(-4.8, -2.4, -1.0, 4.8, 2.4, 1.0), voxel_size=(0.3, 0.3, 0.05), sparse_shape=(32, 16, 41),
            in_channels=5, base_channels=4, output_channels=6,
            encoder_channels=((4, 4, 6), (6, 6, 8), (8, 8, 10), (10, 10)), downsample_paddings=(1, 1, (1, 1, 0)),
            x_range=(-4.8, 4.8), y_range=(-2.4, 2.4))


def _config(**overrides):
    return GeoMIMSparseTeacherConfig(**{**TINY, **overrides})


def bevfusion_state_dict(generator, in_channels, base, output, encoder_channels, kernel_order="xyz"):
    """BEVFusion's SparseEncoder (basicblock, conv-norm-act) as its checkpoint holds it: mmcv spconv 1.x
    weights (k0, k1, k2, in, out), BatchNorm1d buffers, names from make_encoder_layers."""
    def conv(cin, cout, kernel=(3, 3, 3)):
        return torch.randn(*kernel, cin, cout, generator=generator)

    def norm(prefix, channels):
        return {f"{prefix}.weight": torch.rand(channels, generator=generator) + 0.5,
                f"{prefix}.bias": torch.randn(channels, generator=generator),
                f"{prefix}.running_mean": torch.randn(channels, generator=generator),
                f"{prefix}.running_var": torch.rand(channels, generator=generator) + 0.5,
                f"{prefix}.num_batches_tracked": torch.tensor(1234)}

    state = {"conv_input.0.weight": conv(in_channels, base), **norm("conv_input.1", base)}
    channels = base
    for i, stage in enumerate(encoder_channels):
        for j, width in enumerate(stage):
            name = f"encoder_layers.encoder_layer{i + 1}.{j}"
            if j == len(stage) - 1 and i != len(encoder_channels) - 1:  # the stride-2 SparseConv3d module
                state.update({f"{name}.0.weight": conv(channels, width), **norm(f"{name}.1", width)})
            else:  # SparseBasicBlock(width, width)
                state.update({f"{name}.conv1.weight": conv(width, width), **norm(f"{name}.bn1", width),
                              f"{name}.conv2.weight": conv(width, width), **norm(f"{name}.bn2", width)})
            channels = width
    out_kernel = (1, 1, 3) if kernel_order == "xyz" else (3, 1, 1)  # BEVFusion (x, y, z); mmdet3d (z, y, x)
    state.update({"conv_out.0.weight": conv(channels, output, out_kernel), **norm("conv_out.1", output)})
    return state


def _tiny_state(seed, kernel_order="xyz"):
    return bevfusion_state_dict(torch.Generator().manual_seed(seed), 5, 4, 6, TINY["encoder_channels"], kernel_order)


def _lidar_only_checkpoint(encoder):
    """lidar-only-det.pth's top level: the encoder under encoders.lidar.backbone, then the decoder and head."""
    state = {f"encoders.lidar.backbone.{k}": v for k, v in encoder.items()}
    state.update({"decoder.backbone.blocks.0.0.weight": torch.zeros(2, 12, 3, 3),
                  "decoder.neck.deblocks.0.0.weight": torch.zeros(2, 2, 1, 1),
                  "heads.object.heatmap_head.1.weight": torch.zeros(10, 2, 3, 3)})
    return state


def _spconv1_to_torch(weight):
    """spconv 1.x's definition: output site o gets sum_k input[o * s - p + k] @ W[k] with W[k] (in, out), i.e.
    conv3d (a cross-correlation) with weight (out, in, k0, k1, k2) on a grid indexed like the kernel axes."""
    return weight.permute(4, 3, 0, 1, 2)


def test_every_tensor_lands_where_it_belongs():
    encoder = _tiny_state(0)
    state = _lidar_only_checkpoint(encoder)
    model, report = convert_bevfusion_lidar(state, _config(), "lidar-only-det.pth")
    ours = model.state_dict()
    spconv1 = "spconv 1.x / mmcv (kx, ky, kz, in, out)"
    assert report.notes["weight_layout"].startswith(spconv1) and report.notes["prefix"] == "encoders.lidar.backbone."

    def weight(key):  # the source tensor in our (out, kx, ky, kz, in) layout, by an explicit index map
        source = encoder[key]
        return torch.einsum("abcio->oabci", source)

    assert torch.equal(ours["encoder.stem.conv.weight"], weight("conv_input.0.weight"))
    assert torch.equal(ours["encoder.stem.norm.running_var"], encoder["conv_input.1.running_var"])
    for i, stage in enumerate(TINY["encoder_channels"]):
        last = i == len(TINY["encoder_channels"]) - 1
        for j in range(len(stage) if last else len(stage) - 1):
            source, target = f"encoder_layers.encoder_layer{i + 1}.{j}", f"encoder.stages.{i}.blocks.{j}"
            for n in (1, 2):
                assert torch.equal(ours[f"{target}.conv{n}.weight"], weight(f"{source}.conv{n}.weight"))
                for buffer in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    assert torch.equal(ours[f"{target}.norm{n}.{buffer}"], encoder[f"{source}.bn{n}.{buffer}"])
        if not last:
            source = f"encoder_layers.encoder_layer{i + 1}.{len(stage) - 1}"
            assert torch.equal(ours[f"encoder.stages.{i}.downsample.conv.weight"], weight(f"{source}.0.weight"))
            assert torch.equal(ours[f"encoder.stages.{i}.downsample.norm.bias"], encoder[f"{source}.1.bias"])
    assert torch.equal(ours["encoder.out_conv.conv.weight"], weight("conv_out.0.weight"))
    assert ours["encoder.out_conv.conv.weight"].shape == (6, 1, 1, 3, 10)
    # Every source tensor accounted for; the parts after the target left out with their reason.
    assert set(report.converted.values()) | set(report.unused) == set(state)
    assert len(report.converted) == len(ours) and report.initialised == {}
    assert "2-D BEV backbone (SECOND)" in report.unused["decoder.backbone.blocks.0.0.weight"]
    assert "not boxes" in report.unused["heads.object.heatmap_head.1.weight"]


def test_every_layout_and_prefix_gives_the_same_weights():
    encoder = _tiny_state(1)
    reference, _ = convert_bevfusion_lidar(_lidar_only_checkpoint(encoder), _config())
    spconv2 = {k: v.permute(4, 0, 1, 2, 3) if v.dim() == 5 else v for k, v in encoder.items()}  # (out, k, k, k, in)
    # mmdetection3d's own SparseEncoder runs on (z, y, x) voxels: the same weights with the kernel axes reversed.
    zyx = {k: v.permute(2, 1, 0, 3, 4) if v.dim() == 5 else v for k, v in encoder.items()}
    zyx_spconv2 = {k: v.permute(4, 0, 1, 2, 3) if v.dim() == 5 else v for k, v in zyx.items()}
    cases = {"spconv 2.x (out, kx, ky, kz, in)": {f"pts_middle_encoder.{k}": v for k, v in spconv2.items()},
             "spconv 1.x / mmcv (kz, ky, kx, in, out)": {f"pts_middle_encoder.{k}": v for k, v in zyx.items()},
             "spconv 2.x (out, kz, ky, kx, in)": zyx_spconv2}  # a bare encoder state dict
    for layout, state in cases.items():
        model, report = convert_bevfusion_lidar(state, _config(), layout)
        assert report.notes["weight_layout"].startswith(layout)
        assert_same_weights(reference, model)
    # Older BatchNorms without a step counter convert too, the counter reported as initialised.
    no_counter = {k: v for k, v in encoder.items() if not k.endswith("num_batches_tracked")}
    model, report = convert_bevfusion_lidar(no_counter, _config())
    assert "encoder.stem.norm.num_batches_tracked" in report.initialised
    torch.testing.assert_close(model.state_dict()["encoder.stem.conv.weight"],
                               reference.state_dict()["encoder.stem.conv.weight"])


@needs_spconv
@pytest.mark.parametrize("kernel_order", ["xyz", "zyx"])
def test_converted_convs_compute_what_the_source_convention_computes(kernel_order):
    """The check that the layout is right: each converted conv, run by spconv 2 on our (x, y, z) voxels,
    equals the source's definition evaluated on the source's own grid order, at every output site."""
    spconv = require_spconv()
    encoder = _tiny_state(2, kernel_order)
    model, _ = convert_bevfusion_lidar(encoder, _config())
    gen = torch.Generator().manual_seed(3)
    shape = (12, 10, 9)  # (X, Y, Z)
    flat = torch.randperm(12 * 10 * 9, generator=gen)[:200]
    sites = torch.stack(torch.unravel_index(flat, shape), 1)  # (V, 3) x, y, z
    cases = [("conv_input.0.weight", model.encoder.stem.conv, 5, 1, 1),
             ("encoder_layers.encoder_layer2.0.conv2.weight", model.encoder.stages[1].blocks[0].conv2, 6, 1, 1),
             ("encoder_layers.encoder_layer3.2.0.weight", model.encoder.stages[2].downsample.conv, 8, 2, (1, 1, 0)),
             ("conv_out.0.weight", model.encoder.out_conv.conv, 10, (1, 1, 2), 0)]
    for key, conv, channels, stride, padding in cases:
        features = torch.randn(len(sites), channels, generator=gen)
        batch_sites = torch.cat([torch.zeros(len(sites), 1, dtype=torch.long), sites], 1).int()  # (V, 4) b, x, y, z
        with torch.no_grad():
            out = conv(spconv.SparseConvTensor(features, batch_sites, list(shape), 1))
        grid = torch.zeros(1, channels, *shape)  # (1, C, X, Y, Z)
        grid[0, :, sites[:, 0], sites[:, 1], sites[:, 2]] = features.T
        if kernel_order == "zyx":  # the source's grid is (Z, Y, X), its stride and padding too
            source_grid = grid.permute(0, 1, 4, 3, 2)
            stride_s = tuple(reversed(stride)) if isinstance(stride, tuple) else stride
            padding_s = tuple(reversed(padding)) if isinstance(padding, tuple) else padding
            expected = F.conv3d(source_grid, _spconv1_to_torch(encoder[key]), stride=stride_s, padding=padding_s)
            expected = expected.permute(0, 1, 4, 3, 2)  # back to (1, C, X, Y, Z)
        else:
            expected = F.conv3d(grid, _spconv1_to_torch(encoder[key]), stride=stride, padding=padding)
        at = out.indices.long()
        torch.testing.assert_close(out.features, expected[0, :, at[:, 1], at[:, 2], at[:, 3]].T, atol=1e-4, rtol=1e-4)


def test_refusals():
    encoder = _tiny_state(4)
    state = _lidar_only_checkpoint(encoder)
    with pytest.raises(KeyError, match=r"match no known key.*encoders.lidar.backbone.conv_input.2.weight"):
        convert_bevfusion_lidar({**state, "encoders.lidar.backbone.conv_input.2.weight": torch.zeros(1)}, _config())
    with pytest.raises(KeyError, match=r"match no known key.*'something.else'"):
        convert_bevfusion_lidar({**state, "something.else": torch.zeros(1)}, _config())
    with pytest.raises(KeyError, match=r"match no known key.*pts_voxel_encoder.vfe_layers.0.linear.weight"):
        convert_bevfusion_lidar({**{f"pts_middle_encoder.{k}": v for k, v in encoder.items()},
                                 "pts_voxel_encoder.vfe_layers.0.linear.weight": torch.zeros(4, 5)}, _config())
    partial = {k: v for k, v in state.items() if "encoder_layer2.1.bn2" not in k}
    with pytest.raises(KeyError, match=r"refusing a partial conversion.*encoder.stages.1.blocks.1.norm2"):
        convert_bevfusion_lidar(partial, _config())
    # A basic block where the config expects the stride-2 conv (and vice versa) matches no rule.
    moved = {k.replace("encoder_layer1.2.0.", "encoder_layer1.1.0."): v for k, v in state.items()}
    with pytest.raises(KeyError, match=r"match no known key.*encoder_layer1.1.0.weight"):
        convert_bevfusion_lidar(moved, _config())
    with pytest.raises(ValueError, match=r"shape mismatch.*encoder.stem.conv.weight"):
        wrong = dict(state, **{"encoders.lidar.backbone.conv_input.0.weight": torch.zeros(3, 3, 3, 4, 4)})
        convert_bevfusion_lidar(wrong, _config())
    with pytest.raises(ValueError, match=r"conv_out.0.weight: shape \(1, 1, 3, 10, 6\) is none of the sparse-conv"):
        convert_bevfusion_lidar(state, _config(output_channels=8))
    with pytest.raises(KeyError, match="no BEVFusion SparseEncoder found"):
        convert_bevfusion_lidar({"decoder.backbone.blocks.0.0.weight": torch.zeros(1)}, _config())


def test_official_key_set_converts_into_the_default_config():
    """The full TransFusion-L encoder (channels of voxelnet_0p075.yaml) converts into the default config."""
    official = bevfusion_state_dict(torch.Generator().manual_seed(5), 5, 16, 128,
                                    ((16, 16, 32), (32, 32, 64), (64, 64, 128), (128, 128)))
    model, report = convert_bevfusion_lidar(_lidar_only_checkpoint(official))
    assert len(report.converted) == len(official) == 126  # 21 convs, 21 BatchNorms x 5
    assert model.config.target_channels == 256 and model.encoder.out_conv.conv.weight.shape == (128, 1, 1, 3, 128)
    assert report.converted["encoder.stages.2.downsample.conv.weight"] == \
        "encoders.lidar.backbone.encoder_layers.encoder_layer3.2.0.weight"


def test_command_line(tmp_path):
    state = _lidar_only_checkpoint(_tiny_state(6))
    torch.save({"meta": {"epoch": 20}, "state_dict": state}, tmp_path / "lidar-only-det.pth")
    _config().save_pretrained(tmp_path / "config")
    result = subprocess.run([sys.executable, "-m", "geomim_hf.convert.convert_bevfusion_lidar", "--checkpoint",
                             str(tmp_path / "lidar-only-det.pth"), "--config", str(tmp_path / "config"), "--output-dir",
                             str(tmp_path / "out")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "spconv 1.x" in result.stdout
    assert (tmp_path / "out" / "model.safetensors").is_file()
    teacher = load_teacher(str(tmp_path / "out"))
    assert isinstance(teacher, GeoMIMSparseTeacher)
    converted, _ = convert_bevfusion_lidar(state, _config())
    assert_same_weights(converted, teacher)
    report = json.load(open(tmp_path / "out" / "conversion_report.json"))
    assert report["converted"]["encoder.out_conv.conv.weight"] == "encoders.lidar.backbone.conv_out.0.weight"
    assert "heads.object.heatmap_head.1.weight" in report["unused"]
