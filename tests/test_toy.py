"""Toy tasks: deterministic, correlations exactly as the SCM says, independent when uncorrelated."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from hvbench.config import build
from hvbench.registry import TASKS
from hvbench.tasks.toy import DAG, FACTORS, score_covariance


def load(name: str, **options):
    entry = TASKS.get(name)
    return entry.build(build(entry.config, options, "task"), Path("/nonexistent"))


def test_shapes_splits_and_dag_are_exposed() -> None:
    task = load("toy-corr", n_train=100, n_val=10, n_test=20)
    assert {k: tuple(v.shape) for k, v in task.splits.items()} == {
        "train": (100, 1, 32, 32),
        "val": (10, 1, 32, 32),
        "test": (20, 1, 32, 32),
    }
    assert task.factor_names == FACTORS and task.spec.dag == DAG
    assert task.factors["test"].shape == (20, 5)
    assert task.spec.likelihood == "gaussian" and task.splits["train"].dtype == torch.float32


def test_generation_is_deterministic_and_splits_are_independent_of_sizes() -> None:
    a = load("toy-corr", n_train=50, n_val=5, n_test=30)
    b = load("toy-corr", n_train=80, n_val=5, n_test=30)
    assert torch.equal(a.splits["test"], b.splits["test"])
    assert torch.equal(a.factors["test"], b.factors["test"])
    assert not torch.equal(
        a.splits["train"][:50], load("toy-corr", n_train=50, seed=7).splits["train"]
    )


def expected_factor_correlation(correlation: float) -> torch.Tensor:
    """corr(Φ(s_a), Φ(s_b)) = (6/π)·arcsin(Σ_ab / 2) for standard bivariate normal scores."""
    return 6 / math.pi * torch.arcsin(score_covariance(correlation) / 2)


def test_correlated_factors_match_the_scm() -> None:
    task = load("toy-corr", n_train=40_000, n_val=1, n_test=1, correlation=0.8)
    sample = torch.corrcoef(task.factors["train"].double().T)
    expected = expected_factor_correlation(0.8)
    assert torch.allclose(sample, expected, atol=0.02), (sample - expected).abs().max()
    # the DAG is not vacuous: parents and children really are correlated
    assert sample[0, 1] > 0.6 and sample[3, 4] > 0.6


def test_uncorrelated_factors_are_independent_with_uniform_marginals() -> None:
    factors = load("toy-uncorr", n_train=40_000, n_val=1, n_test=1).factors["train"].double()
    off_diagonal = torch.corrcoef(factors.T) - torch.eye(5, dtype=torch.float64)
    assert off_diagonal.abs().max() < 0.02
    assert torch.allclose(factors.mean(0), torch.full((5,), 0.5, dtype=torch.float64), atol=0.01)
    assert torch.allclose(factors.var(0), torch.full((5,), 1 / 12, dtype=torch.float64), atol=0.005)


def test_images_follow_their_factors() -> None:
    """The blob's centre of mass moves with the x/y factors: images encode the factors."""
    task = load("toy-uncorr", n_train=2000, n_val=1, n_test=1, noise=0.0)
    images, factors = task.splits["train"][:, 0], task.factors["train"]
    grid = torch.arange(32, dtype=torch.float32) + 0.5
    mass = images.sum((1, 2))
    cx = (images.sum(1) * grid).sum(1) / mass
    cy = (images.sum(2) * grid).sum(1) / mass
    assert torch.corrcoef(torch.stack([cx, factors[:, 1]]))[0, 1] > 0.95
    assert torch.corrcoef(torch.stack([cy, factors[:, 2]]))[0, 1] > 0.95
