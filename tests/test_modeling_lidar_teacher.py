"""GeoMIMLidarTeacher's mmdetection3d mode (GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02): the
layout it builds, boxes decoded in the LiDAR frame and returned in ego, training targets moved to the
LiDAR frame, and the target features resampled onto the ego grid."""

import json
import math

import pytest
import torch
from torch import nn

from geomim_hf.modeling.centerpoint import REGRESSION_CHANNELS, build_targets, center_loss
from geomim_hf.configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher, LidarTeacherOutput

# nuScenes' LIDAR_TOP: 0.94 m ahead of the ego origin, 1.84 m up, turned -90 degrees (lidar x = ego -y).
EGO_FROM_LIDAR = torch.tensor([[0.0, 1.0, 0.0, 0.94], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.84],
                               [0.0, 0.0, 0.0, 1.0]])


def _small_config(**overrides):
    """The mmdetection3d layout over +-6.4 m: every weight keeps its shape, the grids are 64^2 and 16^2."""
    return GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02(x_range=(-6.4, 6.4), y_range=(-6.4, 6.4),
                                                                  **overrides)


def test_preset_builds_mmdet3d_layout():
    model = GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02())
    assert model.encoder.grid.size == (512, 512) and model.grid.size == (128, 128)  # head at stride 4
    assert model.encoder.pfn.linear.in_features == 11
    norms = [m for m in model.encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert len(norms) == 1 + 4 + 6 + 6 + 3 and all(m.eps == 1e-3 and m.momentum == 0.01 for m in norms)
    assert all(m.eps == 1e-5 for m in model.head.modules() if isinstance(m, nn.BatchNorm2d))
    neck = [block[0] for block in model.encoder.neck.blocks]
    assert [(type(layer), layer.kernel_size, layer.stride) for layer in neck] == [
        (nn.Conv2d, (2, 2), (2, 2)), (nn.ConvTranspose2d, (1, 1), (1, 1)), (nn.ConvTranspose2d, (2, 2), (2, 2))]
    assert [task["heatmap"][-1].out_channels for task in model.head.tasks] == [1, 2, 2, 1, 2, 2]
    assert all(task["heatmap"][-1].kernel_size == (3, 3) for task in model.head.tasks)
    assert all(task["heatmap"][-1].bias.eq(-2.19).all() for task in model.head.tasks)  # the prior, after post_init
    # Default teachers keep their own layout.
    default = GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig())
    assert default.encoder.pfn.linear.in_features == 10 and default.encoder.pfn.norm.eps == 1e-5
    assert default.head.task_classes is None and default.head.regression[-1].kernel_size == (1, 1)


def test_hand_made_box_decodes_from_lidar_to_ego():
    """One truck peak; its task's maps hold gravity-centre z, log sizes and sin/cos yaw in the LiDAR frame."""
    model = GeoMIMLidarTeacher(_small_config()).eval()
    heatmap = torch.full((1, 10, 16, 16), -10.0)
    heatmap[0, 1, 12, 3] = 10.0  # truck at row 12, column 3 of the 0.8 m head grid
    regression = torch.randn(1, 10, REGRESSION_CHANNELS, 16, 16)  # other classes' maps must not be read
    regression[0, 1, :, 12, 3] = torch.tensor([0.25, 0.5, -0.9, math.log(6.0), math.log(2.5), math.log(3.0),
                                               math.sin(0.3), math.cos(0.3), 1.0, 2.0])
    outputs = LidarTeacherOutput(heatmap=heatmap, regression=regression, ego_from_lidar=EGO_FROM_LIDAR[None])
    result = model.post_process(outputs, score_threshold=0.5)[0]
    # LiDAR frame: x = (3 + 0.25) * 0.8 - 6.4 = -3.8, y = (12 + 0.5) * 0.8 - 6.4 = 3.6, z = -0.9 (the centre;
    # mmdetection3d's output box would sit its bottom at -0.9 - 3 / 2). Ego: (y + 0.94, -x, z + 1.84).
    torch.testing.assert_close(result["boxes"], torch.tensor([[4.54, 3.8, 0.94, 6.0, 2.5, 3.0, 0.3 - math.pi / 2]]))
    torch.testing.assert_close(result["velocities"], torch.tensor([[2.0, -1.0]]))  # lidar (1, 2) -> ego (2, -1)
    assert result["labels"].tolist() == [1] and result["scores"].tolist() == pytest.approx([torch.sigmoid(
        torch.tensor(10.0)).item()])
    with pytest.raises(ValueError, match="outputs.ego_from_lidar"):
        model.post_process(LidarTeacherOutput(heatmap=heatmap, regression=regression))


def test_training_targets_are_the_ego_boxes_moved_to_the_lidar_frame():
    model = GeoMIMLidarTeacher(_small_config()).train()
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([torch.rand(1, 800, 3, generator=generator) * 12 - 6,
                        torch.rand(1, 800, 2, generator=generator)], -1)
    boxes_ego = torch.tensor([[[4.54, 3.8, 0.94, 6.0, 2.5, 3.0, 0.3 - math.pi / 2],
                               [-1.0, -2.0, 0.0, 0.8, 0.6, 1.7, 1.0]]])
    velocities_ego = torch.tensor([[[2.0, -1.0], [float("nan"), float("nan")]]])
    labels = torch.tensor([[1, 8]])
    output = model(points, EGO_FROM_LIDAR[None], boxes=boxes_ego, velocities=velocities_ego, labels=labels)
    # The same boxes by hand in the LiDAR frame: (x, y) = (-y_ego, x_ego - 0.94), z - 1.84, yaw + pi / 2.
    boxes_lidar = torch.tensor([[[-3.8, 3.6, -0.9, 6.0, 2.5, 3.0, 0.3], [2.0, -1.94, -1.84, 0.8, 0.6, 1.7,
                                                                          1.0 + math.pi / 2]]])
    targets = build_targets(boxes_lidar, torch.tensor([[[1.0, 2.0], [float("nan"), float("nan")]]]), labels,
                            torch.ones(1, 2, dtype=torch.bool), model.grid, 10)
    expected = center_loss({"heatmap": output.heatmap, "regression": output.regression}, targets)
    torch.testing.assert_close(output.regression_loss, expected["regression_loss"])
    torch.testing.assert_close(output.heatmap_loss, expected["heatmap_loss"])
    output.loss.backward()
    assert model.head.tasks[1]["regression"]["size"][-1].weight.grad.abs().sum() > 0  # the truck's task learns
    assert model.head.tasks[2]["regression"]["size"][-1].weight.grad.abs().sum() == 0  # bus/trailer: no object


def test_target_features_are_resampled_onto_the_ego_grid():
    model = GeoMIMLidarTeacher(_small_config(target_layer=0)).eval()  # 0.4 m cells, 32 x 32
    generator = torch.Generator().manual_seed(2)
    points = torch.cat([torch.rand(1, 1500, 3, generator=generator) * 12 - 6,
                        torch.rand(1, 1500, 2, generator=generator)], -1)
    turned = torch.eye(4)[None].clone()  # ego = lidar turned -90 degrees about the shared origin
    turned[0, :3, :3] = EGO_FROM_LIDAR[:3, :3]
    with torch.no_grad():
        target = model.bev_features(points, turned)
        _, stages, _ = model.encoder(points)  # computed on the LiDAR-frame grid
    # Lidar cell (row r, column c) is at ego (x, y) = (y_l, -x_l): ego row 31 - c, column r.
    torch.testing.assert_close(target, torch.flip(stages[0].transpose(-1, -2), dims=[-2]), atol=1e-4, rtol=1e-4)


def test_config_round_trip_and_validation(tmp_path):
    config = _small_config()
    config.save_pretrained(tmp_path)
    assert json.load(open(tmp_path / "config.json"))["head_tasks"][1] == ["truck", "construction_vehicle"]
    loaded = GeoMIMLidarTeacherConfig.from_pretrained(tmp_path)
    assert loaded.head_tasks == config.head_tasks and loaded.frame == "lidar" and loaded.norm_eps == 1e-3
    # A config saved before these fields existed loads as the ego-frame pillar teacher it was.
    saved = json.load(open(tmp_path / "config.json"))
    for field in ("pillar_center_z", "max_points_per_pillar", "max_pillars", "norm_eps", "norm_momentum",
                  "head_tasks", "head_final_kernel", "frame"):
        del saved[field]
    json.dump(saved, open(tmp_path / "config.json", "w"))
    old = GeoMIMLidarTeacherConfig.from_pretrained(tmp_path)
    assert (old.frame, old.head_tasks, old.pillar_center_z, old.norm_eps, old.max_points_per_pillar) == (
        "ego", None, False, 1e-5, None)
    with pytest.raises(ValueError, match="frame 'global' is not one of"):
        GeoMIMLidarTeacherConfig(frame="global")
    with pytest.raises(ValueError, match="head_tasks .* must hold every name of class_names"):
        GeoMIMLidarTeacherConfig(head_tasks=(("car", "truck"),))
