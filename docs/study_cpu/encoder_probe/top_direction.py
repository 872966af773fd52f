"""What the dominant direction of stage-2 features encodes: correlation of PC1/PC2 with log depth, image row, view."""
# Session script (2026-12-06, sixth); paths are this machine's: /work/S is the study's --out, /work/study_w3 the frozen worktree.
# Run from that worktree with PYTHONPATH=. ; it reads examples/probe_encoder.py from /work/main.
import sys, torch
sys.path.insert(0, "/work/main/examples")
torch.set_num_threads(1)
from probe_encoder import token_batches, load_encoder
batches = token_batches("/work/S/nuscenes", "v1.0-trainval", "train_detect", (128, 352), 4, 0, 24)
for spec in ["random:geomim-small", "/work/S/pretrain/pixel-seed0", "/work/S/pretrain/geomim-seed0"]:
    enc = load_encoder(spec, 0)
    feats, logd, rows = [], [], []
    with torch.no_grad():
        for pv, depth in batches:
            f = enc(pv).feature_maps[0]  # (B, N, C, h, w)
            valid = depth > 0
            feats.append(f.permute(0, 1, 3, 4, 2)[valid].double()); logd.append(depth[valid].double().log())
            r = torch.arange(depth.shape[-2]).view(1, 1, -1, 1).expand_as(depth)
            rows.append(r[valid].double())
    x = torch.cat(feats); x = x - x.mean(0); y = torch.cat(logd); r = torch.cat(rows)
    _, s, v = torch.linalg.svd(x, full_matrices=False)
    out = []
    for k in range(2):
        pc = x @ v[k]
        out.append(f"PC{k+1} ({(s[k]**2/(s**2).sum()):.2f}): corr log depth {torch.corrcoef(torch.stack([pc, y]))[0,1]:+.2f}, row {torch.corrcoef(torch.stack([pc, r]))[0,1]:+.2f}")
    print(spec.split("/")[-1], " | ".join(out), flush=True)
