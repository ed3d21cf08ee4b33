"""Collapse metrics against hand-built active and collapsed units, and the Monte Carlo
activity estimator against units whose true activity is known."""

from __future__ import annotations

import math

import pytest
import torch

from hvbench.config import EvalConfig
from hvbench.metrics import (
    Activity,
    active,
    exact_activity,
    group_collapse,
    nats_to_bits_per_dim,
    split_half_activity,
    two_pass_variance,
    uncertain,
)

DRAWS = EvalConfig().au_samples  # the default number of ancestral draws
NOISE = 1.5  # per-draw variance of E_q[z | x, pa] around E_q[z | x]: the "huge"


def test_hand_built_units() -> None:
    torch.manual_seed(0)
    n = 5000
    means = torch.stack(
        [
            torch.randn(n),  # active: variance 1
            torch.full((n,), 3.0),  # collapsed: constant posterior mean
            0.05 * torch.randn(n),  # collapsed: variance 0.0025 < 0.01
            0.2 * torch.randn(n),  # active: variance 0.04
        ],
        dim=1,
    )
    kl = torch.tensor([2.0, 0.0, 0.005, 0.3])
    activity = exact_activity(means)
    stats = group_collapse(activity, activity, kl, True, au_threshold=0.01, kl_threshold=0.01)
    assert stats == {
        "units": 4,
        "active_units": 2,
        "uncertain_units": 0,
        "collapse_rate": 0.5,
        "conditional_active_units": 2,
        "conditional_collapse_rate": 0.5,
        "kl_collapse_rate": 0.5,
        "kl_nats": stats["kl_nats"],
    }
    assert abs(stats["kl_nats"] - 2.305) < 1e-6


def test_a_rate_term_is_never_counted_as_kl_collapse() -> None:
    """A bottom-up group's single-sample term can be negative: it is reported as a rate, and its
    KL-collapse rate is undefined rather than 'every unit collapsed'."""
    activity = exact_activity(torch.randn(100, 2))
    stats = group_collapse(
        activity, activity, torch.tensor([-2.3, -0.1]), False, au_threshold=0.01, kl_threshold=0.01
    )
    assert "kl_nats" not in stats and stats["rate_nats"] == pytest.approx(-2.4)
    assert math.isnan(stats["kl_collapse_rate"])


def test_two_pass_variance_is_stable_far_from_zero() -> None:
    """A naive E[x²] − E[x]² in float32 loses a variance of 0.04 at an offset of 1e4."""
    torch.manual_seed(0)
    x = (1e4 + 0.2 * torch.randn(10_000, 1)).float()
    assert abs(float(two_pass_variance(x)) - 0.04) < 0.004


def test_spatial_groups_average_positions_per_channel() -> None:
    n = 1000
    means = torch.zeros(n, 2, 3, 3)
    means[:, 0, 1, 1] = torch.randn(n) * 3  # one position of channel 0 varies
    activity = exact_activity(means).value
    assert activity.shape == (2,)
    assert abs(float(activity[0]) - 9 / 9) < 0.15 and float(activity[1]) == 0.0


def test_bits_per_dim() -> None:
    assert abs(nats_to_bits_per_dim(3072 * 0.6931471805599453, 3072) - 1.0) < 1e-12


def _draws(signal: torch.Tensor, draws: int, noise: float, generator: torch.Generator):
    """(N, units) true E_q[z|x] → the two half-means of `draws` noisy Monte Carlo draws each."""
    samples = signal + math.sqrt(noise) * torch.randn(draws, *signal.shape, generator=generator)
    half = draws // 2
    return samples[:half].mean(0), samples[half:].mean(0), samples.mean(0)


def test_units_that_ignore_x_read_inactive_despite_monte_carlo_noise() -> None:
    """True activity 0 and per-draw noise 1.5: a plain mean of S draws reads Var ≈ 1.5/S (every
    unit 'active'); the split-half covariance reads 0 active in at least 19 of 20 seeds."""
    all_inactive, naive_active = 0, 0
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        a, b, mean = _draws(torch.zeros(1000, 9), DRAWS, NOISE, g)
        all_inactive += int(active(split_half_activity(a, b), 0.01).sum()) == 0
        naive_active += int(active(exact_activity(mean), 0.01).sum())
    assert all_inactive >= 19
    assert naive_active == 20 * 9  # the bias this estimator exists to remove


def test_a_unit_with_signal_variance_005_is_active_in_every_seed() -> None:
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        signal = math.sqrt(0.05) * torch.randn(1000, 1, generator=g)
        a, b, _ = _draws(signal, DRAWS, NOISE, g)
        activity = split_half_activity(a, b)
        assert bool(active(activity, 0.01)), float(activity.value)
        assert abs(float(activity.value) - 0.05) < 5 * float(activity.standard_error) + 0.01


@pytest.mark.parametrize("spatial", [False, True])
def test_standard_error_matches_the_spread_over_monte_carlo_repeats(spatial: bool) -> None:
    """Fixed data, fresh Monte Carlo noise 300 times: the reported standard error is the spread
    of the estimate (within 25%), for dense units and for channels with correlated positions."""
    g = torch.Generator().manual_seed(0)
    shape = (400, 1, 3, 3) if spatial else (400, 1)
    signal = 0.3 * torch.randn(*shape, generator=g)
    estimates, errors = [], []
    for _ in range(300):
        shared = torch.randn(DRAWS, 400, 1, 1, 1, generator=g) if spatial else 0.0
        own = torch.randn(DRAWS, *shape, generator=g)
        samples = signal + math.sqrt(NOISE) * (0.6 * shared + 0.8 * own if spatial else own)
        h = DRAWS // 2
        activity = split_half_activity(samples[:h].mean(0), samples[h:].mean(0))
        estimates.append(float(activity.value))
        errors.append(float(activity.standard_error))
    spread = torch.tensor(estimates).std()
    assert abs(float(torch.tensor(errors).mean() / spread) - 1) < 0.25
    truth = float(exact_activity(signal).value)
    assert abs(float(torch.tensor(estimates).mean()) - truth) < 4 * spread / math.sqrt(300)


def test_uncertain_units_are_within_two_standard_errors() -> None:
    activity = Activity(torch.tensor([0.011, 0.03, 0.0]), torch.tensor([0.002, 0.005, 0.004]))
    assert uncertain(activity, 0.01).tolist() == [True, False, False]
    assert active(activity, 0.01).tolist() == [True, True, False]
