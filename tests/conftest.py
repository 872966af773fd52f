"""Shared fixtures: small synthetic worlds, written once per test session."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # Triton kernels run in its interpreter on the CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

from geomim_hf.synthetic.nuscenes_writer import write_nuscenes
from geomim_hf.synthetic.waymo_writer import write_waymo

# Three scenes: the two of mini_val (every class is guaranteed in each) and one of mini_train.
NUSCENES_WORLD = dict(num_scenes=3, samples_per_scene=3, seed=0, version="v1.0-mini", camera_sweeps=1,
                      lidar_sweeps=2)
WAYMO_WORLD = dict(num_segments=2, frames_per_segment=2, seed=0)


@pytest.fixture(scope="session")
def nuscenes_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuscenes")
    write_nuscenes(str(root), workers=2, progress=False, **NUSCENES_WORLD)
    return root


@pytest.fixture(scope="session")
def nusc(nuscenes_root):
    from nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(nuscenes_root), verbose=False)


@pytest.fixture(scope="session")
def waymo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("waymo")
    write_waymo(str(root), workers=2, progress=False, **WAYMO_WORLD)
    return root


@pytest.fixture(scope="session")
def detector_dir(tmp_path_factory):
    """A randomly initialised tiny detector (seed 0) saved with its image processor."""
    from geomim_hf import GeoMIMConfig, GeoMIMForBEVDetection, GeoMIMImageProcessor

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("detector")
    GeoMIMForBEVDetection(GeoMIMConfig.from_preset("geomim-tiny")).save_pretrained(path)
    GeoMIMImageProcessor(image_size=(64, 176)).save_pretrained(path)
    return path
