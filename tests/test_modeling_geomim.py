import numpy as np
import pytest
import torch

from geomim_hf import GeoMIMConfig
from geomim_hf.data.geometry import camera_rotation, make_transform
from geomim_hf.modeling_geomim import (
    GeoMIMForMaskedBEVModeling,
    GeoMIMModel,
    patch_normalize,
    pixel_targets,
    random_cell_mask,
)
from geomim_hf.modeling.decoder import CrossViewAttention
from tests.helpers import devices, full_float32, skip_unless_kernel_runs

VIEWS = 6


def _config(**overrides):
    return GeoMIMConfig.from_preset("geomim-tiny", **{"kernel_backend": "torch", **overrides})


def _inputs(config, batch=2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixel_values = torch.randn(batch, VIEWS, 3, *config.image_size, generator=generator)
    intrinsics = torch.tensor([[60.0, 0, 87.5], [0, 60.0, 31.5], [0, 0, 1]]).expand(batch, VIEWS, 3, 3).clone()
    ego_from_camera = torch.stack([torch.tensor(make_transform(camera_rotation(yaw), np.array([1.0, 0.0, 1.6])),
                                                dtype=torch.float32)
                                   for yaw in np.linspace(0, 2 * np.pi, VIEWS, endpoint=False)]).expand(batch, -1, -1, -1)
    processed_from_original = torch.eye(3).expand(batch, VIEWS, 3, 3).clone()
    teacher = torch.randn(batch, config.target_channels, *config.target_grid.size, generator=generator)
    labels = torch.rand(batch, VIEWS, config.image_size[0] // 16, config.image_size[1] // 16, generator=generator) * 60
    mask = random_cell_mask(config, generator)
    return dict(pixel_values=pixel_values, intrinsics=intrinsics, ego_from_camera=ego_from_camera.clone(),
                processed_from_original=processed_from_original, teacher_features=teacher,
                depth_labels=labels, bool_masked_pos=mask)


def test_tiny_preset_is_a_few_million_parameters_and_runs():
    config = _config()
    model = GeoMIMForMaskedBEVModeling(config).eval()
    assert 1e6 < sum(p.numel() for p in model.parameters()) < 1e7
    inputs = _inputs(config)
    with torch.no_grad():
        out = model(**inputs)
    assert out.reconstruction.shape == (2, 2, config.target_channels, *config.target_grid.size)
    assert out.depth.shape == (2, 2, VIEWS, config.pretraining_depth_bins.count, 4, 11)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + config.depth_loss_weight * out.depth_loss)
    assert out.bool_masked_pos.float().mean() == pytest.approx(0.5, abs=0.1)


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    config = _config()
    model = GeoMIMForMaskedBEVModeling(config).train()
    inputs = _inputs(config, batch=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(25):
        loss = model(**inputs).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_save_and_load_give_identical_outputs_and_the_encoder_loads_alone(tmp_path):
    config = _config()
    model = GeoMIMForMaskedBEVModeling(config).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = GeoMIMForMaskedBEVModeling.from_pretrained(tmp_path).eval()
    inputs = _inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).reconstruction, model(**inputs).reconstruction, rtol=0, atol=0)
        encoder = GeoMIMModel.from_pretrained(tmp_path).eval()
        for a, b in zip(encoder(inputs["pixel_values"]).feature_maps, model.geomim(inputs["pixel_values"]).feature_maps):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("encoder_cross_view", [(), (2,)])
def test_visible_features_ignore_the_other_group(encoder_cross_view):
    config = _config(encoder_cross_view_stages=encoder_cross_view)
    model = GeoMIMModel(config).eval()
    for name, parameter in model.named_parameters():  # Cross-View Attention starts as identity: wake it up
        if "cross_view" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    inputs = _inputs(config, batch=1)
    mask = inputs["bool_masked_pos"]
    pixels = inputs["pixel_values"]
    changed = pixels.clone()
    other = mask.repeat_interleave(32, 0).repeat_interleave(32, 1)[: config.image_size[0], : config.image_size[1]]
    changed[..., other] = torch.randn_like(changed[..., other])
    with torch.no_grad():
        before = model(pixels, bool_masked_pos=mask).feature_maps
        after = model(changed, bool_masked_pos=mask).feature_maps
    for features_a, features_b, stride in zip(before, after, (16, 32)):
        own = model.encoder.token_groups(mask.long(), stride)[: features_a.shape[-2], : features_a.shape[-1]] == 0
        torch.testing.assert_close(features_a[..., own], features_b[..., own])
        assert not torch.allclose(features_a[..., ~own], features_b[..., ~own])


def test_permuting_views_permutes_the_decoded_depth():
    torch.manual_seed(0)
    config = _config(encoder_cross_view_stages=(2,))
    model = GeoMIMForMaskedBEVModeling(config).eval()
    for name, parameter in model.named_parameters():
        if "cross_view" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    inputs = _inputs(config, batch=1)
    order = torch.tensor([3, 0, 5, 1, 4, 2])
    permuted = {k: (v[:, order] if k in ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original",
                                         "depth_labels")
                    else v) for k, v in inputs.items()}
    with torch.no_grad():
        a, b = model(**inputs), model(**permuted)
    torch.testing.assert_close(b.depth, a.depth[:, :, order], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(b.reconstruction, a.reconstruction, atol=1e-4, rtol=1e-4)


def test_patch_normalisation_matches_a_loop():
    features = torch.randn(2, 3, 8, 12) * 5 + 2
    normalised = patch_normalize(features, 4, 1e-6)
    for b in range(2):
        for y in range(0, 8, 4):
            for x in range(0, 12, 4):
                block = features[b, :, y:y + 4, x:x + 4]
                expected = (block - block.mean()) / torch.sqrt(block.var(unbiased=False) + 1e-6)
                torch.testing.assert_close(normalised[b, :, y:y + 4, x:x + 4], expected)


def test_depth_loss_matches_a_hand_computation():
    config = _config()
    model = GeoMIMForMaskedBEVModeling(config)
    logits = torch.randn(1, 2, VIEWS, config.pretraining_depth_bins.count, 4, 11)
    labels = torch.zeros(1, VIEWS, 4, 11)
    labels[0, 0, 1, 2] = 10.0  # bin floor((10 - 1) / 2) = 4
    labels[0, 3, 0, 0] = 59.0  # bin 29, the last
    labels[0, 4, 2, 2] = 75.0  # beyond the bins: ignored
    assert config.pretraining_depth_bins.index_of(labels)[0, 0, 1, 2] == 4
    expected = []
    for group in range(2):
        total = 0.0
        for view, row, column, index in ((0, 1, 2, 4), (3, 0, 0, 29)):
            p = logits[0, group, view, :, row, column].softmax(0)
            target = torch.zeros(config.pretraining_depth_bins.count)
            target[index] = 1
            total += -(target * torch.log(p) + (1 - target) * torch.log(1 - p)).sum()
        expected.append(total / 2)
    torch.testing.assert_close(model.depth_loss(logits, labels), torch.stack(expected).mean(), rtol=1e-4, atol=1e-4)


def test_labels_is_a_deprecated_name_for_depth_labels():
    config = _config()
    model = GeoMIMForMaskedBEVModeling(config).eval()
    inputs = _inputs(config, batch=1)
    with torch.no_grad():
        expected = model(**inputs).depth_loss
        depth = inputs.pop("depth_labels")
        with pytest.warns(FutureWarning, match="depth_labels"):
            old = model(**inputs, labels=depth).depth_loss
    assert expected is not None and torch.equal(old, expected)


def test_cross_view_attention_starts_as_identity_and_checkpointing_keeps_gradients():
    config = _config()
    model = GeoMIMForMaskedBEVModeling(config).train()
    block = model.decoder.cross_view["1"].block
    assert block.attn.proj.weight.abs().sum() == 0 and block.mlp.fc2.weight.abs().sum() == 0
    inputs = _inputs(config, batch=1)
    torch.manual_seed(0)
    expected = torch.autograd.grad(model(**inputs).loss, list(model.geomim.parameters()), allow_unused=True)
    model.activation_checkpointing_enable()
    actual = torch.autograd.grad(model(**inputs).loss, list(model.geomim.parameters()), allow_unused=True)
    for a, b in zip(actual, expected):
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bad_inputs_are_named():
    config = _config()
    model = GeoMIMForMaskedBEVModeling(config).eval()
    inputs = _inputs(config, batch=1)
    with pytest.raises(ValueError, match="bool_masked_pos is required"):
        model(**{**inputs, "bool_masked_pos": None})
    with pytest.raises(ValueError, match=r"teacher_features has shape \(1, 64, 16, 16\), expected \(1, 64, 32, 32\)"):
        model(**{**inputs, "teacher_features": torch.zeros(1, 64, 16, 16)})
    with pytest.raises(ValueError, match="out_indices must be"):
        GeoMIMForMaskedBEVModeling(_config(out_indices=(1, 2)))


@pytest.mark.parametrize("device", devices())
def test_both_kernel_backends_give_the_same_model_output_and_gradients(device):
    """kernel_backend only changes which kernel pools; the model computes the same (Triton runs under
    TRITON_INTERPRET=1 on a CPU)."""
    skip_unless_kernel_runs("triton", device)
    torch.manual_seed(0)
    models = {backend: GeoMIMForMaskedBEVModeling(_config(kernel_backend=backend)).to(device).eval()
              for backend in ("torch", "triton")}
    models["triton"].load_state_dict(models["torch"].state_dict())
    inputs = {k: v.to(device) for k, v in _inputs(models["torch"].config, batch=1).items()}
    outputs, gradients = {}, {}
    for backend, model in models.items():
        with full_float32():  # the kernels sum in different orders; TF32 would amplify that
            outputs[backend] = model(**inputs)
            outputs[backend].loss.backward()
        gradients[backend] = model.geomim.encoder.patch_embed.weight.grad
    torch.testing.assert_close(outputs["triton"].reconstruction, outputs["torch"].reconstruction, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outputs["triton"].loss, outputs["torch"].loss, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gradients["triton"], gradients["torch"], atol=1e-6, rtol=1e-4)


def test_pixel_targets_match_a_loop():
    """MAE's normalised pixels, by hand: the 16 x 16 x 3 values of each token of the zero-padded image."""
    pixel_values = torch.randn(1, 2, 3, 40, 50)
    targets = pixel_targets(pixel_values, (3, 4), 16)
    padded = torch.zeros(1, 2, 3, 48, 64)
    padded[..., :40, :50] = pixel_values
    for view, row, column in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        patch = padded[0, view, :, row * 16:(row + 1) * 16, column * 16:(column + 1) * 16].permute(1, 2, 0).reshape(-1)
        expected = (patch - patch.mean()) / torch.sqrt(patch.var(unbiased=False) + 1e-6)
        torch.testing.assert_close(targets[0, view, row, column], expected)


def test_pixel_objective_reconstructs_the_masked_pixels_only():
    config = _config(pretrain_objective="pixel")
    model = GeoMIMForMaskedBEVModeling(config).eval()
    assert not hasattr(model, "lift_splat") and not model.decoder.depth_branch  # only what the objective trains
    inputs = _inputs(config)
    with torch.no_grad():
        out = model(**inputs)
    assert out.depth_loss is None and out.depth is None
    grid = model.decoder_grid
    assert out.reconstruction.shape == (2, 2, VIEWS, *grid, 16 * 16 * 3)
    # By hand: group g's loss covers the tokens of the other group (not the padding), then the mean.
    token_groups = model.geomim.encoder.token_groups(inputs["bool_masked_pos"].long(), 16)
    target = pixel_targets(inputs["pixel_values"], grid, 16)
    expected = torch.stack([((out.reconstruction[:, g] - target) ** 2)[:, :, token_groups == 1 - g].mean()
                            for g in (0, 1)]).mean()
    torch.testing.assert_close(out.loss, expected)
    # The pixels under group g's visible cells do not change group g's prediction of its masked cells.
    changed = dict(inputs, pixel_values=inputs["pixel_values"].clone())
    cells = inputs["bool_masked_pos"].repeat_interleave(32, 0).repeat_interleave(32, 1)[:64, :176]
    changed["pixel_values"][..., cells] += 1.0  # group-1 cells: masked for group 0
    with torch.no_grad():
        other = model(**changed)
    masked_for_0 = token_groups == 1
    torch.testing.assert_close(other.reconstruction[:, 0][:, :, masked_for_0], out.reconstruction[:, 0][:, :, masked_for_0])


def test_depth_objective_is_the_depth_loss_alone():
    config = _config(pretrain_objective="depth")
    model = GeoMIMForMaskedBEVModeling(config).eval()
    assert not hasattr(model, "lift_splat") and not hasattr(model, "bev_head")
    inputs = _inputs(config)
    with torch.no_grad():
        out = model(**inputs)
    assert out.reconstruction is None and out.reconstruction_loss is None
    torch.testing.assert_close(out.loss, out.depth_loss)
    torch.testing.assert_close(out.depth_loss, model.depth_loss(out.depth, inputs["depth_labels"]))


def test_ablations_remove_what_they_name():
    no_cross_view = GeoMIMForMaskedBEVModeling(_config(decoder_cross_view_layers=(), depth_branch_cross_view_layers=()))
    assert not any(isinstance(m, CrossViewAttention) for m in no_cross_view.modules())
    no_branch = GeoMIMForMaskedBEVModeling(_config(decoder_depth_branch=False))
    assert not hasattr(no_branch.decoder, "camera_gate") and not hasattr(no_branch.decoder, "depth_blocks")
    inputs = _inputs(no_branch.config)
    for model in (no_cross_view, no_branch):
        out = model(**inputs)
        out.loss.backward()
        assert all(p.grad is not None for p in model.parameters())  # no dead weights (DDP needs none)
    assert out.depth.shape == (2, 2, VIEWS, no_branch.config.pretraining_depth_bins.count, 4, 11)


def test_masked_region_loss_covers_the_cells_the_masked_image_cells_lift_into():
    """The region by brute force: every frustum point of a masked feature cell marks its target cell."""
    config = _config(reconstruction_region="masked")
    model = GeoMIMForMaskedBEVModeling(config).eval()
    inputs = _inputs(config)
    token_groups = model.geomim.encoder.token_groups(inputs["bool_masked_pos"].long(), 16)
    augmented_ego_from_ego = torch.eye(4).expand(2, 4, 4)
    with torch.no_grad():
        region = model.masked_bev_region(token_groups != 0, inputs["intrinsics"], inputs["ego_from_camera"],
                                         inputs["processed_from_original"], augmented_ego_from_ego)
        points = model.lift_splat.points_ego(inputs["intrinsics"], inputs["ego_from_camera"],
                                             inputs["processed_from_original"])
    cells = config.pretraining_grid.cell_of(points)  # (B, N, D, h, w) on the pooling grid
    expected = torch.zeros(2, *config.target_grid.size)
    width = config.pretraining_grid.size[1]
    for b, n, d, v, u in zip(*torch.nonzero(cells >= 0, as_tuple=True)):
        if token_groups[v, u] != 0:
            cell = int(cells[b, n, d, v, u])
            expected[b, cell // width // 2, cell % width // 2] = 1
    assert 0 < expected.mean() < 1
    torch.testing.assert_close(region[:, 0], expected)
    with torch.no_grad():
        out = model(**inputs, augmented_ego_from_ego=augmented_ego_from_ego)
        regions = torch.stack([model.masked_bev_region(token_groups != g, inputs["intrinsics"],
                                                       inputs["ego_from_camera"], inputs["processed_from_original"],
                                                       augmented_ego_from_ego) for g in (0, 1)], 1)
    squared = (out.reconstruction - out.target[:, None]) ** 2
    torch.testing.assert_close(out.reconstruction_loss, (squared * regions).sum() / (regions.sum() * squared.shape[2]))


def test_encoder_maps_cover_the_image_not_the_padding():
    """At 64 x 176 the encoder runs on 64 x 192 (whole 32-pixel masking cells); its maps are cropped to
    the tokens holding image pixels: ceil(176 / 16) = 11 and ceil(176 / 32) = 6 columns, the rows whole.
    Cropping commutes with the per-token norm, so the maps equal the padded stages' columns."""
    config = _config(out_indices=(1, 2, 3))
    model = GeoMIMModel(config).eval()
    pixel_values = _inputs(config, batch=1)["pixel_values"]
    with torch.no_grad():
        out = model(pixel_values, output_hidden_states=True)
        padded = model.encoder(pixel_values.flatten(0, 1))  # (B*N, h_pad, w_pad, C) per stage
    assert [tuple(f.shape[-2:]) for f in out.feature_maps] == [(8, 22), (4, 11), (2, 6)]
    assert [tuple(s.shape[1:3]) for s in padded[1:]] == [(8, 24), (4, 12), (2, 6)]
    for index, feature in zip(config.out_indices, out.feature_maps):
        height, width = feature.shape[-2:]
        expected = model.out_norms[str(index)](padded[index][:, :height, :width]).permute(0, 3, 1, 2)
        torch.testing.assert_close(feature.flatten(0, 1), expected)
    assert out.hidden_states[0].shape[-2:] == (16, 44)
