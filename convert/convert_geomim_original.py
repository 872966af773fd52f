"""Official GeoMIM checkpoints (Sense-X/GeoMIM, mmdetection3d style) into a GeoMIM encoder (``GeoMIMModel``).

    python -m geomim_hf.convert.convert_geomim_original --checkpoint geomim_base.pth --output-dir OUT/geomim-swin-b
    python -m geomim_hf.convert.convert_geomim_original --checkpoint bevdet-swinb-4d-256x704-cbgs-geomim.pth \
        --output-dir OUT/geomim-swin-b-bevdet4d --config geomim-swin-b

Both releases hold the same mmdet-style Swin: the pretraining checkpoint under
``encoders.camera.backbone.`` (beside the MIM decoder, the view transform and the frozen LiDAR
teacher), the BEVDet finetuned detector under ``img_backbone.``; a bare backbone state dict works
too. The encoder converts tensor for tensor, with two layout changes: patch merging moves from the
end of stage i to the start of stage i + 1, and its 4C channels go from ``nn.Unfold`` order to
Swin's (x0, x1, x2, x3) order. Everything else is reported in ``conversion_report.json`` with the
reason it is not converted (the official decoder, neck, depth net, BEV encoder and head are other
designs than ours; the LiDAR teacher has its own converter). ``OUT`` loads as ``GeoMIMModel`` and
initialises ``GeoMIMForBEVDetection`` (``examples/finetune_detection.py --init OUT``) or
``GeoMIMForMaskedBEVModeling``.
"""

from __future__ import annotations

import re

import torch

from geomim_hf import GeoMIMConfig, GeoMIMModel
from geomim_hf.convert.common import (
    ConversionReport,
    assign,
    checkpoint_parser,
    downsample_to_next_stage,
    find_prefix,
    load_state_dict,
    refuse_unknown,
    save_conversion,
    split_checkpoint,
)

# Where the encoder sits in each release, tried in order.
ENCODER_PREFIXES = ("encoders.camera.backbone.", "img_backbone.", "backbone.", "")
# Official parts with no counterpart among our encoder's tensors, and why.
OTHER_PARTS = {
    "encoders.camera.vtransform.": "pretraining view transform (depth net + LSS); ours is geomim-hf's own decoder",
    "encoders.lidar.": "the frozen LiDAR teacher: convert it with convert_bevfusion_lidar.py",
    "prediction_head.": "pretraining projection to the teacher's channels; part of geomim-hf's own decoder",
    "img_neck.": "BEVDet image neck; GeoMIMForBEVDetection has its own, trained by finetuning",
    "img_view_transformer.": "BEVDet depth net; GeoMIMForBEVDetection has its own, trained by finetuning",
    "img_bev_encoder_backbone.": "BEVDet BEV encoder; GeoMIMForBEVDetection has its own, trained by finetuning",
    "img_bev_encoder_neck.": "BEVDet BEV neck; GeoMIMForBEVDetection has its own, trained by finetuning",
    "pre_process_net.": "BEVDet BEV pre-process net; GeoMIMForBEVDetection has its own, trained by finetuning",
    "pts_bbox_head.": "BEVDet CenterPoint head; GeoMIMForBEVDetection has its own, trained by finetuning",
}
# The MIM decoder inside the official backbone module (pretraining only).
DECODER_PARTS = ("up_p4_fc.", "up_smooth_p4.", "final_norm.", "mask_token", "decoder_pos_embed", "decoder_embed_new.",
                 "decoder_blocks.", "decoder_norm.", "decoder_blocks_pix.", "decoder_norm_pix.", "cam_pose.",
                 "decoder_cross_module.")
# Official backbone key -> ours (``encoder.`` added after); {i}/{j} are stage/block indices.
BLOCK_RULES = [
    (r"stages\.(\d+)\.blocks\.(\d+)\.attn\.w_msa\.(relative_position_bias_table|qkv\.weight|qkv\.bias|proj\.weight|"
     r"proj\.bias)$", "stages.{0}.blocks.{1}.attn.{2}"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.(norm1|norm2)\.(weight|bias)$", "stages.{0}.blocks.{1}.{2}.{3}"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.0\.0\.(weight|bias)$", "stages.{0}.blocks.{1}.mlp.fc1.{2}"),
    (r"stages\.(\d+)\.blocks\.(\d+)\.ffn\.layers\.1\.(weight|bias)$", "stages.{0}.blocks.{1}.mlp.fc2.{2}"),
    (r"patch_embed\.projection\.(weight|bias)$", "patch_embed.{0}"),
    (r"patch_embed\.norm\.(weight|bias)$", "patch_norm.{0}"),
    (r"absolute_pos_embed$", "absolute_pos_embed"),
]
# nn.Unfold concatenates the 2x2 neighbourhood channel-major (c, row, col): index 4c + 2*row + col. Swin's
# (x0, x1, x2, x3) is offset-major with offsets (0, 0), (1, 0), (0, 1), (1, 1): index k*C + c. Offset k of
# Swin's order is unfold's position UNFOLD_OF_SWIN[k].
UNFOLD_OF_SWIN = (0, 2, 1, 3)


def unfold_to_swin_order(tensor: torch.Tensor) -> torch.Tensor:
    """Reorder the last (4C) dimension of a patch-merging weight from nn.Unfold's order to Swin's."""
    channels = tensor.shape[-1] // 4
    grouped = tensor.reshape(*tensor.shape[:-1], channels, 4)[..., list(UNFOLD_OF_SWIN)]  # (..., C, 4) Swin offsets
    return grouped.transpose(-1, -2).reshape(tensor.shape)  # (..., 4, C) -> k*C + c


def convert_geomim_original(state_dict: dict[str, torch.Tensor], config: GeoMIMConfig, source: str = "geomim"):
    """Returns (``GeoMIMModel`` holding the official encoder, :class:`ConversionReport`)."""
    report = ConversionReport(source)
    prefix = find_prefix(state_dict, ENCODER_PREFIXES, "patch_embed.projection.weight", source,
                         "mmdet-style Swin", "is this a GeoMIM checkpoint?")
    encoder, unknown = split_checkpoint(state_dict, prefix, OTHER_PARTS, report)
    converted = {}
    for name, (key, value) in encoder.items():
        if name.startswith(DECODER_PARTS):
            report.unused[key] = "official MIM decoder (pretraining only; geomim-hf's decoder is its own)"
        elif name.endswith("relative_position_index"):
            report.unused[key] = "buffer recomputed by our blocks"
        elif target := _target_name(name):
            converted[target] = _convert_tensor(name, value)
            report.converted[target] = key
        else:
            unknown.append(key)
    refuse_unknown(source, unknown)
    model = GeoMIMModel(config).eval()
    assign(model, converted, report, {
        "out_norms.": "the official backbone normalises only stages 2 and 3: new, identity",
        "cross_view.": "encoder Cross-View Attention is ours: zero-initialised output, the identity",
    })
    return model, report


def _target_name(name: str) -> str | None:
    for pattern, template in BLOCK_RULES:
        if match := re.match(pattern, name):
            return "encoder." + template.format(*match.groups())
    if re.match(r"stages\.\d+\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)$", name):
        return "encoder." + downsample_to_next_stage(name, "stages")
    if match := re.match(r"norm(\d+)\.(weight|bias)$", name):  # the per-output norms
        return f"out_norms.{match[1]}.{match[2]}"
    return None


def _convert_tensor(name: str, value: torch.Tensor) -> torch.Tensor:
    if ".downsample." in name:
        return unfold_to_swin_order(value)
    return value


def main(argv=None) -> None:
    parser = checkpoint_parser(__doc__, "an official GeoMIM .pth (pretraining or BEVDet finetuned)", "geomim-swin-b",
                               "a preset name or a folder with config.json (geomim-swin-l for the Swin-L release)")
    args = parser.parse_args(argv)

    config = GeoMIMConfig.from_preset_or_folder(args.config)
    state_dict = load_state_dict(args.checkpoint, key=args.checkpoint_key)
    model, report = convert_geomim_original(state_dict, config, args.checkpoint)
    save_conversion(model, report, args.output_dir)


if __name__ == "__main__":
    main()
