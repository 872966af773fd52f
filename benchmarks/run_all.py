"""Every benchmark once, as one prepared run for a lent GPU (about 8 minutes on one H200), into one JSON.

    python benchmarks/run_all.py --out outputs/benchmarks            # writes outputs/benchmarks/all.json
    python benchmarks/run_all.py --out outputs/benchmarks --quick    # the CPU check of this script (minutes)

Each benchmark runs as its own process (a failure is recorded and the rest go on) with a time limit, in order of
what matters most: the pooling, the encoder, inference, then the step breakdown (which writes a small synthetic
world first). ``all.json`` holds each one's JSON, its command, seconds and exit status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def plan(out: str, quick: bool) -> list[tuple[str, list[str], int]]:
    """(name, arguments, seconds allowed) of each run."""
    if quick:
        return [("bev_pool", ["bev_pool.py", "--batch", "1", "--shapes", "detection", "--iters", "2", "--warmup", "1",
                              "--no-lss"], 300),
                ("encoder", ["encoder.py", "--preset", "geomim-tiny", "--iters", "2", "--warmup", "1"], 300),
                ("inference", ["inference.py", "--preset", "geomim-tiny", "--iters", "2", "--warmup", "1"], 300),
                ("train_step_detect", ["train_step.py", "--task", "detect", "--steps", "2", "--warmup", "1",
                                       "--workers", "0", "--no-temporal"], 1200)]
    world = os.path.join(out, "world")
    step = ["--dataroot", world, "--version", "v1.0-mini", "--split", "mini_train", "--workers", "0", "4", "8",
            "--steps", "10", "--warmup", "3", "--batch-size", "4"]
    return [
        ("bev_pool", ["bev_pool.py", "--batch", "1", "4", "--iters", "20", "--warmup", "5", "--no-lss"], 120),
        ("encoder_fp32", ["encoder.py", "--preset", "geomim-swin-b", "--iters", "10", "--warmup", "3"], 60),
        ("encoder_bf16", ["encoder.py", "--preset", "geomim-swin-b", "--dtype", "bf16", "--iters", "10",
                          "--warmup", "3"], 60),
        ("inference", ["inference.py", "--preset", "geomim-swin-b", "--iters", "20", "--warmup", "5"], 90),
        ("world", ["-m", "geomim_hf.synthetic", "--format", "nuscenes", "--version", "v1.0-mini", "--out", world,
                   "--scenes", "10", "--samples-per-scene", "4", "--workers", "8"], 120),
        ("train_step_detect", ["train_step.py", "--task", "detect", "--preset", "geomim-swin-b", *step], 90),
        ("train_step_pretrain", ["train_step.py", "--task", "pretrain", "--preset", "geomim-swin-b", *step], 90),
    ]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="tiny settings: checks the script runs (CPU)")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    results = {}
    for name, arguments, limit in plan(args.out, args.quick):
        target = os.path.join(args.out, f"{name}.json")
        is_module = arguments[0] == "-m"
        command = [sys.executable, *(arguments if is_module else [os.path.join(HERE, arguments[0]), *arguments[1:]])]
        if not is_module:
            command += ["--json", target]
        started = time.perf_counter()
        try:
            run = subprocess.run(command, capture_output=True, text=True, timeout=limit)
            status, output = run.returncode, run.stdout + run.stderr
        except subprocess.TimeoutExpired as expired:
            status, output = "timeout", (expired.stdout or b"").decode(errors="replace") if isinstance(
                expired.stdout, bytes) else (expired.stdout or "")
        seconds = time.perf_counter() - started
        print(f"== {name}: {status} in {seconds:.0f} s\n{output[-4000:]}", flush=True)
        results[name] = {"command": command, "status": status, "seconds": round(seconds, 1),
                         "results": json.load(open(target)) if os.path.isfile(target) else None}
    with open(os.path.join(args.out, "all.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    return results


if __name__ == "__main__":
    main()
