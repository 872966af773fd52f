"""GeoMIMSparseTeacher: the official geometry, the student check, the frames of ``bev_features``, loading
either teacher from a folder, and the example scripts run with it."""

import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

from geomim_hf import GeoMIMConfig
from geomim_hf.configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher
from geomim_hf.configuration_sparse_teacher import GeoMIMSparseTeacherConfig
from geomim_hf.modeling_sparse_teacher import GeoMIMSparseTeacher
from geomim_hf.teacher_cache import TeacherFeatureCache
from geomim_hf.teachers import load_teacher
from tests.helpers import assert_same_weights
from tests.modeling.test_sparse_encoder import needs_spconv

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_ENCODER = dict(base_channels=4, encoder_channels=((4, 4, 8), (8, 8, 16), (16, 16, 32), (32, 32)))


def tiny_teacher_config(**overrides):
    """A small teacher on the geomim-tiny student's target grid (3.2 m cells, 64 channels)."""
    return GeoMIMSparseTeacherConfig.for_student(GeoMIMConfig.from_preset("geomim-tiny"), **TINY_ENCODER, **overrides)


def test_official_geometry_fits_the_swin_b_student():
    config = GeoMIMSparseTeacherConfig()
    assert config.voxel_grid_shape == (1440, 1440, 40) and config.sparse_shape == (1440, 1440, 41)
    assert config.encoder_output_shape == (180, 180, 2)
    assert (config.target_channels, config.target_resolution, config.target_grid.size) == (256, 0.6, (180, 180))
    config.check_student(GeoMIMConfig.from_preset("geomim-swin-b"))
    with pytest.raises(ValueError, match=r"target cell 0.6 m .* 3.2 m.*target channels 256 .* 64"):
        config.check_student(GeoMIMConfig.from_preset("geomim-tiny"))
    tiny = tiny_teacher_config()
    assert (tiny.target_resolution, tiny.target_channels, tiny.target_grid.size) == (3.2, 64, (32, 32))
    tiny.check_student(GeoMIMConfig.from_preset("geomim-tiny"))


def test_config_round_trip_and_bad_geometry(tmp_path):
    GeoMIMSparseTeacherConfig().save_pretrained(tmp_path)
    loaded = GeoMIMSparseTeacherConfig.from_pretrained(tmp_path)  # JSON turns tuples into lists
    assert loaded.downsample_paddings == (1, 1, (1, 1, 0)) and loaded.encoder_output_shape == (180, 180, 2)
    with pytest.raises(ValueError, match="point_cloud_range x extent 108.0 m is not a whole number of voxel_size 0.07"):
        GeoMIMSparseTeacherConfig(voxel_size=(0.07, 0.07, 0.2))
    with pytest.raises(ValueError, match="do not tile"):
        GeoMIMSparseTeacherConfig(point_cloud_range=(-54.0, -54.0, -5.0, 54.3, 54.0, 3.0),
                                  sparse_shape=(1444, 1440, 41))
    with pytest.raises(ValueError, match="no z cells left"):
        GeoMIMSparseTeacherConfig(point_cloud_range=(-54.0, -54.0, -0.2, 54.0, 54.0, 0.2), sparse_shape=(1440, 1440, 2))
    with pytest.raises(ValueError, match=r"sparse_shape \(1440, 1440, 39\) is smaller than the \(1440, 1440, 40\)"):
        GeoMIMSparseTeacherConfig(sparse_shape=(1440, 1440, 39))
    with pytest.raises(ValueError, match="x_range"):
        GeoMIMSparseTeacherConfig(x_range=(-54.0, 54.3))


def _cloud(gen, count, centre_lidar):
    points = torch.randn(count, 5, generator=gen) * torch.tensor([1.5, 1.5, 0.5, 0.3, 0.1])
    points[:, :3] += torch.tensor(centre_lidar)
    return points  # (P, 5) x, y, z, intensity, lag in the LiDAR frame


@needs_spconv
def test_bev_features_lie_on_the_ego_grid():
    torch.manual_seed(0)
    teacher = GeoMIMSparseTeacher(tiny_teacher_config()).eval()
    gen = torch.Generator().manual_seed(0)
    points = torch.stack([_cloud(gen, 400, (12.0, -20.0, -1.0)), _cloud(gen, 400, (-30.0, 8.0, 0.0))])  # (B=2, P, 5)
    # Sample 0: the LiDAR 6.4 m (two cells) ahead of the ego origin; sample 1: turned a quarter left.
    ego_from_lidar = torch.eye(4).repeat(2, 1, 1)
    ego_from_lidar[0, 0, 3] = 6.4
    ego_from_lidar[1, :2, :2] = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
    out = teacher(points, ego_from_lidar)
    assert out.bev_features.shape == (2, 64, 32, 32) == out.lidar_bev_features.shape
    lidar_bev, bev = out.lidar_bev_features, out.bev_features
    occupied = lidar_bev.abs().sum(1) > 0  # (B, Y, X) cells that hold features
    # The cloud's cells: centre (12, -20) -> column (12 + 51.2) / 3.2 = 19, row (-20 + 51.2) / 3.2 = 9.
    assert occupied[0, 9, 19] and occupied[0].sum() < 40
    torch.testing.assert_close(bev[0, :, :, 2:], lidar_bev[0, :, :, :-2], atol=1e-4, rtol=1e-4)  # +2 columns
    assert bev[0, :, :, :2].abs().max() < 1e-4  # behind the LiDAR map: empty
    # Quarter turn: ego (x, y) = (-y_l, x_l), so ego row r, column c shows LiDAR row 31 - c, column r.
    torch.testing.assert_close(bev[1], lidar_bev[1].flip(-2).transpose(-1, -2), atol=1e-4, rtol=1e-4)
    assert out.num_voxels.tolist() == [len(teacher.voxelize(points[i:i + 1])[0]) for i in range(2)]

    # Padding points masked out change nothing; bev_features is the same map, without gradients.
    padded = torch.cat([points, torch.full((2, 50, 5), 3.0)], 1)
    mask = torch.ones(2, 450, dtype=torch.bool)
    mask[:, 400:] = False
    torch.testing.assert_close(teacher.bev_features(padded, ego_from_lidar, mask), bev)
    assert not teacher.bev_features(padded, ego_from_lidar, mask).requires_grad
    empty = teacher(torch.full((1, 10, 5), 500.0), torch.eye(4)[None])  # nothing in range
    assert empty.bev_features.shape == (1, 64, 32, 32) and empty.bev_features.abs().max() == 0
    with pytest.raises(ValueError, match="4 features per point"):
        teacher(points[..., :4], ego_from_lidar)


def test_load_teacher_dispatches_on_the_saved_model_type(tmp_path):
    torch.manual_seed(0)
    sparse = GeoMIMSparseTeacher(tiny_teacher_config())  # built and saved without running spconv
    sparse.save_pretrained(tmp_path / "sparse")
    pillar_config = GeoMIMLidarTeacherConfig.for_student(GeoMIMConfig.from_preset("geomim-tiny"),
                                                         backbone_channels=(8, 8, 64), backbone_layers=(1, 1, 1),
                                                         neck_channels=8, head_channels=8)
    GeoMIMLidarTeacher(pillar_config).save_pretrained(tmp_path / "pillar")
    loaded = load_teacher(str(tmp_path / "sparse"))
    assert isinstance(loaded, GeoMIMSparseTeacher) and not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())
    assert_same_weights(sparse, loaded)
    assert isinstance(load_teacher(str(tmp_path / "pillar")), GeoMIMLidarTeacher)
    GeoMIMConfig.from_preset("geomim-tiny").save_pretrained(tmp_path / "student")
    with pytest.raises(ValueError, match=r"holds a GeoMIMConfig .*'geomim'.*not a LiDAR teacher"):
        load_teacher(str(tmp_path / "student"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty is not a LiDAR teacher.*geomim_lidar_teacher.*geomim_sparse_teacher"):
        load_teacher(str(tmp_path / "empty"))
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text(json.dumps({"model_type": "no_such_model"}))
    with pytest.raises(ValueError, match="other is not a LiDAR teacher"):
        load_teacher(str(tmp_path / "other"))


@needs_spconv
def test_example_scripts_run_with_the_sparse_teacher(nuscenes_root, tmp_path):
    torch.manual_seed(0)
    GeoMIMSparseTeacher(tiny_teacher_config()).save_pretrained(tmp_path / "teacher")
    env = {**os.environ, "ACCELERATE_USE_CPU": "1"}
    subprocess.run([sys.executable, str(REPO / "examples" / "cache_teacher_features.py"), "--teacher",
                    str(tmp_path / "teacher"), "--dataroot", str(nuscenes_root), "--version", "v1.0-mini", "--split",
                    "mini_val", "--sweeps", "1", "--output-dir", str(tmp_path / "features"), "--device", "cpu"],
                   check=True, capture_output=True, env=env)
    cache = TeacherFeatureCache(str(tmp_path / "features"))
    assert cache.info["channels"] == 64 and cache.info["resolution"] == 3.2 and cache.info["samples"] == 6
    token = next((tmp_path / "features").glob("*.safetensors")).stem
    features = cache.load([token], torch.eye(4)[None])
    assert features.shape == (1, 64, 32, 32) and features.abs().sum() > 0
    result = subprocess.run([sys.executable, str(REPO / "examples" / "pretrain.py"), "--dataroot", str(nuscenes_root),
                             "--version", "v1.0-mini", "--train-split", "mini_val", "--model-config", "geomim-tiny",
                             "--teacher", str(tmp_path / "teacher"), "--output-dir", str(tmp_path / "pretrain"),
                             "--batch-size", "1", "--num-workers", "0", "--logging-steps", "1", "--max-steps", "1",
                             "--warmup-steps", "1", "--sweeps", "1"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    history = [json.loads(line) for line in open(tmp_path / "pretrain" / "loss_history.jsonl")]
    assert len(history) == 1 and history[0]["loss"] > 0
