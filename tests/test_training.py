import copy
import math

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from geomim_hf import GeoMIMConfig, GeoMIMForMaskedBEVModeling
from geomim_hf.modeling_geomim import GeoMIMForBEVDetection
from geomim_hf.training import compile_regions, cosine_lr_lambda, ema_multi_avg_fn

from .test_modeling_geomim import _inputs


def test_ema_follows_bevdets_ramp():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = AveragedModel(model, multi_avg_fn=ema_multi_avg_fn(0.9, ramp_steps=4.0), use_buffers=True)
    expected = model[0].weight.detach().clone()
    for update in range(1, 6):
        with torch.no_grad():
            model[0].weight.add_(1.0)
            model[1].num_batches_tracked += 1
        ema.update_parameters(model)
        if update == 1:
            expected = model[0].weight.detach().clone()  # the first update copies
        else:
            decay = 0.9 * (1 - math.exp(-(update - 1) / 4.0))
            expected = decay * expected + (1 - decay) * model[0].weight.detach()
        torch.testing.assert_close(ema.module[0].weight, expected)
    assert ema.module[1].num_batches_tracked == 5  # integer buffers follow the model
    with pytest.raises(ValueError, match="decay must be in"):
        ema_multi_avg_fn(1.5)


def test_cosine_schedule_endpoints():
    multiplier = cosine_lr_lambda(warmup_steps=10, total_steps=110)
    assert multiplier(0) == pytest.approx(1 / 3)
    assert multiplier(10) == pytest.approx(1.0)
    assert multiplier(60) == pytest.approx(1e-3 + (1 - 1e-3) * 0.5)
    assert multiplier(110) == pytest.approx(1e-3)


def test_compile_regions_gives_the_eager_loss_and_gradients_without_recompiling_for_a_new_rig():
    """--torch-compile: the fixed-shape regions compile in place (parameter names unchanged), the loss and
    gradients are the eager model's, and a batch with other camera geometry (other pooling indices) runs
    the compiled regions again without a recompile: lifting and pooling stay eager."""
    config = GeoMIMConfig.from_preset("geomim-tiny", kernel_backend="torch", det_temporal=False, drop_path_rate=0.0)
    torch.manual_seed(0)
    eager = GeoMIMForBEVDetection(config).train()
    compiled = copy.deepcopy(eager)
    assert compile_regions(compiled, backend="aot_eager") == ["geomim", "neck", "depth_net", "bev_encoder", "head"]
    assert list(compiled.state_dict()) == list(eager.state_dict())
    inputs = _inputs(config, batch=2)
    camera = {k: inputs[k] for k in ("pixel_values", "intrinsics", "ego_from_camera", "processed_from_original")}
    targets = dict(boxes=torch.tensor([[[10.0, 2.0, 0.8, 4.5, 1.9, 1.6, 0.3]]]).expand(2, -1, -1),
                   velocities=torch.zeros(2, 1, 2), labels=torch.tensor([[0]] * 2),
                   attributes=torch.tensor([[0]] * 2), depth_labels=inputs["depth_labels"])
    reference = copy.deepcopy(eager).double()  # the float64 gradients both are judged against
    losses = []
    for model in (eager, compiled, reference):
        cast = (lambda x: x.double() if x.is_floating_point() else x) if model is reference else (lambda x: x)
        out = model(**{k: cast(v) for k, v in camera.items()}, **{k: cast(v) for k, v in targets.items()})
        out.loss.backward()
        losses.append(out.loss.detach())
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for (name, exact), expected, actual in zip(reference.named_parameters(), eager.parameters(), compiled.parameters()):
        # Float32 gradients here are off the float64 ones by up to ~4e-3 of a tensor's largest (BatchNorm on small
        # batches), by the CPU's kernels: the compiled ones must be as accurate as the eager ones.
        scale = float(exact.grad.abs().max())
        eager_error = float((expected.grad.double() - exact.grad).abs().max())
        compiled_error = float((actual.grad.double() - exact.grad).abs().max())
        assert compiled_error <= 4 * eager_error + 1e-5 * scale, (name, compiled_error, eager_error, scale)

    camera["intrinsics"] = camera["intrinsics"] * torch.tensor([1.1, 1.1, 1.0])[:, None]  # longer focal length
    camera["ego_from_camera"] = camera["ego_from_camera"].clone()
    camera["ego_from_camera"][..., 2, 3] += 0.4  # mounted higher
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = compiled(**camera, **targets)
    torch.testing.assert_close(out.loss, eager(**camera, **targets).loss, rtol=1e-5, atol=1e-6)

    pixel = GeoMIMForMaskedBEVModeling(GeoMIMConfig.from_preset("geomim-tiny", pretrain_objective="pixel"))
    assert compile_regions(pixel, backend="eager") == ["geomim", "decoder", "pixel_head"]  # the modules it builds
    with pytest.raises(ValueError, match="backend 'no-such-backend'"):
        compile_regions(pixel, backend="no-such-backend")
    with pytest.raises(ValueError, match="Linear lists no _compile_regions"):
        compile_regions(torch.nn.Linear(2, 2))
