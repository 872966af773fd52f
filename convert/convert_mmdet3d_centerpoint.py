"""mmdetection3d's nuScenes pillar CenterPoint into a GeoMIM LiDAR teacher (``GeoMIMLidarTeacher``).

    python -m geomim_hf.convert.convert_mmdet3d_centerpoint \
        --checkpoint centerpoint_02pillar_second_secfpn_circlenms_4x8_cyclic_20e_nus_20220811_031844-191a3822.pth \
        --output-dir OUT/centerpoint-pillar02

The checkpoint is mmdetection3d's ``centerpoint_pillar02_second_secfpn_8xb4-cyclic-20e_nus-3d`` (the
``head-circlenms`` config only changes test-time NMS: same weights); its layout is section 3 of
``docs/official_checkpoint_layouts.md``. The target config is
``GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02()`` (``--config`` takes that preset's name or a
folder with a ``config.json`` of your own, e.g. another ``target_layer``), which computes what
mmdetection3d computes: 11 point features, hard voxelization (20 points per pillar, 40000 pillars),
BatchNorm eps 1e-3, SECOND + SECONDFPN to stride 4, a six-task CenterHead, all in the LiDAR frame.

Every tensor converts unchanged, renamed by ``RULES``, except one: the neck's stride-1 block is a 1x1
``Conv2d`` in mmdetection3d (``use_conv_for_no_stride=True``) and a 1x1 ``ConvTranspose2d`` in ours,
the same map with the weight's two channel axes swapped. A checkpoint with a key no rule knows (the
DCN head variant, another detector), a shape the config does not have, or without a tensor the model
needs is refused, naming the keys. ``OUT`` loads with ``GeoMIMLidarTeacher.from_pretrained`` and is
what ``examples/pretrain.py --teacher OUT`` takes, given a student whose target grid it fits.
"""

from __future__ import annotations

import os
import re

import torch

from geomim_hf.convert.common import (
    ConversionReport,
    assign,
    checkpoint_parser,
    load_state_dict,
    refuse_unknown,
    save_conversion,
)
from geomim_hf.configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher

PRESETS = {"mmdet3d-centerpoint-pillar02": GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02}
# mmdetection3d's SeparateHead branches -> ours (the regression branches are REGRESSION_SLICES' names).
BRANCHES = {"reg": "regression.offset", "height": "regression.height", "dim": "regression.size",
            "rot": "regression.rotation", "vel": "regression.velocity", "heatmap": "heatmap"}
# Inside a branch: ConvModule(conv, bn) then the output conv; ours is Sequential(conv, bn, ReLU, conv).
BRANCH_LAYERS = {"0.conv.weight": "0.weight", "1.weight": "3.weight", "1.bias": "3.bias"}
BN = r"(weight|bias|running_mean|running_var|num_batches_tracked)"  # a conv's weight matches too
# mmdetection3d key (full match) -> ours. Backbone and neck Sequentials have the same indices in both.
RULES = [
    (rf"pts_voxel_encoder\.pfn_layers\.0\.(linear\.weight|norm\.{BN})", "encoder.pfn.{0}"),
    (rf"pts_backbone\.blocks\.(\d+)\.(\d+)\.{BN}", "encoder.backbone.stages.{0}.{1}.{2}"),
    (rf"pts_neck\.deblocks\.(\d+)\.([01])\.{BN}", "encoder.neck.blocks.{0}.{1}.{2}"),
    (r"pts_bbox_head\.shared_conv\.conv\.weight", "head.shared.0.weight"),
    (rf"pts_bbox_head\.shared_conv\.bn\.{BN}", "head.shared.1.{0}"),
]
TASK_RULE = re.compile(rf"pts_bbox_head\.task_heads\.(\d+)\.(reg|height|dim|rot|vel|heatmap)\."
                       rf"(0\.conv\.weight|0\.bn\.{BN}|1\.weight|1\.bias)")


def load_config(name: str) -> GeoMIMLidarTeacherConfig:
    """``--config``: a folder with a teacher ``config.json``, else a name in ``PRESETS``."""
    if os.path.isdir(name):
        return GeoMIMLidarTeacherConfig.from_pretrained(name)
    if name not in PRESETS:
        raise ValueError(f"--config {name!r} is neither a folder nor one of {sorted(PRESETS)}")
    return PRESETS[name]()


def target_name(key: str) -> str | None:
    """Our name for an mmdetection3d key, None when no rule knows it."""
    for pattern, template in RULES:
        if match := re.fullmatch(pattern, key):
            return template.format(*match.groups())
    if match := TASK_RULE.fullmatch(key):
        task, branch, layer = match[1], BRANCHES[match[2]], match[3]
        layer = BRANCH_LAYERS.get(layer) or "1." + layer[len("0.bn."):]  # 0.bn.* -> the BatchNorm, 1.*
        return f"head.tasks.{task}.{branch}.{layer}"
    return None


def convert_mmdet3d_centerpoint(state_dict: dict[str, torch.Tensor], config: GeoMIMLidarTeacherConfig | None = None,
                                source: str = "mmdet3d"):
    """Returns (``GeoMIMLidarTeacher`` holding the checkpoint, :class:`ConversionReport`)."""
    config = config or GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02()
    report = ConversionReport(source)
    model = GeoMIMLidarTeacher(config).eval()
    # The neck blocks whose stage is already at the head's stride: mmdetection3d's 1x1 Conv2d (out, in, 1, 1)
    # is our 1x1 ConvTranspose2d (in, out, 1, 1).
    unit_stride = {f"encoder.neck.blocks.{i}.0.weight" for i, stride in enumerate(model.encoder.stage_strides)
                   if stride == config.neck_stride}
    converted, unknown = {}, []
    for key, value in state_dict.items():
        target = target_name(key)
        if target is None:
            unknown.append(key)
            continue
        converted[target] = value.transpose(0, 1).contiguous() if target in unit_stride else value
        report.converted[target] = key
    deformable = [key for key in unknown if ".feature_adapt_" in key]  # DCNSeparateHead's offsets and DCNs
    if deformable:
        raise KeyError(f"{source}: a DCN head checkpoint (centerpoint_pillar02_second_secfpn_head-dcn: deformable "
                       f"convolutions in the task heads, e.g. {deformable[0]}), which GeoMIMLidarTeacher does not "
                       "implement; convert the plain or head-circlenms checkpoint")
    refuse_unknown(source, unknown)
    assign(model, converted, report, {})
    return model, report


def main(argv=None) -> None:
    parser = checkpoint_parser(__doc__, "mmdetection3d's centerpoint_02pillar_second_secfpn .pth",
                               "mmdet3d-centerpoint-pillar02",
                               f"a preset name ({', '.join(PRESETS)}) or a folder with a teacher config.json")
    args = parser.parse_args(argv)

    config = load_config(args.config)
    state_dict = load_state_dict(args.checkpoint, key=args.checkpoint_key)
    model, report = convert_mmdet3d_centerpoint(state_dict, config, args.checkpoint)
    save_conversion(model, report, args.output_dir)


if __name__ == "__main__":
    main()
