"""Varying share and effective rank of every stage's features, random / pixel / GeoMIM encoders (seed 0)."""
# Session script (2026-12-06, sixth); paths are this machine's: /work/S is the study's --out, /work/study_w3 the frozen worktree.
# Run from that worktree with PYTHONPATH=. ; it reads examples/probe_encoder.py from /work/main.
import sys, torch
sys.path.insert(0, "/work/main/examples")
torch.set_num_threads(1)
from probe_encoder import token_batches, effective_rank, varying_share
from geomim_hf import GeoMIMConfig, GeoMIMModel
batches = token_batches("/work/S/nuscenes", "v1.0-trainval", "train_detect", (128, 352), 4, 0, 24)
for spec in ["random", "/work/S/pretrain/pixel-seed0", "/work/S/pretrain/geomim-seed0"]:
    config = GeoMIMConfig.from_pretrained("/work/S/pretrain/geomim-seed0")
    config.out_indices = (0, 1, 2, 3)
    if spec == "random":
        torch.manual_seed(0); model = GeoMIMModel(config).eval()
    else:
        model = GeoMIMModel.from_pretrained(spec, config=config).eval()
    with torch.no_grad():
        maps = [model(pv).feature_maps for pv, _ in batches]
    row = []
    for stage in range(4):
        f = torch.cat([m[stage] for m in maps])
        tokens = f.permute(0, 1, 3, 4, 2).reshape(-1, f.shape[2]).double()
        row.append(f"stage {stage}: varying {varying_share(tokens):.3f} rank {effective_rank(tokens):.1f}/{tokens.shape[1]}")
    print(spec.split("/")[-1], " | ".join(row), flush=True)
