"""convert_mmdet3d_centerpoint: mmdetection3d's nuScenes pillar CenterPoint (layout: section 3 of
docs/official_checkpoint_layouts.md) into GeoMIMLidarTeacher, checked tensor by tensor and against an
independent functional re-implementation of mmdetection3d's forward pass written from that layout."""

import json
import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from geomim_hf.convert.convert_mmdet3d_centerpoint import convert_mmdet3d_centerpoint, main
from geomim_hf.configuration_lidar_teacher import GeoMIMLidarTeacherConfig
from geomim_hf.modeling_lidar_teacher import GeoMIMLidarTeacher
from tests.helpers import assert_same_weights

TASKS = [["car"], ["truck", "construction_vehicle"], ["bus", "trailer"], ["barrier"], ["motorcycle", "bicycle"],
         ["pedestrian", "traffic_cone"]]
CLASSES = [name for task in TASKS for name in task]
HEADS = {"reg": 2, "height": 1, "dim": 3, "rot": 2, "vel": 2}  # then heatmap; the anno_box order


def _mmdet3d_state_dict(generator):
    """Every tensor of the checkpoint, with mmdetection3d's names and shapes (section 3 of the layout doc)."""
    state = {}

    def conv(key, *shape, bias=False):
        fan_in = shape[1] * shape[2] * shape[3] if len(shape) == 4 else shape[1]
        state[key + ".weight"] = torch.randn(*shape, generator=generator) * math.sqrt(2.0 / fan_in)
        if bias:
            state[key + ".bias"] = torch.randn(shape[0], generator=generator) * 0.1

    def norm(key, channels):
        state[key + ".weight"] = 0.5 + torch.rand(channels, generator=generator)
        state[key + ".bias"] = torch.randn(channels, generator=generator) * 0.1
        state[key + ".running_mean"] = torch.randn(channels, generator=generator) * 0.1
        state[key + ".running_var"] = 0.5 + torch.rand(channels, generator=generator)
        state[key + ".num_batches_tracked"] = torch.tensor(int(torch.randint(1, 10**6, (1,), generator=generator)))

    conv("pts_voxel_encoder.pfn_layers.0.linear", 64, 11)
    norm("pts_voxel_encoder.pfn_layers.0.norm", 64)
    for block, (cin, cout, layers) in enumerate([(64, 64, 3), (64, 128, 5), (128, 256, 5)]):
        for j in range(layers + 1):
            conv(f"pts_backbone.blocks.{block}.{3 * j}", cout, cin if j == 0 else cout, 3, 3)
            norm(f"pts_backbone.blocks.{block}.{3 * j + 1}", cout)
    conv("pts_neck.deblocks.0.0", 128, 64, 2, 2)  # stride 0.5: Conv2d (out, in, 2, 2)
    conv("pts_neck.deblocks.1.0", 128, 128, 1, 1)  # stride 1: Conv2d (out, in, 1, 1)
    # stride 2: ConvTranspose2d, weight (in, out, 2, 2); its fan-in is in/4 per output pixel
    state["pts_neck.deblocks.2.0.weight"] = torch.randn(256, 128, 2, 2, generator=generator) * math.sqrt(2.0 / 256)
    for i in range(3):
        norm(f"pts_neck.deblocks.{i}.1", 128)
    conv("pts_bbox_head.shared_conv.conv", 64, 384, 3, 3)
    norm("pts_bbox_head.shared_conv.bn", 64)
    for t, classes in enumerate(TASKS):
        for head, out in {**HEADS, "heatmap": len(classes)}.items():
            conv(f"pts_bbox_head.task_heads.{t}.{head}.0.conv", 64, 64, 3, 3)
            norm(f"pts_bbox_head.task_heads.{t}.{head}.0.bn", 64)
            conv(f"pts_bbox_head.task_heads.{t}.{head}.1", out, 64, 3, 3, bias=True)
    return state


STATE = _mmdet3d_state_dict(torch.Generator().manual_seed(0))


def test_every_checkpoint_tensor_lands_where_it_should():
    model, report = convert_mmdet3d_centerpoint(STATE, source="centerpoint.pth")
    ours = model.state_dict()
    assert len(ours) == len(STATE) and report.initialised == {} and report.unused == {}
    assert sorted(report.converted.values()) == sorted(STATE)  # one target per source tensor
    for target, source in report.converted.items():
        expected = STATE[source].transpose(0, 1) if source == "pts_neck.deblocks.1.0.weight" else STATE[source]
        assert torch.equal(ours[target], expected), (target, source)
    # One of each kind, named by hand.
    for source, target in {
        "pts_voxel_encoder.pfn_layers.0.linear.weight": "encoder.pfn.linear.weight",
        "pts_voxel_encoder.pfn_layers.0.norm.running_var": "encoder.pfn.norm.running_var",
        "pts_backbone.blocks.0.0.weight": "encoder.backbone.stages.0.0.weight",
        "pts_backbone.blocks.2.16.num_batches_tracked": "encoder.backbone.stages.2.16.num_batches_tracked",
        "pts_neck.deblocks.0.0.weight": "encoder.neck.blocks.0.0.weight",
        "pts_neck.deblocks.2.1.running_mean": "encoder.neck.blocks.2.1.running_mean",
        "pts_bbox_head.shared_conv.conv.weight": "head.shared.0.weight",
        "pts_bbox_head.shared_conv.bn.bias": "head.shared.1.bias",
        "pts_bbox_head.task_heads.0.reg.0.conv.weight": "head.tasks.0.regression.offset.0.weight",
        "pts_bbox_head.task_heads.1.dim.0.bn.running_mean": "head.tasks.1.regression.size.1.running_mean",
        "pts_bbox_head.task_heads.2.height.1.bias": "head.tasks.2.regression.height.3.bias",
        "pts_bbox_head.task_heads.3.vel.1.weight": "head.tasks.3.regression.velocity.3.weight",
        "pts_bbox_head.task_heads.4.rot.0.bn.weight": "head.tasks.4.regression.rotation.1.weight",
        "pts_bbox_head.task_heads.5.heatmap.1.bias": "head.tasks.5.heatmap.3.bias",
    }.items():
        assert report.converted[target] == source
    # The 1x1 neck conv: mmdetection3d's Conv2d computes what our transposed 1x1 computes.
    x = torch.randn(1, 128, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder.neck.blocks[1][0](x),
                                   F.conv2d(x, STATE["pts_neck.deblocks.1.0.weight"]), atol=1e-5, rtol=1e-5)


def test_refusals_name_the_keys():
    with pytest.raises(KeyError, match=r"match no known key.*pts_bbox_head\.task_heads\.0\.iou\.1\.weight"):
        convert_mmdet3d_centerpoint({**STATE, "pts_bbox_head.task_heads.0.iou.1.weight": torch.zeros(1, 64, 3, 3)})
    with pytest.raises(KeyError, match=r"match no known key.*'img_backbone\.conv1\.weight'"):
        convert_mmdet3d_centerpoint({**STATE, "img_backbone.conv1.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"DCN head.*task_heads\.0\.feature_adapt_cls\.weight"):
        convert_mmdet3d_centerpoint({**STATE, "pts_bbox_head.task_heads.0.feature_adapt_cls.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match=r"the model does not have.*head\.tasks\.6\.heatmap\.3\.bias"):
        convert_mmdet3d_centerpoint({**STATE, "pts_bbox_head.task_heads.6.heatmap.1.bias": torch.zeros(1)})
    # A PFN over other point features (e.g. in_channels=4: no time lag) has another linear width.
    legacy = {**STATE, "pts_voxel_encoder.pfn_layers.0.linear.weight": torch.zeros(64, 10)}
    with pytest.raises(ValueError, match=r"shape mismatch.*encoder\.pfn\.linear\.weight: source \(64, 10\) vs model "
                                         r"\(64, 11\)"):
        convert_mmdet3d_centerpoint(legacy)
    # A config with other task groups than the checkpoint's.
    with pytest.raises(ValueError, match=r"shape mismatch.*head\.tasks\.0\.heatmap\.3\.weight"):
        convert_mmdet3d_centerpoint(STATE, GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02(
            head_tasks=(("car", "truck"), ("construction_vehicle",), ("bus", "trailer"), ("barrier",),
                        ("motorcycle", "bicycle"), ("pedestrian", "traffic_cone"))))
    partial = {k: v for k, v in STATE.items() if not k.startswith("pts_bbox_head.task_heads.4.vel.")}
    with pytest.raises(KeyError, match=r"refusing a partial conversion.*head\.tasks\.4\.regression\.velocity"):
        convert_mmdet3d_centerpoint(partial)


# --- mmdetection3d's forward, written from its layout and source (not from our modules) -------------

def _hard_voxelize(points, pc_range, voxel, max_points, max_voxels):
    """mmcv's hard voxelization, point by point: (voxels (M, max_points, 5), coors (M, 3) z, y, x, counts)."""
    grid = [round((pc_range[3 + i] - pc_range[i]) / voxel[i]) for i in range(3)]
    index, voxels, coors, counts = {}, [], [], []
    for point in points:
        c = [math.floor((float(point[i]) - pc_range[i]) / voxel[i]) for i in range(3)]
        if any(c[i] < 0 or c[i] >= grid[i] for i in range(3)):
            continue
        key = (c[2], c[1], c[0])
        if key not in index:
            if len(voxels) >= max_voxels:
                continue
            index[key] = len(voxels)
            voxels.append(torch.zeros(max_points, points.shape[1]))
            coors.append(key)
            counts.append(0)
        v = index[key]
        if counts[v] < max_points:
            voxels[v][counts[v]] = point
            counts[v] += 1
    return torch.stack(voxels), torch.tensor(coors), torch.tensor(counts)


def _bn(x, state, key, eps):
    return F.batch_norm(x, state[key + ".running_mean"], state[key + ".running_var"], state[key + ".weight"],
                        state[key + ".bias"], False, 0.0, eps)


def _mmdet3d_forward(state, points, pc_range, max_voxels):
    """PillarFeatureNet (legacy=False) -> PointPillarsScatter -> SECOND -> SECONDFPN -> CenterHead, one sample."""
    voxel = (0.2, 0.2, 8.0)
    voxels, coors, counts = _hard_voxelize(points, pc_range, voxel, 20, max_voxels)
    mean = voxels[:, :, :3].sum(1, keepdim=True) / counts.view(-1, 1, 1)
    offsets = torch.tensor([voxel[0] / 2 + pc_range[0], voxel[1] / 2 + pc_range[1], voxel[2] / 2 + pc_range[2]])
    center = coors[:, [2, 1, 0]].float() * torch.tensor(voxel) + offsets  # x, y, z of each pillar centre
    features = torch.cat([voxels, voxels[:, :, :3] - mean, voxels[:, :, :3] - center[:, None]], -1)
    features = features * (torch.arange(20)[None, :] < counts[:, None]).float()[..., None]  # padded slots: 0
    x = features @ state["pts_voxel_encoder.pfn_layers.0.linear.weight"].T
    x = _bn(x.transpose(1, 2), state, "pts_voxel_encoder.pfn_layers.0.norm", 1e-3).transpose(1, 2)
    pillars = F.relu(x).max(1).values  # (M, 64)
    nx, ny = round((pc_range[3] - pc_range[0]) / 0.2), round((pc_range[4] - pc_range[1]) / 0.2)
    canvas = torch.zeros(64, ny * nx)
    canvas[:, coors[:, 1] * nx + coors[:, 2]] = pillars.T
    x = canvas.view(1, 64, ny, nx)
    stages = []
    for block, layers in enumerate((3, 5, 5)):
        for j in range(layers + 1):
            key = f"pts_backbone.blocks.{block}."
            x = F.conv2d(x, state[key + f"{3 * j}.weight"], stride=2 if j == 0 else 1, padding=1)
            x = F.relu(_bn(x, state, key + f"{3 * j + 1}", 1e-3))
        stages.append(x)
    ups = [F.conv2d(stages[0], state["pts_neck.deblocks.0.0.weight"], stride=2),
           F.conv2d(stages[1], state["pts_neck.deblocks.1.0.weight"]),
           F.conv_transpose2d(stages[2], state["pts_neck.deblocks.2.0.weight"], stride=2)]
    neck = torch.cat([F.relu(_bn(u, state, f"pts_neck.deblocks.{i}.1", 1e-3)) for i, u in enumerate(ups)], 1)
    shared = F.relu(_bn(F.conv2d(neck, state["pts_bbox_head.shared_conv.conv.weight"], padding=1), state,
                        "pts_bbox_head.shared_conv.bn", 1e-5))
    tasks = []
    for t in range(len(TASKS)):
        out = {}
        for head in [*HEADS, "heatmap"]:
            key = f"pts_bbox_head.task_heads.{t}.{head}."
            y = F.relu(_bn(F.conv2d(shared, state[key + "0.conv.weight"], padding=1), state, key + "0.bn", 1e-5))
            out[head] = F.conv2d(y, state[key + "1.weight"], state[key + "1.bias"], padding=1)
        tasks.append(out)
    return stages, tasks


def _synthetic_cloud(generator, count=3000):
    """(count, 5) LiDAR-frame points over and beyond [-6.4, 6.4]^2 x [-5, 3] m, with one crowded pillar."""
    xyz = torch.rand(count, 3, generator=generator) * torch.tensor([15.0, 15.0, 10.0]) - torch.tensor([7.5, 7.5, 6.0])
    crowded = torch.tensor([1.03, -2.17, -1.0]) + torch.rand(45, 3, generator=generator) * torch.tensor([0.15, 0.15, 3])
    xyz = torch.cat([xyz[: count // 2], crowded, xyz[count // 2:]])
    return torch.cat([xyz, torch.rand(len(xyz), 1, generator=generator) * 50,
                      torch.randint(0, 10, (len(xyz), 1), generator=generator) * 0.05], 1)


def test_converted_teacher_computes_what_mmdet3d_computes():
    """End to end on a synthetic cloud: voxelization with both caps, 11 features, padded slots, SECOND,
    SECONDFPN, the six task heads. The smaller range keeps it fast; every weight has its real shape."""
    pc_range = (-6.4, -6.4, -5.0, 6.4, 6.4, 3.0)
    config = GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02(x_range=(-6.4, 6.4), y_range=(-6.4, 6.4),
                                                                     max_pillars=900)
    model, _ = convert_mmdet3d_centerpoint(STATE, config)
    generator = torch.Generator().manual_seed(1)
    clouds = [_synthetic_cloud(generator), _synthetic_cloud(generator, 2000)]
    points = torch.zeros(2, 3045, 5)
    points[0], points[1, :2045] = clouds[0], clouds[1]
    mask = torch.arange(3045)[None] < torch.tensor([[3045], [2045]])
    ego_from_lidar = torch.eye(4).repeat(2, 1, 1)
    with torch.no_grad():
        output = model(points, ego_from_lidar, mask)
        _, stages, _ = model.encoder(points, mask)
    for b, cloud in enumerate(clouds):
        expected_stages, tasks = _mmdet3d_forward(STATE, cloud, pc_range, max_voxels=900)
        for ours, theirs in zip(stages, expected_stages):
            torch.testing.assert_close(ours[b: b + 1], theirs, atol=1e-4, rtol=1e-4)
        for t, task in enumerate(TASKS):
            regression = torch.cat([tasks[t][head] for head in HEADS], 1)[0]  # (10, 16, 16)
            for k, name in enumerate(task):
                c = CLASSES.index(name)
                torch.testing.assert_close(output.heatmap[b, c], tasks[t]["heatmap"][0, k], atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(output.regression[b, c], regression, atol=1e-4, rtol=1e-4)
    # The caps mattered: without them the pillar map differs.
    uncapped = GeoMIMLidarTeacher(GeoMIMLidarTeacherConfig.mmdet3d_centerpoint_pillar02(
        x_range=(-6.4, 6.4), y_range=(-6.4, 6.4), max_pillars=None, max_points_per_pillar=None))
    uncapped.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert not torch.allclose(uncapped.eval().encoder.scatter(points, mask), model.encoder.scatter(points, mask))
    detections = model.post_process(output, score_threshold=0.0, top_k=30)
    assert [sorted(d) for d in detections] == [["boxes", "labels", "scores", "velocities"]] * 2
    assert detections[0]["boxes"].shape[1] == 7 and torch.isfinite(detections[0]["boxes"]).all()


def test_command_line(tmp_path):
    torch.save({"meta": {"epoch": 20}, "state_dict": STATE}, tmp_path / "centerpoint.pth")
    subprocess.run([sys.executable, "-m", "geomim_hf.convert.convert_mmdet3d_centerpoint", "--checkpoint",
                    str(tmp_path / "centerpoint.pth"), "--output-dir", str(tmp_path / "out")], check=True,
                   capture_output=True)
    assert (tmp_path / "out" / "model.safetensors").is_file()
    loaded = GeoMIMLidarTeacher.from_pretrained(tmp_path / "out")
    assert loaded.config.frame == "lidar" and loaded.config.head_tasks == tuple(map(tuple, TASKS))
    converted, _ = convert_mmdet3d_centerpoint(STATE)
    assert_same_weights(converted, loaded)
    report = json.load(open(tmp_path / "out" / "conversion_report.json"))
    assert report["converted"]["head.tasks.1.regression.size.3.weight"] == "pts_bbox_head.task_heads.1.dim.1.weight"
    with pytest.raises(ValueError, match="'centerpoint-voxel01' is neither a folder nor one of"):
        main(["--checkpoint", str(tmp_path / "centerpoint.pth"), "--config", "centerpoint-voxel01", "--output-dir",
              str(tmp_path / "bad")])
