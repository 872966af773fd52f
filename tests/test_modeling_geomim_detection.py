import pytest
import torch

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling, GeoMIMImageProcessor
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.evaluation import evaluate_detector
from geomim_hf.modeling_geomim import GeoMIMForBEVDetection

from .test_modeling_geomim import _inputs


def _config(**overrides):
    return GeoMIMConfig.from_preset("geomim-tiny", kernel_backend="torch", **overrides)


def test_forward_post_process_and_the_previous_frame():
    torch.manual_seed(0)
    model = GeoMIMForBEVDetection(_config()).eval()
    inputs = _inputs(model.config, batch=2)
    camera = {k: inputs[k] for k in ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original")}
    previous = {f"prev_{k}": v for k, v in camera.items()}
    with torch.no_grad():
        alone = model(**camera)
        # The same frame as its own predecessor, still in place: exactly what the first frame does.
        same = model(**camera, **previous, ego_from_prev_ego=torch.eye(4).expand(2, 4, 4))
        moved = model(**camera, **previous, ego_from_prev_ego=torch.tensor(
            [[1.0, 0, 0, 3.0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]).expand(2, 4, 4))
    torch.testing.assert_close(same.heatmap, alone.heatmap, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(moved.heatmap, alone.heatmap)
    assert alone.heatmap.shape == (2, 10, 64, 64) and alone.attributes.shape == (2, 8, 64, 64)
    results = model.post_process(alone, score_threshold=0.0, top_k=20)
    assert len(results) == 2 and results[0]["boxes"].shape[1] == 7 and len(results[0]["attributes"]) <= 20


def test_pretrained_encoder_loads_into_the_detector(tmp_path):
    pretrained = GeoMIMForMaskedBEVModeling(_config())
    pretrained.save_pretrained(tmp_path)
    detector = GeoMIMForBEVDetection.from_pretrained(tmp_path, drop_path_rate=0.2)
    assert detector.config.drop_path_rate == 0.2
    for (name, a), b in zip(pretrained.geomim.state_dict().items(), detector.geomim.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_pretrained_encoder_serves_stride_8_features(tmp_path):
    """Pretraining decodes strides 16 and 32; the detector may read stride 8 too: the shared stages load,
    the new stage's output norm starts fresh, and the lift runs at stride 8."""
    pretrained = GeoMIMForMaskedBEVModeling(_config())
    pretrained.save_pretrained(tmp_path)
    detector = GeoMIMForBEVDetection.from_pretrained(tmp_path, out_indices=(1, 2, 3), det_temporal=False).eval()
    assert detector.feature_stride == 8 and detector.lift_splat.feature_size == (8, 22)
    for name, tensor in pretrained.geomim.state_dict().items():
        torch.testing.assert_close(detector.geomim.state_dict()[name], tensor, msg=name)
    assert "out_norms.1.weight" not in pretrained.geomim.state_dict()
    inputs = _inputs(detector.config, batch=1)
    with torch.no_grad():
        out = detector(**{k: inputs[k] for k in ("pixel_values", "intrinsics", "ego_from_camera",
                                                 "processed_from_original")})
    assert out.depth.shape[-2:] == (8, 22) and out.heatmap.shape == (1, 10, 64, 64)


def test_layer_decay_groups_cover_every_parameter_once():
    model = GeoMIMForBEVDetection(_config())
    groups = model.parameter_groups(1e-3, 0.05, 0.8)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))
    rates = {g["layer"]: g["lr"] for g in groups}
    layers = sum(model.config.depths) + 1
    assert rates[layers] == pytest.approx(1e-3) and rates[0] == pytest.approx(1e-3 * 0.8**layers)
    stage0_block0 = next(g for g in groups for n, p in model.named_parameters()
                         if n == "geomim.encoder.stages.0.blocks.0.attn.qkv.weight" and any(p is q for q in g["params"]))
    assert stage0_block0["layer"] == 1 and stage0_block0["weight_decay"] == 0.05


def test_the_tiny_detector_overfits_a_few_samples(nuscenes_root, tmp_path):
    """Trained on the two mini_val scenes and evaluated on them by the devkit: a high NDS."""
    torch.manual_seed(0)
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", sweeps=2, cache_dir=str(tmp_path / "cache"))
    config = _config(det_temporal=False)
    model = GeoMIMForBEVDetection(config)
    processor = GeoMIMImageProcessor(image_size=config.image_size, depth_stride=16)
    batches = list(make_dataloader(rows, processor, batch_size=6, return_depth=True,  # all six keyframes
                                   input_names=model.model_input_names))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    for step in range(400):
        batch = batches[step % len(batches)]
        out = model(**batch)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    metrics = evaluate_detector(model.eval(), str(nuscenes_root), "v1.0-mini", "mini_val", str(tmp_path), processor,
                                verbose=False, cache_dir=str(tmp_path / "cache"))
    print(metrics)
    assert metrics["NDS"] > 0.5 and metrics["mAP"] > 0.4


def test_the_first_step_does_not_spike():
    """At initialisation the detector's outputs start small and its gradients sane: the regressions near
    zero (not metres off), the depth distribution near uniform, and no gradient amplified by a norm over
    the all-zero padding of the image (that once made the first gradient norm ~7,000)."""
    torch.manual_seed(0)
    model = GeoMIMForBEVDetection(_config(det_temporal=False)).train()
    inputs = _inputs(model.config, batch=2)
    camera = {k: inputs[k] for k in ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original")}
    boxes = torch.tensor([[[10.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.3], [-20.0, -5.0, 0.9, 0.8, 0.7, 1.8, 1.0]]]).expand(2, -1, -1)
    out = model(**camera, boxes=boxes, velocities=torch.zeros(2, 2, 2), labels=torch.tensor([[0, 8]] * 2),
                attributes=torch.tensor([[0, 5]] * 2), depth_labels=inputs["depth_labels"])
    out.loss.backward()
    assert out.regression.abs().max() < 0.5
    count = model.config.detection_depth_bins.count
    uniform = torch.full((count,), 1 / count)
    uniform_bce = torch.nn.functional.binary_cross_entropy(uniform, torch.eye(len(uniform))[0], reduction="sum")
    assert out.depth_loss.item() == pytest.approx(float(uniform_bce), rel=0.05)
    norms = {name: p.grad.norm() for name, p in model.named_parameters() if p.grad is not None}
    assert torch.stack(list(norms.values())).norm() < 50, sorted(norms.items(), key=lambda kv: -kv[1])[:3]
    assert norms["geomim.encoder.patch_embed.bias"] < 10 * norms["geomim.encoder.patch_embed.weight"]


def test_bf16_autocast_gives_the_float32_loss_and_gradients():
    """--mixed-precision bf16: under autocast the training loss is the float32 one within bf16's rounding, the
    prediction layers still give float32 outputs, and every parameter gets a finite gradient."""
    torch.manual_seed(0)
    model = GeoMIMForBEVDetection(_config(det_temporal=False, drop_path_rate=0.0)).train()
    inputs = _inputs(model.config, batch=2)
    camera = {k: inputs[k] for k in ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original")}
    targets = dict(boxes=torch.tensor([[[10.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.3]]]).expand(2, -1, -1),
                   velocities=torch.zeros(2, 1, 2), labels=torch.tensor([[0]] * 2),
                   attributes=torch.tensor([[0]] * 2), depth_labels=inputs["depth_labels"])
    plain = model(**camera, **targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = model(**camera, **targets)
    assert mixed.heatmap.dtype == mixed.regression.dtype == mixed.depth.dtype == torch.float32
    for name in ("loss", "heatmap_loss", "regression_loss", "depth_loss"):
        assert getattr(mixed, name).item() == pytest.approx(getattr(plain, name).item(), rel=0.02), name
    mixed.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
