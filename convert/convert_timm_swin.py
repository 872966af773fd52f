"""timm Swin Transformer weights (ImageNet) into a GeoMIM encoder (``GeoMIMModel``).

    python -m geomim_hf.convert.convert_timm_swin --timm-model swin_base_patch4_window12_384.ms_in22k \
        --config geomim-swin-b --output-dir OUT/swin-b-in22k
    python -m geomim_hf.convert.convert_timm_swin --checkpoint swin_base.safetensors --config geomim-swin-b \
        --output-dir OUT/swin-b-in22k

``--timm-model`` reads the weights through timm (its Hub cache; ``HF_HUB_OFFLINE=1`` works once they
are cached), ``--checkpoint`` a local file. The relative position bias tables are resized bicubically
to the config's windows; the absolute position embedding timm's Swin lacks starts at zero and the
per-stage output norms at identity, so the converted encoder computes timm's stage features exactly
when the windows and shifts match. ``OUT`` then initialises pretraining or the detector:
``examples/pretrain.py --model-config OUT`` loads the config, ``GeoMIMForMaskedBEVModeling.from_pretrained(OUT)``
the weights.
"""

from __future__ import annotations

import argparse

import torch

from geomim_hf import GeoMIMConfig, GeoMIMModel
from geomim_hf.convert.common import (
    ConversionReport,
    assign,
    downsample_to_next_stage,
    load_state_dict,
    refuse_unknown,
    resize_relative_position_bias_table,
    save_conversion,
)
from geomim_hf.modeling.swin import timm_checkpoint_filter

# timm buffers and heads with no place in our encoder, and why.
IGNORED = {"head.": "ImageNet classifier", "norm.": "timm's final norm (ours are per stage: out_norms)"}
BUFFERS = ("relative_position_index", "attn_mask")  # recomputed by our blocks


def convert_timm_swin(state_dict: dict[str, torch.Tensor], config: GeoMIMConfig, source: str = "timm"):
    """Returns (``GeoMIMModel`` holding the weights, :class:`ConversionReport`)."""
    report = ConversionReport(source)
    buffers = [key for key in state_dict if key.endswith(BUFFERS)]
    for key in buffers:
        report.unused[key] = "buffer recomputed by our blocks"
    state_dict = {k: v for k, v in state_dict.items() if k not in buffers}
    # The original release and timm < 0.9 merge patches at the end of a stage; the 2x2 concatenation
    # order, (row, col) offsets (0, 0), (1, 0), (0, 1), (1, 1), is the same as timm >= 0.9's.
    original_layout = any(k.startswith("layers.0.downsample.") for k in state_dict)
    renamed = {downsample_to_next_stage(k, "layers") if original_layout else k: k for k in state_dict}
    state_dict = {new: state_dict[old] for new, old in renamed.items()}
    encoder, rest = timm_checkpoint_filter(state_dict)
    sources, _ = timm_checkpoint_filter(renamed)  # our name -> the checkpoint's own name
    unknown = []
    for key in state_dict:  # with downsampling renamed; IGNORED and unknown keys are never renamed
        if key.startswith(tuple(IGNORED)):
            report.unused[key] = next(why for prefix, why in IGNORED.items() if key.startswith(prefix))
        elif key in rest:
            unknown.append(key)
    refuse_unknown(source, unknown)

    embed_dim = encoder["patch_embed.weight"].shape[0]
    if embed_dim != config.embed_dim:
        raise ValueError(f"{source}: embed_dim {embed_dim} but the config's embed_dim is {config.embed_dim}")
    converted = {}
    for key, value in encoder.items():
        if key.endswith("relative_position_bias_table"):
            stage = int(key.split(".")[1])
            value = resize_relative_position_bias_table(value, (config.window_size[stage],) * 2)
        converted["encoder." + key] = value
        report.converted["encoder." + key] = sources[key]

    model = GeoMIMModel(config).eval()
    if model.encoder.absolute_pos_embed is not None:
        torch.nn.init.zeros_(model.encoder.absolute_pos_embed)  # timm's Swin adds none
    assign(model, converted, report, {
        "encoder.absolute_pos_embed": "timm's Swin has none: zeros, which add nothing",
        "out_norms.": "per-stage output LayerNorm, new: identity (weight 1, bias 0)",
        "cross_view.": "Cross-View Attention, new: its zero-initialised output makes it the identity",
    })
    return model, report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--timm-model", help="a timm model name with pretrained weights, e.g. swin_base_patch4_window7_224")
    source.add_argument("--checkpoint", help="a local timm Swin checkpoint (.safetensors, .pth, .bin)")
    parser.add_argument("--config", default="geomim-swin-b", help="a preset name or a folder with config.json")
    parser.add_argument("--output-dir", required=True)
    args = parser.parse_args(argv)

    config = GeoMIMConfig.from_preset_or_folder(args.config)
    if args.timm_model:
        import timm

        state_dict = timm.create_model(args.timm_model, pretrained=True, num_classes=0).state_dict()
        name = f"timm:{args.timm_model}"
    else:
        state_dict, name = load_state_dict(args.checkpoint), args.checkpoint
    model, report = convert_timm_swin(state_dict, config, name)
    save_conversion(model, report, args.output_dir)


if __name__ == "__main__":
    main()
