"""Checks every latent-variable model must pass, shared by the model test files.

Each takes a built model and a batch and asserts the maths of docs/design.md §3.2 and §6:
KL terms against Monte Carlo, the IWAE bound against the ELBO, bf16 against
fp32. A new model's tests call them instead of restating them.
"""

from __future__ import annotations

import math

import torch

from hvbench.latents import LatentSample, ModelOutput, hierarchy_output, rate_units
from hvbench.task import TaskSpec


def binary_batch(n: int, spec: TaskSpec) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.randint(0, 2, (n, *spec.shape), generator=g, dtype=torch.uint8)


def check_kl_terms(out: ModelOutput, groups: dict[str, LatentSample], draws: int = 4000) -> None:
    """Each group's term, whatever its q and p: the posterior mean is q's `mean`; a closed-form
    KL lies within 5 standard errors of its Monte-Carlo estimate from `draws` fresh draws of
    the same q; a rate term is exactly log q(z) − log p(z) at the group's own draw."""
    for g, s in groups.items():
        assert torch.allclose(out.post_mean[g], s.q.mean)
        assert torch.allclose(out.prior_mean[g], s.p.mean)
        if not out.analytic[g]:
            assert torch.allclose(out.kl_units[g], rate_units(s.q.log_prob(s.z), s.p.log_prob(s.z), s.z))
            continue
        z = torch.stack([s.q.rsample() for _ in range(draws)])  # (draws, *z.shape)
        log_q, log_p = s.q.log_prob(z).flatten(0, 1), s.p.log_prob(z).flatten(0, 1)
        terms = rate_units(log_q, log_p, z.flatten(0, 1)).unflatten(0, (draws, len(s.z)))
        error = 5 * terms.std(0) / math.sqrt(draws) + 1e-3
        assert ((terms.mean(0) - out.kl_units[g]).abs() <= error).all(), g


@torch.no_grad()
def check_iwae_brackets_elbo(model: torch.nn.Module, x: torch.Tensor) -> None:
    """Mean log-weight = ELBO in expectation (IWAE-1), and IWAE-64 above the ELBO."""
    torch.manual_seed(2)
    elbos = torch.stack([model(x).elbo for _ in range(64)]).double()  # (64, B)
    log_w = model.log_weights(x, 256).double()  # (B, 256)
    assert log_w.shape == (len(x), 256)
    error = 4 * (log_w.std(1) / 16 + elbos.std(0) / 8)  # four standard errors per example
    assert ((log_w.mean(1) - elbos.mean(0)).abs() <= error).all()
    iwae_64 = torch.logsumexp(log_w.view(len(x), 4, 64), dim=2) - math.log(64)
    assert iwae_64.mean() > elbos.mean()


def check_bf16_matches_fp32(model: torch.nn.Module, x: torch.Tensor) -> None:
    """bf16 autocast runs, keeps KLs in fp32 and stays near the fp32 ELBO."""
    torch.manual_seed(3)
    fp32 = model(x)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = model(x)
        log_w = model.log_weights(x, 4)
    assert all(k.dtype == torch.float32 for k in bf16.kl_units.values())
    assert torch.isfinite(bf16.elbo).all() and torch.isfinite(log_w).all()
    assert torch.allclose(bf16.elbo, fp32.elbo, rtol=0.03, atol=1.0)


def check_gradients_reach_every_group_and_parameter(
    model: torch.nn.Module, x: torch.Tensor
) -> None:
    """−ELBO's gradient is finite and non-zero at every latent sample and every parameter:
    no group or block is left out of the graph."""
    if hasattr(model, "hierarchy"):
        px_params, groups = model.hierarchy(x)
        for s in groups.values():
            s.z.retain_grad()
        out = hierarchy_output(model.head, x, px_params, groups)
    else:  # the flat VAE: one pass, no per-group draws to inspect
        groups, out = {}, model(x)
    (-out.elbo.mean()).backward()
    for g, s in groups.items():
        assert s.z.grad is not None and s.z.grad.abs().sum() > 0, g
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
