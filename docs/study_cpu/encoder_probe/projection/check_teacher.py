"""Sanity: the online teacher reproduces the cached features (train_detect, 4 samples), so val (no cache) compares."""
import torch
from common import *
from geomim_hf.teachers import load_teacher
model = load_model(GEOMIM)
teacher = load_teacher("/work/S/teacher")
batches, _ = eval_batches(model, "train_detect", n=4, online=True, use_cache=True)
with torch.no_grad():
    for b in batches:
        online = teacher.bev_features(**{k: b.pop(k) for k in TEACHER_INPUTS})
        print(tuple(online.shape), float((online - b["teacher_features"]).abs().max()), float(b["teacher_features"].abs().mean()))
