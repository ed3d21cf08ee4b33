"""The model contract, checked for every registered model (a new model is tested the moment
it is registered): each is an `AncestralModel` built from its smoke config, whose KL terms,
importance weights, bf16 pass and gradients pass the shared checks of tests/model_checks.py."""

from __future__ import annotations

import pytest
import torch

from hvbench.config import build, read_yaml
from hvbench.latents import AncestralModel
from hvbench.registry import MODELS
from hvbench.task import TaskSpec
from tests.conftest import CONFIGS
from tests.model_checks import (
    binary_batch,
    check_bf16_matches_fp32,
    check_gradients_reach_every_group_and_parameter,
    check_iwae_brackets_elbo,
    check_kl_terms,
)

SPEC = TaskSpec((1, 12, 12), "bernoulli")  # smaller than the smoke task: the checks draw a lot


def smoke_model(name: str, seed: int = 0) -> AncestralModel:
    """`name` built from configs/smoke/toy-<name>.yaml: every model must ship one."""
    path = CONFIGS / "smoke" / f"toy-{name}.yaml"
    assert path.is_file(), f"model {name!r} has no smoke config {path}"
    section = {k: v for k, v in read_yaml(path)["model"].items() if k != "name"}
    entry = MODELS.get(name)
    torch.manual_seed(seed)
    return entry.build(build(entry.config, section, "model"), SPEC).eval()


@pytest.fixture(params=MODELS.names())
def model(request: pytest.FixtureRequest) -> AncestralModel:
    return smoke_model(request.param)


def test_every_model_is_an_ancestral_model_declaring_its_posterior_mean(
    model: AncestralModel,
) -> None:
    assert isinstance(model, AncestralModel)
    assert isinstance(model.posterior_mean_is_exact, bool)


@torch.no_grad()
def test_kl_terms_match_monte_carlo(model: AncestralModel) -> None:
    x = binary_batch(4, SPEC)
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    _, groups = model.hierarchy(x)
    assert set(out.prior_mean) == set(out.post_mean) == set(out.analytic) == set(groups)
    check_kl_terms(out, groups)


def test_iwae_brackets_the_elbo(model: AncestralModel) -> None:
    check_iwae_brackets_elbo(model, binary_batch(2, SPEC))


def test_bf16_matches_fp32(model: AncestralModel) -> None:
    check_bf16_matches_fp32(model, binary_batch(4, SPEC))


def test_gradients_reach_every_group_and_parameter(model: AncestralModel) -> None:
    """Checked after two optimiser steps: a model may start with a state or a last layer at
    zero by design (VDVAE's learned initial top-down state and zeroed prior output), leaving
    the layers behind them without gradient until the first steps move them."""
    x = binary_batch(4, SPEC)
    optimizer = torch.optim.Adam(model.train().parameters(), lr=1e-3)
    for _ in range(2):
        (-model(x).elbo.mean()).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    check_gradients_reach_every_group_and_parameter(model, x)
