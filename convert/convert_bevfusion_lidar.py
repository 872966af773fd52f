"""BEVFusion's LiDAR-only TransFusion-L (the official GeoMIM teacher) into ``GeoMIMSparseTeacher``.

    python -m geomim_hf.convert.convert_bevfusion_lidar --checkpoint lidar-only-det.pth --output-dir OUT/bevfusion-lidar

Reads the sparse 3-D encoder, whatever checkpoint holds it: BEVFusion's ``lidar-only-det.pth``
(``encoders.lidar.backbone.``), a BEVFusion fusion or GeoMIM pretraining checkpoint (the same prefix),
mmdetection3d's BEVFusion project (``pts_middle_encoder.``) or a bare encoder state dict. Keys are
renamed (table ``RULES``) and each sparse-conv weight is brought to our spconv 2 layout
``(out, kx, ky, kz, in)``, from either layout found in the wild, told apart by the shape of the last
conv's (1, 1, 3) kernel:

- spconv 1.x / mmcv ``(kx, ky, kz, in, out)``: BEVFusion's bundled spconv, so its released checkpoints;
- spconv 2.x ``(out, kx, ky, kz, in)``: mmdetection3d >= 1.1 trained with spconv 2;
- either with the kernel axes in ``(z, y, x)`` order: mmdetection3d's own ``SparseEncoder`` (e.g.
  CenterPoint voxel0075), the same network on (z, y, x)-indexed voxels; the axes are reversed.

The 2-D BEV backbone, neck and detection head come after GeoMIM's target and are reported as unused,
with the reason; any other key, a missing tensor or a shape the config does not produce is refused.
``OUT`` loads with ``GeoMIMSparseTeacher.from_pretrained`` and serves as ``--teacher`` of
``examples/pretrain.py`` (with the ``geomim-swin-b`` student) and ``examples/cache_teacher_features.py``.
"""

from __future__ import annotations

import re

import torch

from geomim_hf.convert.common import (
    ConversionReport,
    assign,
    checkpoint_parser,
    find_prefix,
    load_state_dict,
    refuse_unknown,
    save_conversion,
    split_checkpoint,
)
from geomim_hf.configuration_sparse_teacher import GeoMIMSparseTeacherConfig
from geomim_hf.modeling_sparse_teacher import GeoMIMSparseTeacher

# Where the sparse encoder sits, tried in order.
ENCODER_PREFIXES = ("encoders.lidar.backbone.", "pts_middle_encoder.", "")
# Parts of the source checkpoints that are not the sparse encoder, and why they are left out.
OTHER_PARTS = {
    "decoder.backbone.": "BEVFusion's 2-D BEV backbone (SECOND): it reads the sparse encoder's output, GeoMIM's target",
    "decoder.neck.": "BEVFusion's 2-D BEV neck (SECONDFPN): after GeoMIM's target",
    "heads.": "BEVFusion's task heads (TransFusion detection, BEV segmentation): the teacher gives features, "
              "not boxes",
    "encoders.camera.": "the camera branch of a fusion or GeoMIM pretraining checkpoint: not part of the LiDAR teacher",
    "encoders.radar.": "the radar branch of a fusion checkpoint: not part of the LiDAR teacher",
    "fuser.": "BEVFusion's camera-LiDAR fuser: after the sparse encoder",
    "prediction_head.": "GeoMIM pretraining's student projection: not part of the teacher",
    "pts_backbone.": "mmdetection3d's 2-D BEV backbone (SECOND): it reads the sparse encoder's output, GeoMIM's target",
    "pts_neck.": "mmdetection3d's 2-D BEV neck (SECONDFPN): after GeoMIM's target",
    "bbox_head.": "mmdetection3d BEVFusion's TransFusion head: the teacher gives features, not boxes",
    "pts_bbox_head.": "mmdetection3d's detection head: the teacher gives features, not boxes",
    "img_backbone.": "camera branch of mmdetection3d's fusion model: not part of the LiDAR teacher",
    "img_neck.": "camera branch of mmdetection3d's fusion model: not part of the LiDAR teacher",
    "view_transform.": "camera branch of mmdetection3d's fusion model: not part of the LiDAR teacher",
    "fusion_layer.": "mmdetection3d's camera-LiDAR fuser: after the sparse encoder",
}
NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"
# Source key (after the prefix) -> ours (after ``encoder.``). {0}, {1}, ... are the groups; stage numbers
# are 1-based in the source (``encoder_layer1``), 0-based in ours.
RULES = [
    (r"conv_input\.0\.weight$", "stem.conv.weight"),
    (rf"conv_input\.1\.{NORM}$", "stem.norm.{0}"),
    (r"encoder_layers\.encoder_layer(\d+)\.(\d+)\.conv([12])\.weight$", "stages.{s}.blocks.{1}.conv{2}.weight"),
    (rf"encoder_layers\.encoder_layer(\d+)\.(\d+)\.bn([12])\.{NORM}$", "stages.{s}.blocks.{1}.norm{2}.{3}"),
    (r"encoder_layers\.encoder_layer(\d+)\.(\d+)\.0\.weight$", "stages.{s}.downsample.conv.weight"),
    (rf"encoder_layers\.encoder_layer(\d+)\.(\d+)\.1\.{NORM}$", "stages.{s}.downsample.norm.{2}"),
    (r"conv_out\.0\.weight$", "out_conv.conv.weight"),
    (rf"conv_out\.1\.{NORM}$", "out_conv.norm.{0}"),
]
LAYOUTS = {
    ("spconv1", "xyz"): "spconv 1.x / mmcv (kx, ky, kz, in, out): BEVFusion's bundled spconv; permuted to "
                        "(out, kx, ky, kz, in)",
    ("spconv1", "zyx"): "spconv 1.x / mmcv (kz, ky, kx, in, out): mmdetection3d's (z, y, x) SparseEncoder; "
                        "permuted to (out, kx, ky, kz, in)",
    ("spconv2", "xyz"): "spconv 2.x (out, kx, ky, kz, in): already ours, copied",
    ("spconv2", "zyx"): "spconv 2.x (out, kz, ky, kx, in): mmdetection3d's (z, y, x) SparseEncoder; kernel axes "
                        "reversed",
}


def source_shape(ours: tuple[int, ...], layout: tuple[str, str]) -> tuple[int, ...]:
    """The shape a weight of our shape (out, kx, ky, kz, in) has in a source layout."""
    out, kx, ky, kz, inp = ours
    kernel = (kx, ky, kz) if layout[1] == "xyz" else (kz, ky, kx)
    return (*kernel, inp, out) if layout[0] == "spconv1" else (out, *kernel, inp)


def to_our_layout(weight: torch.Tensor, layout: tuple[str, str]) -> torch.Tensor:
    """A source sparse-conv weight as ours, (out, kx, ky, kz, in)."""
    if layout[0] == "spconv1":
        weight = weight.permute(4, 0, 1, 2, 3)  # (k, k, k, in, out) -> (out, k, k, k, in)
    if layout[1] == "zyx":
        weight = weight.permute(0, 3, 2, 1, 4)  # (out, kz, ky, kx, in) -> (out, kx, ky, kz, in)
    return weight.contiguous()


def detect_layout(weight: torch.Tensor, expected: tuple[int, ...], key: str) -> tuple[str, str]:
    """Which layout the last conv's weight is in: its (1, 1, 3) kernel tells the axis order too."""
    matches = [layout for layout in LAYOUTS if source_shape(expected, layout) == tuple(weight.shape)]
    if len(matches) == 1:
        return matches[0]
    candidates = {f"{a} {b}": source_shape(expected, (a, b)) for a, b in LAYOUTS}
    if not matches:
        raise ValueError(f"{key}: shape {tuple(weight.shape)} is none of the sparse-conv layouts this config "
                         f"expects {candidates} (is the config the checkpoint's? output_channels, encoder_channels)")
    raise ValueError(f"{key}: shape {tuple(weight.shape)} fits several weight layouts {matches}; cannot tell them "
                     "apart")


def convert_bevfusion_lidar(state_dict: dict[str, torch.Tensor], config: GeoMIMSparseTeacherConfig | None = None,
                            source: str = "bevfusion"):
    """Returns (``GeoMIMSparseTeacher`` holding the checkpoint's sparse encoder, :class:`ConversionReport`)."""
    config = config or GeoMIMSparseTeacherConfig()
    report = ConversionReport(source)
    prefix = find_prefix(state_dict, ENCODER_PREFIXES, "conv_input.0.weight", source,
                         "BEVFusion SparseEncoder", "is this a LiDAR-only BEVFusion checkpoint?")
    model = GeoMIMSparseTeacher(config).eval()
    expected = model.state_dict()
    last_conv = prefix + "conv_out.0.weight"
    if last_conv not in state_dict:
        raise KeyError(f"{source}: {last_conv} is missing: refusing a partial conversion")
    layout = detect_layout(state_dict[last_conv], tuple(expected["encoder.out_conv.conv.weight"].shape), last_conv)
    report.notes["weight_layout"] = LAYOUTS[layout]
    report.notes["prefix"] = prefix or "<root>"

    encoder, unknown = split_checkpoint(state_dict, prefix, OTHER_PARTS, report)
    converted = {}
    for name, (key, value) in encoder.items():
        if target := _target_name(name, config):
            if target in converted:
                raise KeyError(f"{source}: {key} and {report.converted[target]} both map to {target}")
            converted[target] = to_our_layout(value, layout) if value.dim() == 5 else value
            report.converted[target] = key
        else:
            unknown.append(key)
    refuse_unknown(source, unknown)
    # Older BatchNorms saved no step counter; it plays no part in eval mode.
    for key in expected:
        norm = key.rsplit(".", 1)[0]
        if key.endswith("num_batches_tracked") and key not in converted and f"{norm}.weight" in converted:
            converted[key] = torch.zeros((), dtype=torch.long)
            report.initialised[key] = "BatchNorm step counter absent from the source; unused in eval mode"
    assign(model, converted, report, {})
    return model, report


def _target_name(name: str, config: GeoMIMSparseTeacherConfig) -> str | None:
    for pattern, template in RULES:
        if match := re.match(pattern, name):
            groups = match.groups()
            stage = None
            if name.startswith("encoder_layers."):
                stage = int(groups[0]) - 1
                if not 0 <= stage < len(config.encoder_channels):
                    return None
                layers = len(config.encoder_channels[stage])
                is_downsample = ".downsample." in template
                last = stage == len(config.encoder_channels) - 1
                # The stride-2 conv is the last layer of every stage but the last; the others are basic blocks.
                if is_downsample != (not last and int(groups[1]) == layers - 1):
                    return None
            return "encoder." + template.format(*groups, s=stage)
    return None


def main(argv=None) -> None:
    parser = checkpoint_parser(__doc__, "BEVFusion's lidar-only-det.pth (or another checkpoint holding its "
                               "SparseEncoder: fusion, GeoMIM pretraining, mmdetection3d)", None,
                               "a folder with a GeoMIMSparseTeacherConfig config.json (default: the official "
                               "TransFusion-L settings on geomim-swin-b's target grid)")
    args = parser.parse_args(argv)

    config = GeoMIMSparseTeacherConfig.from_pretrained(args.config) if args.config else GeoMIMSparseTeacherConfig()
    state_dict = load_state_dict(args.checkpoint, key=args.checkpoint_key)
    model, report = convert_bevfusion_lidar(state_dict, config, args.checkpoint)
    save_conversion(model, report, args.output_dir, f"; weights: {report.notes['weight_layout']}")


if __name__ == "__main__":
    main()
