"""The evaluator against a linear-Gaussian model, whose log-likelihood is known exactly."""

from __future__ import annotations

import math

import pytest
import torch
from accelerate import Accelerator
from torch import Tensor, nn
from torch.distributions import MultivariateNormal

from hvbench.config import EvalConfig
from hvbench.disentanglement import latent_units, mig, spearman_matrix
from hvbench.evaluate import evaluate_split, real_rows
from hvbench.latents import DiagonalGaussian, ModelOutput, kl_divergence
from hvbench.task import TaskData, TaskSpec

D, LATENT, SIGMA = 4, 2, 0.5


class LinearGaussian(nn.Module):
    """z ~ N(0, I), x = Wz + b + σε. q(z|x) is the exact posterior with its sd scaled by `inflate`."""

    posterior_mean_is_exact = True

    def __init__(self, inflate: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(D, LATENT, generator=g))
        self.b = nn.Parameter(torch.randn(D, generator=g))
        self.inflate = inflate

    def exact_log_px(self, x: Tensor) -> Tensor:
        cov = self.w @ self.w.T + SIGMA**2 * torch.eye(D)
        return MultivariateNormal(self.b, cov).log_prob(x.flatten(1))

    def posterior(self, x: Tensor) -> DiagonalGaussian:
        precision = torch.eye(LATENT) + self.w.T @ self.w / SIGMA**2
        cov = torch.linalg.inv(precision)
        mu = (x.flatten(1) - self.b) @ self.w @ cov.T / SIGMA**2
        # the exact posterior is correlated; keep its marginal sds (times `inflate`) as a diagonal q
        sd = cov.diagonal().sqrt() * self.inflate
        return DiagonalGaussian(mu, sd.log().expand_as(mu))

    def log_joint_minus_q(self, x: Tensor, z: Tensor, q: DiagonalGaussian) -> Tensor:
        mean = z @ self.w.T + self.b
        log_px = (
            DiagonalGaussian(mean, torch.full_like(mean, math.log(SIGMA)))
            .log_prob(x.flatten(1))
            .sum(-1)
        )
        return log_px + DiagonalGaussian.standard(tuple(z.shape)).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)

    def forward(self, x: Tensor) -> ModelOutput:
        q = self.posterior(x)
        z = q.rsample()
        mean = z @ self.w.T + self.b
        log_px = (
            DiagonalGaussian(mean, torch.full_like(mean, math.log(SIGMA)))
            .log_prob(x.flatten(1))
            .sum(-1)
        )
        prior = DiagonalGaussian.standard(tuple(q.mu.shape))
        return ModelOutput(
            log_px=log_px,
            kl_units={"z": kl_divergence(q, prior)},
            post_mean={"z": q.mu},
            prior_mean={"z": prior.mu},
            analytic={"z": True},
            px_params=mean,
        )

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        q = self.posterior(x)
        z = q.mu + q.log_sigma.exp() * torch.randn(k, *q.mu.shape)
        return self.log_joint_minus_q(x, z, q).T


def task_from(model: LinearGaussian, n: int) -> TaskData:
    """Data drawn from the model; its latent z is the task's ground-truth factors."""
    torch.manual_seed(1)
    z = torch.randn(n, LATENT)
    with torch.no_grad():
        x = z @ model.w.T + model.b + SIGMA * torch.randn(n, D)
    return TaskData(
        "linear-gaussian",
        TaskSpec((1, 2, 2), "gaussian"),
        {"test": x.view(n, 1, 2, 2)},
        "test",
        factor_names=("z0", "z1"),
        factors={"test": z},
    )


@pytest.fixture(scope="module")
def accelerator() -> Accelerator:
    return Accelerator(cpu=True)


def test_iwae_converges_to_the_exact_likelihood_and_bounds_it(accelerator: Accelerator) -> None:
    model = LinearGaussian(inflate=1.6)
    task = task_from(model, 400)
    with torch.no_grad():
        exact = float(model.exact_log_px(task.splits["test"]).mean())
    bounds = {}
    for k in (1, 10, 1000):
        torch.manual_seed(2)
        cfg = EvalConfig(batch_size=128, iwae_k=k, au_samples=2, throughput_warmup=0)
        bounds[k] = evaluate_split(model, task, "test", accelerator, cfg).metrics
    elbo = bounds[1]["test/elbo_nats"]
    assert abs(bounds[1]["test/iwae_nats"] - elbo) < 0.1  # IWAE-1 is the ELBO in expectation
    assert elbo < bounds[10]["test/iwae_nats"] < bounds[1000]["test/iwae_nats"] <= exact + 0.01
    assert exact - bounds[1000]["test/iwae_nats"] < 0.1 * (exact - elbo)


def test_exact_posterior_makes_every_bound_tight(accelerator: Accelerator) -> None:
    model = LinearGaussian(inflate=1.0)
    model.w.data[:, 1] = 0.0  # posterior factorises: the diagonal q is then exact
    task = task_from(model, 200)
    with torch.no_grad():
        exact = float(model.exact_log_px(task.splits["test"]).mean())
    metrics = evaluate_split(
        model, task, "test", accelerator, EvalConfig(iwae_k=7, throughput_warmup=0)
    ).metrics
    assert metrics["test/iwae_nats"] == pytest.approx(exact, abs=1e-4)
    assert metrics["test/elbo_nats"] == pytest.approx(
        exact, abs=0.15
    )  # single-sample ELBO: noisy, unbiased
    assert metrics["test/active_units/z"] == 1 and metrics["test/collapse_rate/z"] == 0.5


def test_nonfinite_examples_are_counted_not_dropped(accelerator: Accelerator) -> None:
    model = LinearGaussian(inflate=1.0)
    task = task_from(model, 50)
    task.splits["test"][3] = float("nan")
    metrics = evaluate_split(
        model, task, "test", accelerator, EvalConfig(iwae_k=0, throughput_warmup=0)
    ).metrics
    assert metrics["test/nonfinite_examples"] == 1
    assert math.isnan(metrics["test/elbo_nats"])
    assert math.isnan(metrics["test/mig"]) and math.isnan(metrics["test/dci_lasso_completeness"])


def test_disentanglement_of_the_first_max_examples(accelerator: Accelerator) -> None:
    model = LinearGaussian(inflate=1.0)
    task = task_from(model, 400)
    cfg = EvalConfig(max_examples=150, iwae_k=0, throughput_warmup=0)
    evaluation = evaluate_split(model, task, "test", accelerator, cfg)
    codes, factors = latent_units(evaluation.post_means), task.factors["test"][:150]
    assert len(codes) == 150
    assert evaluation.metrics["test/mig"] == mig(codes, factors, [False, False])
    # E[z | x] is linear in x and x is 4 noisy views of z: the lasso decodes z well
    assert evaluation.metrics["test/dci_lasso_informativeness"] > 0.7
    assert evaluation.factor_unit.shape == (2, 2)
    assert torch.equal(evaluation.factor_unit, spearman_matrix(codes, factors))


def test_iwae_and_its_elbo_come_from_the_same_examples(accelerator: Accelerator) -> None:
    """The first 50 examples are shifted far from the data: the IWAE subset's own ELBO shows it,
    the whole-split ELBO does not, and IWAE − ELBO on the subset stays a small positive gap."""
    model = LinearGaussian(inflate=1.6)
    task = task_from(model, 400)
    task.splits["test"][:50] += 3.0
    cfg = EvalConfig(iwae_k=200, iwae_examples=50, throughput_warmup=0)
    m = evaluate_split(model, task, "test", accelerator, cfg).metrics
    assert m["test/iwae_examples"] == 50 and m["test/examples"] == 400
    assert m["test/iwae_elbo_nats"] < m["test/elbo_nats"] - 10
    assert 0 < m["test/iwae_nats"] - m["test/iwae_elbo_nats"] < 2


def test_padding_rows_are_not_real_examples() -> None:
    """7 examples over 2 processes: shards of 4, the second padded by one repeated row."""

    class Process:
        num_processes = 2

        def __init__(self, index: int):
            self.process_index = index

    assert [real_rows(7, Process(0), 0, 4), real_rows(7, Process(1), 0, 4)] == [4, 3]
    assert real_rows(7, Process(1), 2, 2) == 1
