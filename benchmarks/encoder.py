"""Our Swin encoder against timm's, in the same run: training-step throughput (samples of N views per second),
peak memory (CUDA) and inference latency; and pretraining's two-group masked pass against one unmasked pass.

    python benchmarks/encoder.py                                          # GPU: geomim-swin-b at 256 x 704, 6 views
    python benchmarks/encoder.py --preset geomim-tiny --device cpu --iters 3 --json out/encoder.json

Three encoders at the preset's widths, depths, heads and image size:

- **timm**: ``timm``'s ``SwinTransformer`` with one window for every stage (``--window``, default the largest
  that fits the last stage: 8 for Swin-B at 256 x 704) and its alternating shifted windows; no classifier.
- **ours, timm layout**: our encoder with the same windows and shifts and no absolute position embedding, holding
  timm's weights (``convert_timm_swin``): checked to compute timm's last-stage features before anything is timed.
- **ours, official layout**: the preset as GeoMIM's release has it (its per-stage windows, no shifts, an absolute
  position embedding): the encoder users train. timm cannot express per-stage windows, so this row is beside timm,
  not the same computation.

Each trains on the last stage's features (a mean of squares as the loss, so the backward covers every block) with
AdamW. ``--dtype bf16`` runs under autocast; ``--compile`` wraps every encoder in ``torch.compile``.
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F

from common import device_name, median_seconds, write_json  # benchmarks/common.py, beside this script
from geomim_hf import GeoMIMConfig, GeoMIMModel, random_cell_mask
from geomim_hf.convert.convert_timm_swin import convert_timm_swin


def timm_swin(config: GeoMIMConfig, window: int) -> torch.nn.Module:
    return timm.models.swin_transformer.SwinTransformer(
        img_size=tuple(config.image_size), patch_size=config.patch_size, embed_dim=config.embed_dim,
        depths=tuple(config.depths), num_heads=tuple(config.num_heads), window_size=window,
        mlp_ratio=config.mlp_ratio, num_classes=0, drop_path_rate=0.0)


def timm_layout(config: GeoMIMConfig, window: int) -> GeoMIMConfig:
    """Our config computing timm's Swin: one window everywhere, shifted windows, no absolute position embedding,
    no cross-view attention, the last stage out."""
    return GeoMIMConfig(**{**config.to_dict(), "window_size": (window,) * len(config.depths), "shifted_windows": True,
                           "use_absolute_position_embeddings": False, "encoder_cross_view_stages": (),
                           "out_indices": (len(config.depths) - 1,)})


def last_stage_ours(model: GeoMIMModel):
    """(B * N, 3, H, W) -> (B * N, C, h, w) through our encoder, views folded into the batch like timm's."""
    def forward(pixels, views, mask=None):
        maps = model(pixels.unflatten(0, (-1, views)), bool_masked_pos=mask).feature_maps[-1]
        return maps.flatten(0, 1)
    return forward


def last_stage_timm(model):
    def forward(pixels, views, mask=None):
        return model.forward_features(pixels).permute(0, 3, 1, 2)  # (B * N, C, h, w), timm's final norm
    return forward


def check_agreement(timm_model, ours: GeoMIMModel, pixels: torch.Tensor, views: int) -> float:
    """Largest difference between timm's last stage and ours holding its weights (our per-stage norm is a new
    LayerNorm at identity; timm's final norm is applied to ours for the comparison)."""
    with torch.no_grad():
        expected = timm_model.forward_features(pixels)  # (B * N, h, w, C), normed
        raw = timm_model.forward_intermediates(pixels, indices=[len(timm_model.layers) - 1], norm=False,
                                               intermediates_only=True)[0]  # (B * N, C, h, w)
        actual = ours(pixels.unflatten(0, (-1, views))).feature_maps[-1].flatten(0, 1)
        normed = F.layer_norm(raw.permute(0, 2, 3, 1), raw.shape[1:2])
        torch.testing.assert_close(actual.permute(0, 2, 3, 1), normed, atol=2e-4, rtol=2e-4)
        torch.testing.assert_close(timm_model.norm(raw.permute(0, 2, 3, 1)), expected)
    return float((actual.permute(0, 2, 3, 1) - normed).abs().max())


def measure(forward, parameters, pixels, views, device, dtype, iters: int, warmup: int, mask=None) -> dict:
    """Median training-step seconds (forward, backward, AdamW), peak memory, and median inference seconds."""
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")

    def train_step():
        with autocast:
            loss = forward(pixels, views, mask).float().square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def infer():
        with torch.no_grad(), autocast:
            forward(pixels, views, mask)

    result = {}
    for name, function in (("train", train_step), ("infer", infer)):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        result[f"{name}_seconds"] = median_seconds(function, device, iters, warmup)
        result[f"{name}_peak_mib"] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return result


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="geomim-swin-b")
    parser.add_argument("--window", type=int, default=None,
                        help="timm's window, one for every stage (default: the largest that fits the last stage)")
    parser.add_argument("--batch", type=int, default=1, help="samples of --views images")
    parser.add_argument("--views", type=int, default=6)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", action="store_true", help="torch.compile every encoder")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    config = GeoMIMConfig.from_preset_or_folder(args.preset)
    # timm shrinks a window to a stage that is smaller than it (to a non-square one, which ours does not have):
    # the default is the largest window no stage shrinks.
    last_stage = [-(-size // (config.patch_size * 2 ** (len(config.depths) - 1))) for size in config.image_size]
    window = args.window or min(max(config.window_size), *last_stage)
    if window > min(last_stage):
        parser.error(f"--window {window} is larger than the last stage's {last_stage[0]} x {last_stage[1]} tokens: "
                     f"timm would shrink it there; at most {min(last_stage)}")

    torch.manual_seed(0)
    reference = timm_swin(config, window).eval()
    ours_timm, _ = convert_timm_swin(reference.state_dict(), timm_layout(config, window))
    official = GeoMIMModel(GeoMIMConfig(**{**config.to_dict(), "out_indices": (len(config.depths) - 1,)}))
    pixels = torch.randn(args.batch * args.views, 3, *config.image_size, generator=torch.Generator().manual_seed(0))
    # Checked at the image size rounded up to the last stage's stride: below it the two pad differently (ours the
    # image, to whole masking cells; timm each patch merging), which changes the border tokens.
    stride = config.patch_size * 2 ** (len(config.depths) - 1)
    check_size = tuple(-(-size // stride) * stride for size in config.image_size)
    check_config = GeoMIMConfig(**{**timm_layout(config, window).to_dict(), "image_size": check_size})
    check_timm, check_ours = timm_swin(check_config, window).eval(), GeoMIMModel(check_config).eval()
    check_timm.load_state_dict(reference.state_dict(), strict=False)  # size-dependent buffers are rebuilt
    check_ours.load_state_dict(ours_timm.state_dict())
    difference = check_agreement(check_timm, check_ours, torch.randn(args.views, 3, *check_size), args.views)

    pixels = pixels.to(device)
    encoders = {"timm": (reference, last_stage_timm(reference)),
                "ours, timm layout": (ours_timm, last_stage_ours(ours_timm)),
                "ours, official layout": (official, last_stage_ours(official))}
    results = {}
    for name, (module, forward) in encoders.items():
        module.to(device).train()
        if args.compile:
            forward = torch.compile(forward)
        results[name] = measure(forward, list(module.parameters()), pixels, args.views, device, args.dtype,
                                args.iters, args.warmup)
    # Pretraining's masked encoding: both groups in one pass (tokens attend within their group) against one
    # unmasked pass, the official layout.
    mask = random_cell_mask(official.config, torch.Generator().manual_seed(0)).to(device)
    forward = last_stage_ours(official)
    results["ours, official layout, two-group masked"] = measure(
        torch.compile(forward) if args.compile else forward, list(official.parameters()), pixels, args.views,
        device, args.dtype, args.iters, args.warmup, mask=mask)

    print(f"{args.preset}: {args.batch} x {args.views} views at {tuple(config.image_size)}, timm window {window}, "
          f"{args.dtype}{', compiled' if args.compile else ''}, {device_name(device)}; median of {args.iters}; timm layout "
          f"agrees with timm within {difference:.1e} (at {check_size[0]} x {check_size[1]})")
    timm_train = results["timm"]["train_seconds"]
    print(f"{'encoder':42} {'train samples/s':>16} {'vs timm':>8} {'train MiB':>10} {'infer ms':>9} {'vs timm':>8}")
    for name, row in results.items():
        memory = f"{row['train_peak_mib']:.0f}" if row["train_peak_mib"] is not None else "-"
        print(f"{name:42} {args.batch / row['train_seconds']:>16.2f} {timm_train / row['train_seconds']:>7.2f}x "
              f"{memory:>10} {row['infer_seconds'] * 1e3:>9.1f} "
              f"{results['timm']['infer_seconds'] / row['infer_seconds']:>7.2f}x")
    unmasked = results["ours, official layout"]["train_seconds"]
    masked = results["ours, official layout, two-group masked"]["train_seconds"]
    print(f"two-group masked pass / one unmasked pass (training step): {masked / unmasked:.2f}x")
    output = {"preset": args.preset, "batch": args.batch, "views": args.views, "image_size": list(config.image_size),
              "window": window, "dtype": args.dtype, "compile": args.compile, "device": device_name(device),
              "max_difference_vs_timm": difference, "encoders": results, "masked_over_unmasked": masked / unmasked}
    write_json(args.json, output)
    return output


if __name__ == "__main__":
    main()
