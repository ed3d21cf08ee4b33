"""The hierarchical baselines (`stacked-vae`, `lvae`, `biva`) against the maths they claim.

Tiny nets on 12×12 inputs so the file runs in seconds; every model is built
through the registry from a config section, exactly as a run builds it.
"""

from __future__ import annotations

import pytest
import torch

from hvbench.config import build, read_yaml
from hvbench.errors import UserError
from hvbench.latents import (
    GaussianParams,
    merge_precision_weighted,
)
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

SMALL = {"latents": [4, 3, 2], "filters": 8, "kernels": [3, 3, 3], "strides": [2, 1, 2]}
CASES = {
    "vae": ("vae", {}),  # the flat VAE
    "stacked-vae": ("stacked-vae", SMALL),
    "lvae": ("lvae", {**SMALL, "blocks": 2}),
    "lvae-spatial": ("lvae", {**SMALL, "spatial": [True, True, False]}),
    "biva": ("biva", {**SMALL, "blocks": 2}),
    "biva-spatial": ("biva", {**SMALL, "spatial": True}),
}
HIERARCHIES = [case for case in CASES if case != "vae"]
GROUPS = {
    "stacked-vae": ["z1", "z2", "z3"],
    "lvae": ["z1", "z2", "z3"],
    "biva": ["z1_bu", "z1_td", "z2_bu", "z2_td", "z3"],
}
SPEC = TaskSpec((1, 12, 12), "bernoulli")
# the official biva-pytorch 0.1.4 models at 1×28×28: their parameter counts, read from the
# official code (scripts/side_by_side.py times the same nets)
OFFICIAL_PARAMETERS = {"vae": 17_804_706, "lvae": 16_524_450, "biva": 31_550_946}


def make(case: str, spec: TaskSpec = SPEC, seed: int = 0) -> torch.nn.Module:
    name, overrides = CASES[case]
    entry = MODELS.get(name)
    torch.manual_seed(seed)
    return entry.build(build(entry.config, overrides, "model"), spec).eval()


def spread(model: torch.nn.Module) -> torch.nn.Module:
    """Push every posterior and prior away from the near-N(0, 1) of a fresh init, so KLs are
    nats, not hundredths, and the importance weights of q vary: the checks then have teeth."""
    heads = [m.proj for m in model.modules() if isinstance(m, GaussianParams)]
    with torch.no_grad():
        for head in heads or [model.encoder[-1]]:  # the flat VAE's last encoder layer
            head.weight.mul_(2.0)
            head.bias.normal_(0.0, 0.5)
    return model


def batch(n: int = 4, spec: TaskSpec = SPEC) -> torch.Tensor:
    return binary_batch(n, spec)


@pytest.mark.parametrize("case", HIERARCHIES)
@torch.no_grad()
def test_elbo_is_reconstruction_minus_kl_and_each_kl_matches_monte_carlo(case: str) -> None:
    model, x = spread(make(case)), batch()
    torch.manual_seed(1)
    out = model(x)
    torch.manual_seed(1)
    px_params, groups = model.hierarchy(x)  # the same draws, with each group's q and p
    assert list(out.kl_units) == GROUPS[CASES[case][0]]
    log_px = model.head.log_prob(px_params, model.head.prepare(x))
    assert torch.allclose(out.log_px, log_px)
    assert torch.allclose(out.elbo, log_px - sum(k.sum(1) for k in out.kl_units.values()))
    check_kl_terms(out, groups)


@pytest.mark.parametrize("case", HIERARCHIES)
def test_top_down_groups_are_analytic_and_bottom_up_ones_are_not(case: str) -> None:
    _, groups = make(case).hierarchy(batch())
    name = CASES[case][0]
    expected = {
        "stacked-vae": {"z1": False, "z2": False, "z3": True},  # q(z_i | z_{i-1}) is drawn before z_{i+1}
        "lvae": {"z1": True, "z2": True, "z3": True},
        "biva": {"z1_bu": False, "z1_td": True, "z2_bu": False, "z2_td": True, "z3": True},
    }[name]
    assert {g: s.analytic for g, s in groups.items()} == expected


def test_lvae_posterior_is_the_precision_weighted_merge_of_estimate_and_prior() -> None:
    model, x = make("lvae"), batch()
    features = model.features(x)
    _, groups = model.hierarchy(x)
    top = model.estimate[2](features[2])
    assert torch.allclose(groups["z3"].q.mu, top.mu) and groups["z3"].p.mu.abs().max() == 0
    for i, g in enumerate(["z1", "z2"]):
        merged = merge_precision_weighted(model.estimate[i](features[i]), groups[g].p)
        assert torch.allclose(groups[g].q.mu, merged.mu, atol=1e-5)
        assert torch.allclose(groups[g].q.log_sigma, merged.log_sigma, atol=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_gradients_reach_every_latent_group_and_every_block(case: str) -> None:
    check_gradients_reach_every_group_and_parameter(make(case), batch())


@pytest.mark.parametrize("case", list(CASES))
@torch.no_grad()
def test_iwae_is_above_the_elbo_and_iwae_1_is_the_elbo_in_expectation(case: str) -> None:
    check_iwae_brackets_elbo(spread(make(case)), batch())


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    "spec",
    [SPEC, TaskSpec((1, 16, 16), "gaussian"), TaskSpec((3, 10, 14), "dlogistic")],
    ids=["binary", "continuous", "rgb-odd"],
)
def test_prior_samples_are_task_shaped(case: str, spec: TaskSpec) -> None:
    model = make(case, spec)
    samples = model.sample(5)
    assert samples.shape == (5, *spec.shape) and torch.isfinite(samples).all()
    if spec.likelihood != "gaussian":
        assert samples.min() >= 0 and samples.max() <= 1
    out = model(batch(2, spec) if spec.likelihood != "gaussian" else torch.rand(2, *spec.shape))
    assert out.px_params.shape == (2, model.head.out_channels, *spec.shape[1:])


@pytest.mark.parametrize("case", HIERARCHIES)
def test_deterministic_under_a_seed(case: str) -> None:
    outputs = []
    for _ in range(2):
        model = make(case, seed=5)
        torch.manual_seed(6)
        outputs.append((model(batch()).elbo, model.sample(3), model.log_weights(batch(), 3)))
    for a, b in zip(*outputs, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("case", HIERARCHIES)
def test_bf16_autocast_runs_and_matches_fp32_loosely(case: str) -> None:
    check_bf16_matches_fp32(make(case), batch())


@pytest.mark.parametrize("name", ["vae", "lvae", "biva"])
def test_paper_configs_match_the_official_parameter_counts(name: str) -> None:
    """configs/paper/: the official BIVA code's binary-image net, built at 1×28×28."""
    section = read_yaml(CONFIGS / "paper" / f"{name}.yaml")["model"]
    model_name = section.pop("name")
    assert model_name == {"vae": "stacked-vae"}.get(name, name)  # the official `VAE` is a stack
    entry = MODELS.get(model_name)
    model = entry.build(build(entry.config, section, "model"), TaskSpec((1, 28, 28), "bernoulli"))
    count = sum(p.numel() for p in model.parameters())
    assert abs(count / OFFICIAL_PARAMETERS[name] - 1) < 0.10, count
    groups = model(batch(2, TaskSpec((1, 28, 28), "bernoulli"))).kl_units
    assert len(groups) == (11 if name == "biva" else 6)


def test_stage_lists_must_match_the_latents() -> None:
    entry = MODELS.get("lvae")
    with pytest.raises(UserError, match=r"model\.kernels has 2 entries"):
        build(entry.config, {"latents": [4, 3, 2], "kernels": [3, 3]}, "model")
    with pytest.raises(UserError, match=r"model\.strides must be 1 or 2"):
        build(entry.config, {"strides": [2, 3, 2]}, "model")
