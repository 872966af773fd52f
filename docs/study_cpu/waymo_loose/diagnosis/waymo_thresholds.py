# Session script (2026-12-06); usage in ../../README.md (seventh session). Run from the frozen worktree with PYTHONPATH=.
import sys, json, numpy as np, torch
torch.set_num_threads(1)
from geomim_hf import GeoMIMForBEVDetection, GeoMIMImageProcessor
from geomim_hf.data import load_waymo
from geomim_hf.evaluation.detection import predict_detections
from geomim_hf.evaluation.waymo import let_3d_metrics, share_outside_grid
model_dir, root = sys.argv[1], sys.argv[2]
model = GeoMIMForBEVDetection.from_pretrained(model_dir).eval()
processor = GeoMIMImageProcessor.from_pretrained(model_dir)
classes = tuple(model.config.class_names)
rows = load_waymo(root, "validation", classes=classes, boxes="camera")
predictions, _ = predict_detections(model, rows, processor, 4, 0.05)
truth = rows.select_columns(["boxes", "labels", "num_lidar_points"]).with_format(None)
gt = [{"boxes": np.asarray(r["boxes"], np.float64).reshape(-1, 7), "labels": r["labels"], "num_lidar_points": r["num_lidar_points"]} for r in truth]
pred = [{k: p[k].numpy() for k in ("boxes", "labels", "scores")} for p in predictions]
print("outside grid", share_outside_grid([g["boxes"] for g in gt], model.config.detection_grid.x_range, model.config.detection_grid.y_range))
print("pred per frame", np.mean([len(p["scores"]) for p in pred]), "gt per frame", np.mean([len(g["labels"]) for g in gt]))
out = {}
for t in (0.5, 0.3, 0.1, 0.01):
    m = let_3d_metrics(pred, gt, classes=classes, iou_thresholds={"vehicle": t, "pedestrian": min(t, 0.3), "cyclist": min(t, 0.3)})
    out[t] = {k: round(v, 4) for k, v in m.items() if k.endswith("LEVEL_2") and k.count("/") == 2 and k.startswith("LET-3D-AP/")}
    print(t, out[t], "APL mean", round(m["LET-3D-APL/LEVEL_2"], 4))
# nuScenes-style: centre distance matching within 2 m, greedy by score, AP over all frames for vehicle
for cls in range(3):
    scores, tps, npos = [], [], 0
    for p, g in zip(pred, gt):
        gb = g["boxes"][np.asarray(g["labels"]) == cls]; npos += len(gb)
        m = p["labels"] == cls; pb, ps = p["boxes"][m], p["scores"][m]
        used = np.zeros(len(gb), bool)
        for i in np.argsort(-ps):
            d = np.linalg.norm(gb[:, :2] - pb[i, :2], axis=1) if len(gb) else np.array([])
            d[used] = np.inf if len(d) else 0
            j = int(np.argmin(d)) if len(d) else -1
            ok = j >= 0 and d[j] < 2.0
            if ok: used[j] = True
            scores.append(ps[i]); tps.append(ok)
    o = np.argsort(-np.array(scores)); tp = np.array(tps)[o]; ctp = np.cumsum(tp); prec = ctp / np.arange(1, len(tp) + 1); rec = ctp / max(npos, 1)
    ap = np.mean([prec[rec >= r].max() if (rec >= r).any() else 0 for r in np.linspace(0.1, 1, 10)])
    print(classes[cls], "centre-2m AP", round(float(ap), 4), "max recall", round(float(rec.max() if len(rec) else 0), 3), "npos", npos)
