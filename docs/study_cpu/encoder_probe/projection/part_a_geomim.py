"""A (and C): GeoMIM model's held-out pretraining losses with the decoder-read encoder stages projected onto
their top-k principal directions; image-blind baseline; effective rank masked vs unmasked.
Usage: python part_a_geomim.py [train_detect|val]   (val: teacher run online, no cache for val)"""
import json, sys, time, torch
from common import *
from geomim_hf import random_cell_mask
from geomim_hf.evaluation.pretraining import ImageBlindBaseline, evaluate_pretraining
from geomim_hf.training import move_batch

split = sys.argv[1] if len(sys.argv) > 1 else "train_detect"
ks = [int(k) for k in sys.argv[2].split(",")] if len(sys.argv) > 2 else [0, 1, 2, 4, 8, 16, 32]
t0 = time.time()
model = load_model(GEOMIM)
online = split == "val"
batches, sample_tokens = eval_batches(model, split, online=online)
if online:  # the frozen teacher's targets, as examples/pretrain.py's with_targets
    from geomim_hf.teachers import load_teacher
    teacher = load_teacher("/work/S/teacher")
    with torch.no_grad():
        for b in batches:
            b["teacher_features"] = teacher.bev_features(**{k: b.pop(k) for k in TEACHER_INPUTS})
print(f"{split}: {sum(b['pixel_values'].shape[0] for b in batches)} samples loaded, {time.time() - t0:.0f}s", flush=True)

state = torch.load(f"{OUT}/baselines.pt", weights_only=True)
def baseline(fit):
    b = ImageBlindBaseline(model)
    s = state[f"geomim|{fit}"]
    b.target_sum, b.samples, b.depth_counts = s["target_sum"], s["samples"], s["depth_counts"]
    return b
bl = {"train_track": baseline("train_track"), "train": baseline("train")}

hook = EncoderHook(model)
results = {"split": split, "samples": len(sample_tokens), "variants": {}}
def run(name, ks_, base=None):
    t = time.time()
    if ks_ is not None:
        hook.set(ks_)
    r = evaluate_pretraining(model, batches, base, seed=SEED)
    if ks_ is not None:
        hook.set(None)
    results["variants"][name] = r
    print(f"{name:>22}: " + ", ".join(f"{k} {v:.4f}" for k, v in r.items() if k != "samples") + f"  ({time.time() - t:.0f}s)", flush=True)

hook.start_record()
run("as_is", None, bl["train_track"])
pcas = hook.fit()
results["variants"]["as_is"]["baseline_fit"] = "train_track"
results["spectrum_share"] = {f"stage{s + 2}": spectrum_shares(p) for s, p in enumerate(pcas)}
results["effective_rank_masked"] = {f"stage{s + 2}": effective_rank_of(torch.cat(hook.record[s])) for s in range(2)}
print("top-k variance share", results["spectrum_share"], flush=True)
for i, k in enumerate(ks):
    run(f"k={k}", [k, k], bl["train"] if k == 0 else None)
    if k == 0:
        results["variants"]["k=0"]["baseline_fit"] = "train"
run("k=all", [None, None])
if split == "train_detect":
    run("stage2 k=0, stage3 as is", [0, "keep"])
    run("stage2 as is, stage3 k=0", ["keep", 0])

    # C: effective rank of the stage features, the pretraining mask vs no mask (encoder only, same images)
    masked, plain = [[], []], [[], []]
    with torch.no_grad():
        for i, b in enumerate(batches):
            mask = random_cell_mask(model.config, torch.Generator().manual_seed(SEED * 1_000_003 + i))
            for store, m in ((masked, mask), (plain, None)):
                for s, f in enumerate(model.geomim(b["pixel_values"], bool_masked_pos=m).feature_maps):
                    store[s].append(tokens(f).double())
    c = {}
    for s in range(2):
        m, u = torch.cat(masked[s]), torch.cat(plain[s])
        pm, pu = PCA(m), PCA(u)
        overlap = {k: float((pm.vectors[:, :k].T @ pu.vectors[:, :k]).pow(2).sum()) / k for k in (1, 2, 4, 8)}
        c[f"stage{s + 2}"] = {
            "effective_rank_masked": effective_rank_of(m), "effective_rank_unmasked": effective_rank_of(u),
            "channels": m.shape[1], "tokens": m.shape[0],
            "cosine_masked_vs_unmasked_mean": float(torch.nn.functional.cosine_similarity(m, u, dim=1).mean()),
            "relative_sq_diff": float((m - u).pow(2).sum() / (u - u.mean(0)).pow(2).sum()),
            "top_k_subspace_overlap": overlap,
            "top_k_share_masked": spectrum_shares(pm), "top_k_share_unmasked": spectrum_shares(pu)}
        print(f"C stage{s + 2}:", c[f"stage{s + 2}"], flush=True)
    results["C"] = c
json.dump(results, open(f"{OUT}/part_a_{split}.json", "w"), indent=2)
print(f"total {time.time() - t0:.0f}s")
