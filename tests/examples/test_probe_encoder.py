"""examples/probe_encoder.py's probe, on cases with a known answer."""

import pytest
import torch

from tests.helpers import load_example


def test_ridge_probe_recovers_a_linear_depth_and_scores_noise_near_zero():
    script = load_example("probe_encoder")
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(4000, 16, generator=generator, dtype=torch.float64)
    weights = torch.randn(16, generator=generator, dtype=torch.float64)
    depth = features @ weights + 3.0
    fit, evaluation = (features[:3000], depth[:3000]), (features[3000:], depth[3000:])
    halves = (torch.arange(1500), torch.arange(1500, 3000))
    exact = script.probe(fit, evaluation, halves)
    assert exact["depth_r2"] > 0.999 and exact["penalty"] == min(script.PENALTIES)
    noise = torch.randn(4000, 16, generator=generator, dtype=torch.float64)  # holds nothing of the depth
    blind = script.probe((noise[:3000], depth[:3000]), (noise[3000:], depth[3000:]), halves)
    assert blind["depth_r2"] == pytest.approx(0.0, abs=0.02)


def test_effective_rank_counts_the_directions_used():
    script = load_example("probe_encoder")
    generator = torch.Generator().manual_seed(1)
    isotropic = torch.randn(20000, 5, generator=generator, dtype=torch.float64)
    embedded = isotropic @ torch.linalg.qr(torch.randn(32, 5, generator=generator, dtype=torch.float64))[0].T
    assert script.effective_rank(embedded) == pytest.approx(5.0, rel=0.01)  # 5 equal directions in 32 channels
    scaled = isotropic * torch.tensor([1.0, 1e-3, 1e-3, 1e-3, 1e-3], dtype=torch.float64)
    assert script.effective_rank(scaled) == pytest.approx(1.0, abs=0.01)  # one direction carries the variance


def test_varying_share_is_near_zero_for_an_image_blind_encoder_and_one_for_centred_features():
    script = load_example("probe_encoder")
    generator = torch.Generator().manual_seed(2)
    centred = torch.randn(20000, 8, generator=generator, dtype=torch.float64)
    assert script.varying_share(centred) == pytest.approx(1.0, abs=0.01)
    constant = torch.full((20000, 8), 3.0, dtype=torch.float64) + 1e-2 * centred  # the same vector for every token
    assert script.varying_share(constant) == pytest.approx(1e-4 / (9.0 + 1e-4), rel=0.05)
    half = torch.ones(20000, 8, dtype=torch.float64) + centred  # |mean|^2 = 8, variance 8: half varies
    assert script.varying_share(half) == pytest.approx(0.5, abs=0.01)
