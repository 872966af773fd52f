import math

import pytest
import torch
from torch.optim.swa_utils import AveragedModel

from geomim_hf.training import cosine_lr_lambda, ema_multi_avg_fn


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
