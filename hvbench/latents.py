"""The latent toolkit every model shares: the latent contract, diagonal Gaussians and
their KLs, and the per-group output structure that metrics and the leaderboard read.

A latent group's posterior q and prior p may be any distribution with `rsample()`,
`log_prob(z)` and `mean` (`Latent`): the project's `DiagonalGaussian`, any
`torch.distributions` distribution, or a model's own (a flow, a mixture). A group's
term is its KL in closed form where one is known unit by unit (`closed_form_kl`),
otherwise the single-sample rate term log q(z) − log p(z) (`LatentSample`).

Every model returns a `ModelOutput` whose KL is split by latent *group* and,
inside a group, by *unit* (a dense unit, or a channel of a spatial group with
its KL summed over positions, as NVAE counts it; a group whose density does not
factor over its units has one term for the whole group). Metrics never
special-case a model because of this one structure.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import einops
import torch
from torch import Tensor, distributions, nn

from hvbench.likelihoods import LikelihoodHead, soft_clamp

LOG_2PI = math.log(2 * math.pi)
# NVAE clamps μ and log σ to [−5, 5] so a KL cannot blow up under mixed precision.
PARAM_BOUND = 5.0


class Latent(Protocol):
    """What a latent group's q or p must offer (torch.distributions' distributions do)."""

    def rsample(self) -> Tensor:
        """A reparameterised draw, shaped like the group's z."""
        ...

    def log_prob(self, z: Tensor) -> Tensor:
        """The log density at z: per element (shaped like z) when it factors over the
        group's elements, else per example with the group's dimensions summed."""
        ...

    @property
    def mean(self) -> Tensor:
        """E[z], shaped like z: what the activity metrics read."""
        ...


@dataclass
class DiagonalGaussian:
    """N(mu, diag(exp(log_sigma))²), parameters kept in fp32."""

    mu: Tensor
    log_sigma: Tensor

    @classmethod
    def from_params(cls, params: Tensor, dim: int = 1) -> DiagonalGaussian:
        """Split a tensor of 2·D features along `dim` into a soft-clamped (μ, log σ)."""
        mu, log_sigma = params.float().chunk(2, dim=dim)
        return cls(soft_clamp(mu, PARAM_BOUND), soft_clamp(log_sigma, PARAM_BOUND))

    @classmethod
    def standard(cls, shape: tuple[int, ...], device: torch.device | None = None) -> DiagonalGaussian:
        """N(0, I) of the given shape: a top layer's or a root's prior."""
        zeros = torch.zeros(shape, device=device)
        return cls(zeros, zeros)

    @property
    def mean(self) -> Tensor:
        return self.mu

    def rsample(self) -> Tensor:
        return self.mu + torch.exp(self.log_sigma) * torch.randn_like(self.mu)

    def log_prob(self, z: Tensor) -> Tensor:
        """Element-wise log density."""
        return (
            -0.5 * ((z - self.mu) * torch.exp(-self.log_sigma)).square()
            - self.log_sigma
            - 0.5 * LOG_2PI
        )


def kl_divergence(q: DiagonalGaussian, p: DiagonalGaussian) -> Tensor:
    """Element-wise analytic KL(q ‖ p) between diagonal Gaussians, in nats."""
    var_ratio = torch.exp(2 * (q.log_sigma - p.log_sigma))
    mean_term = ((q.mu - p.mu) * torch.exp(-p.log_sigma)).square()
    return 0.5 * (var_ratio + mean_term - 1.0) - (q.log_sigma - p.log_sigma)


def closed_form_kl(q: Latent, p: Latent) -> Tensor | None:
    """KL(q ‖ p) per element in closed form, or None where none is known element by element:
    the project's own Gaussian pair, else a pair `torch.distributions.kl_divergence` knows
    (its registry, which a model may extend with `register_kl`). A KL known only for the
    whole group (e.g. two full-covariance Gaussians) says nothing about the units, whose KL
    the collapse metrics count, so such a group carries the rate term instead."""
    if isinstance(q, DiagonalGaussian) and isinstance(p, DiagonalGaussian):
        return kl_divergence(q, p)
    if not (isinstance(q, distributions.Distribution) and isinstance(p, distributions.Distribution)):
        return None
    try:
        kl = distributions.kl_divergence(q, p)
    except NotImplementedError:
        return None
    return kl if kl.shape == q.mean.shape else None


def per_unit(elementwise: Tensor) -> Tensor:
    """(B, D) stays; (B, C, H, W) → (B, C) summed over positions (a channel is a unit)."""
    return elementwise.flatten(2).sum(-1) if elementwise.dim() > 2 else elementwise


def per_example(log_prob: Tensor, z: Tensor) -> Tensor:
    """(B,) a group's log density at z, from per-element or already per-example values."""
    return log_prob.reshape(len(z), -1).sum(1)


def rate_units(log_q: Tensor, log_p: Tensor, z: Tensor) -> Tensor:
    """log q(z) − log p(z) per unit, (B, units), where both densities are given per element;
    otherwise (B, 1): one term for a group whose q or p does not factor over its units."""
    if log_q.shape == z.shape and log_p.shape == z.shape:
        return per_unit(log_q - log_p)
    return (per_example(log_q, z) - per_example(log_p, z)).unsqueeze(1)


@dataclass
class ModelOutput:
    """What every model returns for a batch (docs/design.md §3.2).

    `kl_units[g]` is (B, units) in nats: the analytic KL where `analytic[g]`,
    otherwise the single-sample rate term log q − log p (see `LatentSample`).
    `post_mean[g]` is E_q[z_g | x, parents] for the sampled parents, (B, units)
    or (B, C, H, W), and `prior_mean[g]` E_p[z_g | parents] for the same
    parents (zeros for a top layer or root). `px_params` are the decoder's
    likelihood parameters (for reconstructions).
    """

    log_px: Tensor
    kl_units: dict[str, Tensor]
    post_mean: dict[str, Tensor]
    prior_mean: dict[str, Tensor]
    analytic: dict[str, bool]
    px_params: Tensor

    @property
    def kl(self) -> dict[str, Tensor]:
        """KL per group, (B,) each."""
        return {g: k.sum(-1) for g, k in self.kl_units.items()}

    @property
    def kl_total(self) -> Tensor:
        return torch.stack(list(self.kl.values()), dim=0).sum(0)

    @property
    def elbo(self) -> Tensor:
        """The true per-example bound: no weights, schedules or free bits."""
        return self.log_px - self.kl_total


class GaussianParams(nn.Module):
    """A linear (dense) or 1×1-conv (spatial) map from features to (μ, log σ)."""

    def __init__(self, in_features: int, units: int, spatial: bool = False):
        super().__init__()
        self.proj = (nn.Conv2d if spatial else nn.Linear)(
            in_features, 2 * units, **({"kernel_size": 1} if spatial else {})
        )

    def forward(self, h: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.from_params(self.proj(h), dim=1)


def merge_precision_weighted(a: DiagonalGaussian, b: DiagonalGaussian) -> DiagonalGaussian:
    """Product of two Gaussians, renormalised (the Ladder VAE posterior, Sønderby 2016)."""
    prec_a, prec_b = torch.exp(-2 * a.log_sigma), torch.exp(-2 * b.log_sigma)
    var = 1.0 / (prec_a + prec_b)
    mu = (a.mu * prec_a + b.mu * prec_b) * var
    return DiagonalGaussian(mu, 0.5 * torch.log(var))


@dataclass
class LatentSample:
    """One latent group's draw z ~ q, with the q and p it was drawn against.

    `analytic` says whether the group's KL term may be taken in closed form,
    E_q[log q(z) − log p(z)] = KL(q ‖ p). That holds only when everything p is
    conditioned on was drawn *before* z in the inference order (a top-down
    posterior: Ladder VAE, BIVA's top-down path). Bottom-up inference (a VAE
    stack, BIVA's bottom-up path) draws z_i before the z_{i+1} its prior reads,
    so there the term is the single-sample estimate log q(z) − log p(z):
    unbiased, but it can be negative for one example. A pair (q, p) with no
    closed-form KL unit by unit (`closed_form_kl`) has the same rate term.
    """

    z: Tensor
    q: Latent
    p: Latent
    analytic: bool = True

    def term(self) -> tuple[Tensor, bool]:
        """(B, units) KL term in nats (a spatial group's unit is a channel; (B, 1) for a group
        whose density does not factor over units) and whether it is the closed-form KL."""
        kl = closed_form_kl(self.q, self.p) if self.analytic else None
        if kl is not None:
            return per_unit(kl), True
        return rate_units(self.q.log_prob(self.z), self.p.log_prob(self.z), self.z), False

    def log_ratio(self) -> Tensor:
        """(B,) log p(z) − log q(z): this group's factor of an importance weight (differences
        taken element by element where both densities are, as sums of them lose digits)."""
        log_p, log_q = self.p.log_prob(self.z), self.q.log_prob(self.z)
        if log_p.shape == log_q.shape:
            return per_example(log_p - log_q, self.z)
        return per_example(log_p, self.z) - per_example(log_q, self.z)


def draw(q: Latent, p: Latent, analytic: bool = True) -> LatentSample:
    """Sample z ~ q (reparameterised) and keep q and p for the group's KL."""
    return LatentSample(q.rsample(), q, p, analytic)


def hierarchy_output(
    head: LikelihoodHead, x: Tensor, px_params: Tensor, groups: dict[str, LatentSample]
) -> ModelOutput:
    """The `ModelOutput` of one ancestral pass through a hierarchy of latent groups."""
    terms = {g: s.term() for g, s in groups.items()}
    return ModelOutput(
        log_px=head.log_prob(px_params, head.prepare(x)),
        kl_units={g: term for g, (term, _) in terms.items()},
        post_mean={g: s.q.mean for g, s in groups.items()},
        prior_mean={g: s.p.mean for g, s in groups.items()},
        analytic={g: analytic for g, (_, analytic) in terms.items()},
        px_params=px_params,
    )


def log_weight(log_px: Tensor, groups: dict[str, LatentSample]) -> Tensor:
    """(B,) log p(x, z) − log q(z | x) for one ancestral draw of every group."""
    return log_px + torch.stack([s.log_ratio() for s in groups.values()]).sum(0)


def importance_log_weights(
    head: LikelihoodHead,
    x: Tensor,
    features: list[Tensor],
    draw_hierarchy: Callable[[list[Tensor], int], tuple[Tensor, dict[str, LatentSample]]],
    k: int,
    max_rows: int = 512,
) -> Tensor:
    """(B, k) log p(x, z) − log q(z | x) for k ancestral draws of every latent group.

    `features` are what inference computes from x before anything is sampled:
    they are computed once and repeated, and `draw_hierarchy(repeated, j·B)`
    draws the rest (returning decoder parameters and groups). At most
    `max_rows` images are decoded at a time, so memory stays flat whatever k
    and B the evaluator asks for (its chunks suit a flat VAE's tiny activations).
    """
    target, batch = head.prepare(x), len(x)

    def draws(j: int) -> Tensor:
        repeated = [einops.repeat(f, "b ... -> (j b) ...", j=j) for f in features]
        px_params, groups = draw_hierarchy(repeated, j * batch)
        log_px = head.log_prob(px_params, einops.repeat(target, "b ... -> (j b) ...", j=j))
        return einops.rearrange(log_weight(log_px, groups), "(j b) -> b j", j=j)

    per_call = max(1, max_rows // batch)
    return torch.cat([draws(min(per_call, k - done)) for done in range(0, k, per_call)], dim=1)


class AncestralModel(nn.Module):
    """The model contract (docs/design.md §3.2) for a hierarchy drawn in one ancestral pass.

    A subclass gives two methods and gets `forward`, `sample` and `log_weights`:
    `features(x)`, what inference computes from x before anything is sampled
    (computed once and shared by all k importance draws), and
    `ancestral_pass(features, n)`, the rest of one pass: posterior draws given
    features, prior draws given None, returning the decoder's parameters and
    every group's (z, q, p). One pass serves all three, so the ELBO, the samples
    and the importance weights can never disagree on the model.
    """

    head: LikelihoodHead
    # True when one pass gives E_q[z | x] exactly (no latent group is drawn from
    # another): the evaluator then needs no Monte Carlo for the activity metrics
    posterior_mean_is_exact: bool = False

    def features(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def ancestral_pass(
        self, features: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        raise NotImplementedError

    def standard_prior(self, n: int, shape: tuple[int, ...]) -> DiagonalGaussian:
        """N(0, I) for n draws of a group shaped `shape` (a top layer, a root), on the model's
        device."""
        return DiagonalGaussian.standard((n, *shape), next(self.parameters()).device)

    def hierarchy(self, x: Tensor) -> tuple[Tensor, dict[str, LatentSample]]:
        """One posterior draw of every group: decoder parameters and each group's (z, q, p)."""
        return self.ancestral_pass(self.features(x), len(x))

    def forward(self, x: Tensor) -> ModelOutput:
        return hierarchy_output(self.head, x, *self.hierarchy(x))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.head.mean(self.ancestral_pass(None, n)[0])

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """(B, k) log p(x, z) − log q(z | x) for k ancestral draws; `features` run once."""
        return importance_log_weights(self.head, x, self.features(x), self.ancestral_pass, k)
