"""ImageBlindBaseline (geomim_hf.evaluation.pretraining) fitted on train_track (disjoint from train_detect)
and on all of train (the checkpoints' pretraining split, which contains train_detect), for both models.
Unaugmented, one sample per batch; saves the accumulated sums."""
import time, torch
from common import *
from geomim_hf.evaluation.pretraining import ImageBlindBaseline

t = time.time()
models = {"geomim": load_model(GEOMIM), "pixel": load_model(PIXEL)}
rows = load_nuscenes(ROOT, VERSION, "train", sweeps=0, classes=models["geomim"].config.class_names)
detect = set(load_nuscenes(ROOT, VERSION, "train_detect", sweeps=0)["sample_token"])
tokens_ = rows["sample_token"]
loader = make_dataloader(rows, GeoMIMImageProcessor.from_pretrained(GEOMIM), 1, return_depth=True, with_targets=False,
                         teacher_features=TeacherFeatureCache(CACHE), input_names=models["geomim"].model_input_names)
baselines = {(m, fit): ImageBlindBaseline(models[m]) for m in models for fit in ("train_track", "train")}
for i, batch in enumerate(loader):
    for (m, fit), b in baselines.items():
        if fit == "train" or tokens_[i] not in detect:
            b.update(batch)
state = {f"{m}|{fit}": {"target_sum": b.target_sum, "samples": b.samples, "depth_counts": b.depth_counts}
         for (m, fit), b in baselines.items()}
torch.save(state, f"{OUT}/baselines.pt")
print({k: v["samples"] for k, v in state.items()}, f"{time.time() - t:.0f}s")
