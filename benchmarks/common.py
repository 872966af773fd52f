"""What every benchmark script shares: timing boundaries, the device's name, the JSON it writes."""

from __future__ import annotations

import json
import os
import statistics
import time

import torch


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a timer boundary); nothing on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def write_json(path: str | None, results: dict) -> None:
    """Write ``results`` to ``path`` (the scripts' ``--json``), making its folder; nothing when ``path`` is None."""
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as handle:
            json.dump(results, handle, indent=2)


def median_seconds(call, device: torch.device, iters: int, warmup: int, before=None) -> float:
    """Median wall time of ``call()`` over ``iters`` calls after ``warmup`` untimed ones, the device synchronised
    at both ends of each; ``before()`` runs ahead of every call, untimed."""
    times = []
    for step in range(warmup + iters):
        if before is not None:
            before()
        synchronize(device)
        started = time.perf_counter()
        call()
        synchronize(device)
        if step >= warmup:
            times.append(time.perf_counter() - started)
    return statistics.median(times)
