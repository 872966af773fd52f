# Session script (2026-12-06); usage in ../../README.md (seventh session). Run from the frozen worktree with PYTHONPATH=.
import sys, numpy as np, torch
torch.set_num_threads(1)
from geomim_hf import GeoMIMForBEVDetection, GeoMIMImageProcessor
from geomim_hf.data import load_waymo
from geomim_hf.evaluation.detection import predict_detections
model_dir, root, split = sys.argv[1], sys.argv[2], sys.argv[3]
model = GeoMIMForBEVDetection.from_pretrained(model_dir).eval()
processor = GeoMIMImageProcessor.from_pretrained(model_dir)
rows = load_waymo(root, split, classes=tuple(model.config.class_names), boxes="camera")
predictions, _ = predict_detections(model, rows, processor, 4, 0.2)
truth = rows.select_columns(["boxes", "labels"]).with_format(None)
diffs = []
for p, r in zip(predictions, truth):
    gb = np.asarray(r["boxes"], np.float64).reshape(-1, 7); gl = np.asarray(r["labels"])
    pb = p["boxes"].numpy(); pl = p["labels"].numpy()
    for i in range(len(pb)):
        m = gl == pl[i]
        if not m.any(): continue
        d = np.linalg.norm(gb[m, :2] - pb[i, :2], axis=1); j = np.argmin(d)
        if d[j] < 1.5 and pl[i] == 0:
            g = gb[m][j]; diffs.append([*(pb[i, :6] - g[:6]), np.angle(np.exp(1j * (pb[i, 6] - g[6]))), *g[3:6]])
diffs = np.array(diffs)
print("matched vehicles", len(diffs))
print("mean  dx dy dz dl dw dh dyaw | gt l w h:", np.round(diffs.mean(0), 3))
print("median|.|", np.round(np.median(np.abs(diffs), 0), 3))
