"""How far finetuning moved each encoder: |w_final - w_init| / |w_init| per stage, search cells light lr 2e-3 / 1e-3."""
# Session script (2026-12-06, sixth); /work/S is the study's --out. Run from the frozen worktree with PYTHONPATH=.
import torch
from accelerate.utils import set_seed
from safetensors.torch import load_file
from geomim_hf import GeoMIMConfig, GeoMIMForBEVDetection
torch.set_num_threads(1)
for lr in ("0.002", "0.001"):
    for arm in ("random", "pixel", "geomim"):
        cell = f"/work/S/search/light-lr{lr}-{arm}"
        final = load_file(f"{cell}/model.safetensors")
        if arm == "random":
            set_seed(0)
            init = GeoMIMForBEVDetection(GeoMIMConfig.from_pretrained(cell)).state_dict()
        else:
            init = load_file(f"/work/S/pretrain/{arm}-seed0/encoder.safetensors")
        out = []
        for stage in range(4):
            keys = [k for k in init if f"encoder.stages.{stage}." in k and k.endswith("weight") and init[k].dim() == 2]
            d = sum((final[k] - init[k]).pow(2).sum() for k in keys).sqrt()
            n = sum(init[k].pow(2).sum() for k in keys).sqrt()
            nf = sum(final[k].pow(2).sum() for k in keys).sqrt(); cos = sum((final[k] * init[k]).sum() for k in keys) / (n * nf)
            out.append(f"s{stage} |w0| {n:5.1f} |wf| {nf:5.1f} |dw| {d:5.1f} cos {cos:.2f}")
        print(f"lr {lr} {arm:7s}", " | ".join(out), flush=True)
