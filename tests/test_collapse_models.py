"""The activity estimator through the project's own evaluation, on models built to be collapsed.

Every model's inference is cut from the data (`features` of one fixed image for
any input), so no posterior depends on x and the true activity of every unit
is 0, while the Monte Carlo noise of ancestral draws stays: lower groups'
posterior means move with the sampled parents (made large on purpose below).
A plain mean of draws reads that noise as activity; the evaluator must not.
"""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator

from hvbench.config import EvalConfig, build, read_yaml
from hvbench.evaluate import evaluate_split
from hvbench.latents import GaussianParams
from hvbench.metrics import active, exact_activity
from hvbench.registry import MODELS
from hvbench.task import TaskData, TaskSpec
from tests.conftest import CONFIGS

SPEC = TaskSpec((1, 12, 12), "bernoulli")
SMALL = {"latents": [4, 3, 2], "filters": 8, "kernels": [3, 3, 3], "strides": [2, 1, 2]}
SECTIONS = {
    "lvae": SMALL,
    "biva": SMALL,
    "stacked-vae": SMALL,
    "dagvae": {
        k: v
        for k, v in read_yaml(CONFIGS / "smoke" / "toy-dagvae.yaml")["model"].items()
        if k != "name"
    },
}
EXAMPLES = 1000
SEEDS = 2


@torch.no_grad()
def ignoring_x(name: str, seed: int) -> torch.nn.Module:
    """A model whose posteriors ignore x, with large ancestral noise.

    lvae: the top posterior equals its N(0, I) prior and every lower bottom-up
    estimate has σ = e⁴, so each merged
    posterior is (almost) its conditional prior, whose mean follows the parents
    drawn above. The others get wider posteriors and steeper heads.
    """
    entry = MODELS.get(name)
    torch.manual_seed(seed)
    model = entry.build(build(entry.config, SECTIONS[name], "model"), SPEC).eval()
    fixed = torch.randint(0, 2, (1, *SPEC.shape), dtype=torch.uint8)
    features = model.features
    model.features = lambda x: features(fixed.expand(len(x), *SPEC.shape))
    heads = [m.proj for m in model.modules() if isinstance(m, GaussianParams)]
    for head in heads:
        head.weight.mul_(3.0)
        head.bias[len(head.bias) // 2 :] += 1.0  # log σ
    if name == "lvae":
        for i, estimate in enumerate(model.estimate):
            proj = estimate.params.proj
            proj.weight.zero_()
            proj.bias.zero_()
            if i + 1 < len(model.estimate):
                proj.bias[len(proj.bias) // 2 :] = 4.0
    return model


def task(seed: int) -> TaskData:
    g = torch.Generator().manual_seed(1000 + seed)
    images = torch.randint(0, 2, (EXAMPLES, *SPEC.shape), generator=g, dtype=torch.uint8)
    return TaskData("random", SPEC, {"test": images}, "test")


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


@pytest.mark.parametrize("name", ["lvae", "biva", "dagvae"])
def test_models_that_ignore_x_read_zero_active_units(name: str, accelerator: Accelerator) -> None:
    """0 active units in every one of SEEDS seeds at the default `eval.au_samples`, although a
    plain mean of draws calls units active (the bias being removed). (The
    20-seed count, 19 of 20 or better, is in the issue note: it takes minutes.)"""
    cfg = EvalConfig(batch_size=500, iwae_k=0, throughput_warmup=0)
    for seed in range(SEEDS):
        torch.manual_seed(seed)
        evaluation = evaluate_split(ignoring_x(name, seed), task(seed), "test", accelerator, cfg)
        assert evaluation.metrics["test/active_units"] == 0, seed
    # the noise is real: Var_x of a plain mean of two draws calls units active
    few = EvalConfig(batch_size=500, iwae_k=0, throughput_warmup=0, au_samples=2)
    evaluation = evaluate_split(ignoring_x(name, 0), task(0), "test", accelerator, few)
    naive = [int(active(exact_activity(m), cfg.au_threshold).sum()) for m in evaluation.post_means.values()]
    assert sum(naive) > 0


def test_a_flat_vae_that_ignores_x_is_exactly_inactive(accelerator: Accelerator) -> None:
    torch.manual_seed(0)
    entry = MODELS.get("vae")
    model = entry.build(build(entry.config, {"latent_dim": 3}, "model"), SPEC).eval()
    fixed = torch.zeros(1, *SPEC.shape, dtype=torch.uint8)
    features = model.features
    model.features = lambda x: features(fixed.expand(len(x), *SPEC.shape))
    cfg = EvalConfig(batch_size=500, iwae_k=0, throughput_warmup=0)
    evaluation = evaluate_split(model, task(0), "test", accelerator, cfg)
    assert evaluation.metrics["test/active_units"] == 0
    assert evaluation.units["z"]["activity_se"] == [0.0, 0.0, 0.0]  # one exact pass


@torch.no_grad()
def test_posteriors_equal_to_a_moving_conditional_prior_are_conditionally_inactive(
    accelerator: Accelerator,
) -> None:
    """Lower lvae groups whose estimate carries nothing (σ = e⁴): each posterior is its
    conditional prior, whose mean moves with x through the informative top layer. Burda's
    criterion calls them active; conditional activity says they add nothing."""
    torch.manual_seed(0)
    entry = MODELS.get("lvae")
    model = entry.build(build(entry.config, SMALL, "model"), SPEC).eval()
    for head in (m.proj for m in model.modules() if isinstance(m, GaussianParams)):
        head.weight[: len(head.weight) // 2].mul_(30.0)  # means follow their inputs steeply
    for estimate in model.estimate[:-1]:
        proj = estimate.params.proj
        proj.weight.zero_()
        proj.bias.zero_()
        proj.bias[len(proj.bias) // 2 :] = 4.0
    g = torch.Generator().manual_seed(0)
    density = torch.rand(EXAMPLES, 1, 1, 1, generator=g)  # from nearly blank to nearly full
    images = (torch.rand(EXAMPLES, *SPEC.shape, generator=g) < density).to(torch.uint8)
    varied = TaskData("densities", SPEC, {"test": images}, "test")
    cfg = EvalConfig(batch_size=500, iwae_k=0, throughput_warmup=0)
    m = evaluate_split(model, varied, "test", accelerator, cfg).metrics
    assert m["test/conditional_active_units/z3"] == m["test/active_units/z3"] > 0  # N(0, I) prior
    assert m["test/active_units/z1"] + m["test/active_units/z2"] > 0
    assert m["test/conditional_active_units/z1"] == m["test/conditional_active_units/z2"] == 0


def test_rate_terms_are_not_kls(accelerator: Accelerator) -> None:
    """A stacked VAE's lower groups are inferred before their prior's parents: their terms are
    reported as rates, left out of KL collapse (n/a, with the reason) and of the KL shares."""
    torch.manual_seed(0)
    entry = MODELS.get("stacked-vae")
    model = entry.build(build(entry.config, SMALL, "model"), SPEC).eval()
    cfg = EvalConfig(batch_size=500, iwae_k=0, throughput_warmup=0, au_samples=2)
    evaluation = evaluate_split(model, task(0), "test", accelerator, cfg)
    m = evaluation.metrics
    for g in ("z1", "z2"):
        assert f"test/rate_nats/{g}" in m and f"test/kl_nats/{g}" not in m
        assert f"test/kl_share/{g}" not in m and math.isnan(m[f"test/kl_collapse_rate/{g}"])
        assert "rate term" in evaluation.notes[f"test/kl_collapse_rate/{g}"]
        assert "rate_nats" in evaluation.units[g] and "kl_nats" not in evaluation.units[g]
    assert m["test/kl_share/z3"] == 1.0
    assert m["test/kl_collapse_rate"] == m["test/kl_collapse_rate/z3"]  # analytic units only
