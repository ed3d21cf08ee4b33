"""The shared latent toolkit and likelihood heads against ground truth."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Normal
from torch.distributions import kl_divergence as torch_kl

from hvbench.latents import DiagonalGaussian, kl_divergence, merge_precision_weighted, per_unit
from hvbench.likelihoods import get_likelihood


def random_gaussian(shape: tuple[int, ...], seed: int) -> DiagonalGaussian:
    g = torch.Generator().manual_seed(seed)
    return DiagonalGaussian(torch.randn(shape, generator=g), 0.5 * torch.randn(shape, generator=g))


def test_analytic_kl_matches_monte_carlo() -> None:
    q, p = random_gaussian((3, 4), 0), random_gaussian((3, 4), 1)
    analytic = kl_divergence(q, p)
    torch.manual_seed(0)
    z = q.mu + torch.exp(q.log_sigma) * torch.randn(200_000, 3, 4)
    monte_carlo = (q.log_prob(z) - p.log_prob(z)).mean(0)
    assert torch.allclose(analytic, monte_carlo, atol=0.03, rtol=0.02)
    reference = torch_kl(Normal(q.mu, q.log_sigma.exp()), Normal(p.mu, p.log_sigma.exp()))
    assert torch.allclose(analytic, reference, atol=1e-5)


def test_kl_to_itself_is_zero_and_positive_otherwise() -> None:
    q, p = random_gaussian((50,), 2), random_gaussian((50,), 3)
    assert torch.allclose(kl_divergence(q, q), torch.zeros(50), atol=1e-6)
    assert (kl_divergence(q, p) > 0).all()


def test_precision_weighted_merge_is_the_normalised_product() -> None:
    a, b = random_gaussian((1000,), 4), random_gaussian((1000,), 5)
    merged = merge_precision_weighted(a, b)
    z = torch.linspace(-6, 6, 20001).unsqueeze(1)
    log_product = a.log_prob(z) + b.log_prob(z)
    weights = torch.softmax(log_product, dim=0)
    mean = (weights * z).sum(0)
    var = (weights * (z - mean).square()).sum(0)
    ok = merged.log_sigma.exp() * 6 < 6 - merged.mu.abs()  # grid covers the mass
    assert torch.allclose(mean[ok], merged.mu[ok], atol=1e-3)
    assert torch.allclose(var[ok], torch.exp(2 * merged.log_sigma[ok]), rtol=1e-2)


def test_spatial_units_are_channels() -> None:
    assert per_unit(torch.ones(2, 3, 4, 5)).tolist() == [[20.0] * 3] * 2
    assert per_unit(torch.ones(2, 7)).shape == (2, 7)


def test_bernoulli_and_gaussian_heads_match_torch() -> None:
    logits, x = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 1, 4, 4)).to(torch.uint8)
    expected = TorchBernoulli(logits=logits).log_prob(x.float()).flatten(1).sum(1)
    assert torch.allclose(get_likelihood("bernoulli", 1).log_prob(logits, x), expected, atol=1e-5)
    params, y = torch.randn(2, 2, 4, 4), torch.rand(2, 1, 4, 4)
    mu, log_scale = params.chunk(2, dim=1)
    expected = Normal(mu, (7 * torch.tanh(log_scale / 7)).exp()).log_prob(y).flatten(1).sum(1)
    assert torch.allclose(get_likelihood("gaussian", 1).log_prob(params, y), expected, atol=1e-4)


@pytest.mark.parametrize("channels", [1, 2])
def test_discretised_logistic_mixture_is_a_distribution_over_pixel_values(channels: int) -> None:
    """Probabilities of all 256^C values of one pixel sum to 1 (channels coupled by the coefficients)."""
    head = get_likelihood("dlogistic", channels, mixtures=3)
    torch.manual_seed(0)
    params = torch.randn(1, head.out_channels, 1, 1) * 2
    values = torch.tensor(list(itertools.product(range(256), repeat=channels)), dtype=torch.uint8)
    x = values.view(-1, channels, 1, 1)
    log_p = head.log_prob(params.expand(len(x), -1, -1, -1), head.prepare(x))
    assert math.isclose(float(torch.logsumexp(log_p.double(), 0).exp()), 1.0, abs_tol=2e-3)


def test_discretised_logistic_mean_is_in_range() -> None:
    head = get_likelihood("dlogistic", 3, mixtures=5)
    mean = head.mean(torch.randn(2, head.out_channels, 4, 4))
    assert mean.shape == (2, 3, 4, 4) and mean.min() >= 0 and mean.max() <= 1
