import pytest
import torch
from transformers import AutoModelForSemanticSegmentation

from geomim_hf import GeoMIMForMaskedBEVModeling, GeoMIMImageProcessor
from geomim_hf.data import load_nuscenes, make_dataloader
from geomim_hf.data.maps import MAP_CLASSES
from geomim_hf.evaluation import evaluate_map_segmentation
from geomim_hf.modeling_geomim import GeoMIMForBEVDetection, GeoMIMForBEVSegmentation
from modeling.segmentation import PRIOR_PROBABILITY, map_focal_loss

from .test_modeling_geomim import _inputs
from .test_modeling_geomim_detection import _config

CAMERA = ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original")


def test_forward_loss_and_post_process():
    torch.manual_seed(0)
    model = GeoMIMForBEVSegmentation(_config()).eval()
    inputs = _inputs(model.config, batch=2)
    masks = torch.zeros(2, len(MAP_CLASSES), 200, 200, dtype=torch.bool)
    masks[:, 0, 80:120] = True
    with torch.no_grad():
        out = model(**{k: inputs[k] for k in CAMERA}, map_masks=masks, depth_labels=inputs["depth_labels"])
    assert out.logits.shape == (2, len(MAP_CLASSES), 200, 200)
    probabilities = model.post_process(out)
    assert probabilities.shape == out.logits.shape and 0 <= probabilities.min() and probabilities.max() <= 1
    assert probabilities.mean().item() == pytest.approx(PRIOR_PROBABILITY, rel=0.3)  # the focal-loss start
    expected = out.segmentation_loss + model.config.det_depth_loss_weight * out.depth_loss
    torch.testing.assert_close(out.loss, expected)


def test_focal_loss_equals_the_formula():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 4)
    targets = torch.rand(2, 3, 5, 4) < 0.3
    p = logits.sigmoid()
    p_t = torch.where(targets, p, 1 - p)
    alpha_t = torch.where(targets, 0.25, 0.75)
    expected = (-alpha_t * (1 - p_t) ** 2 * p_t.log()).mean()
    torch.testing.assert_close(map_focal_loss(logits, targets, alpha=0.25, gamma=2.0), expected)
    with pytest.raises(ValueError, match=r"map_masks must be \(B, K, Y, X\)"):
        map_focal_loss(logits, targets[:, :2], alpha=0.25, gamma=2.0)


def test_the_trunk_is_the_detectors_and_a_pretrained_encoder_loads(tmp_path):
    """The same weights give the detector and the segmenter the same BEV features; a pretraining checkpoint
    loads its encoder (the rest is new), and the Auto class maps the config to the segmenter."""
    config = _config(det_temporal=False)
    torch.manual_seed(0)
    detector = GeoMIMForBEVDetection(config).eval()
    segmenter = GeoMIMForBEVSegmentation(config).eval()
    trunk = {k: v for k, v in detector.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = segmenter.load_state_dict(trunk, strict=False)
    assert unexpected == [] and all(name.startswith("head.") for name in missing)
    inputs = {k: v for k, v in _inputs(config, batch=1).items() if k in CAMERA}
    with torch.no_grad():
        torch.testing.assert_close(segmenter(**inputs).bev_features, detector(**inputs).bev_features)

    pretrained = GeoMIMForMaskedBEVModeling(_config())
    pretrained.save_pretrained(tmp_path)
    loaded = GeoMIMForBEVSegmentation.from_pretrained(tmp_path)
    for name, tensor in pretrained.geomim.state_dict().items():
        torch.testing.assert_close(loaded.geomim.state_dict()[name], tensor, msg=name)
    assert type(AutoModelForSemanticSegmentation.from_config(_config())) is GeoMIMForBEVSegmentation


def test_the_tiny_segmenter_overfits_a_few_samples(nuscenes_root, tmp_path):
    """Trained on three keyframes' devkit masks (one mini_val scene), scored on them by BEVFusion's metric."""
    torch.manual_seed(0)
    rows = load_nuscenes(str(nuscenes_root), "v1.0-mini", "mini_val", cache_dir=str(tmp_path), map_masks=True)
    rows = rows.select(range(3))
    model = GeoMIMForBEVSegmentation(_config(det_temporal=False))
    processor = GeoMIMImageProcessor(image_size=model.config.image_size)
    batch, = make_dataloader(rows, processor, batch_size=3, with_targets=False, input_names=model.model_input_names)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(100):
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        probabilities = model.post_process(model.eval()(**batch))
    metrics = evaluate_map_segmentation(probabilities, batch["map_masks"])
    print(metrics)
    assert metrics["IoU/drivable_area"] > 0.9 and metrics["IoU/walkway"] > 0.8 and metrics["mIoU"] > 0.4
