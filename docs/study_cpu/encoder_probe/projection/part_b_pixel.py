"""B: pixel (MixMAE-style) model's held-out reconstruction loss as is and with the decoder-read encoder stages
replaced by their mean (k=0) or top-k PCA projection; share of near-flat 16x16 target patches and the loss on them."""
import json, time, torch
import torch.nn.functional as F
from common import *
from geomim_hf.evaluation.pretraining import ImageBlindBaseline, evaluate_pretraining
from geomim_hf.modeling_geomim import DECODER_STRIDE

t0 = time.time()
model = load_model(PIXEL)
batches, sample_tokens = eval_batches(model, "train_detect")
state = torch.load(f"{OUT}/baselines.pt", weights_only=True)
bl = {}
for fit in ("train_track", "train"):
    b = ImageBlindBaseline(model)
    s = state[f"pixel|{fit}"]
    b.target_sum, b.samples, b.depth_counts = s["target_sum"], s["samples"], s["depth_counts"]
    bl[fit] = b

# raw per-patch std of the normalised input (pixel_targets' patches, before their own normalisation)
def patch_std(pixel_values, grid):
    B, N, C, H, W = pixel_values.shape
    p = DECODER_STRIDE
    padded = F.pad(pixel_values.float(), (0, grid[1] * p - W, 0, grid[0] * p - H))
    patches = padded.reshape(B, N, C, grid[0], p, grid[1], p).permute(0, 1, 3, 5, 4, 6, 2).reshape(B, N, *grid, -1)
    return patches.std(-1, unbiased=False)  # (B, N, h', w')
stds = [patch_std(b["pixel_values"], model.decoder_grid) for b in batches]
allstd = torch.cat([s.flatten() for s in stds])
flat = {thr: float((allstd < thr).float().mean()) for thr in (0.02, 0.05, 0.1)}
print("patches", allstd.numel(), "share std<thr", flat, "median std", float(allstd.median()), flush=True)

# per-token squared error of the group that masked each token (stashed from the model's output)
per_token = []
def stash(module, args, kwargs, out):
    tg = model.geomim.encoder.token_groups(out.bool_masked_pos.long(), DECODER_STRIDE)
    err = torch.zeros(out.target.shape[:-1])
    for g in (0, 1):
        m = tg == 1 - g
        err[:, :, m] = ((out.reconstruction[:, g][:, :, m].float() - out.target[:, :, m]) ** 2).mean(-1)
    per_token.append(err)
model.register_forward_hook(stash, with_kwargs=True)

hook = EncoderHook(model)
results = {"split": "train_detect", "samples": len(sample_tokens), "patches": allstd.numel(),
           "flat_share": flat, "median_patch_std": float(allstd.median()), "variants": {}}
def run(name, ks_, base=None):
    t = time.time()
    per_token.clear()
    if ks_ is not None:
        hook.set(ks_)
    r = evaluate_pretraining(model, batches, base, seed=SEED)
    if ks_ is not None:
        hook.set(None)
    err = torch.cat([e.flatten() for e in per_token])
    for thr in (0.02, 0.05):
        r[f"mse_std<{thr}"] = float(err[allstd < thr].mean())
    r["mse_std>=0.05"] = float(err[allstd >= 0.05].mean())
    r["per_token_mean_check"] = float(err.mean())
    results["variants"][name] = r
    print(f"{name:>6}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k != "samples") + f" ({time.time() - t:.0f}s)", flush=True)

hook.start_record()
run("as_is", None, bl["train_track"])
pcas = hook.fit()
results["spectrum_share"] = {f"stage{s + 2}": spectrum_shares(p) for s, p in enumerate(pcas)}
results["effective_rank_masked"] = {f"stage{s + 2}": effective_rank_of(torch.cat(hook.record[s])) for s in range(2)}
print("top-k variance share", results["spectrum_share"], results["effective_rank_masked"], flush=True)
for k in (0, 2, 8):
    run(f"k={k}", [k, k], bl["train"] if k == 0 else None)
run("k=all", [None, None])
json.dump(results, open(f"{OUT}/part_b_pixel.json", "w"), indent=2)
print(f"total {time.time() - t0:.0f}s")
