import json
for split in ("train_detect", "val"):
    r = json.load(open(f"part_a_{split}.json")); v = r["variants"]
    base_track = v["as_is"]["reconstruction_baseline"]; dbase = v["as_is"]["depth_baseline"]
    print(f"\n{split}: baseline(train_track fit) MSE {base_track:.4f} depth {dbase:.4f}; baseline(train fit) MSE {v['k=0']['reconstruction_baseline']:.4f} depth {v['k=0']['depth_baseline']:.4f}")
    full = v["k=all"]["reconstruction_loss"]
    for name, x in v.items():
        mse = x["reconstruction_loss"]
        f0 = (v["k=0"]["reconstruction_loss"] - mse) / (v["k=0"]["reconstruction_loss"] - full)
        fb = (base_track - mse) / (base_track - full)
        print(f"{name:>26} MSE {mse:.4f} depth {x['depth_loss']:.4f}  recovered vs k=0 {f0:6.3f}  vs baseline {fb:6.3f}")
