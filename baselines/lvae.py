"""`lvae`: the Ladder VAE (Sønderby et al. 2016).

A deterministic bottom-up pass computes, at every stage, a Gaussian estimate
q̂(z_i | x). The top-down pass then samples z_L, …, z_1 in generative order; the
posterior of layer i is the precision-weighted product of that estimate and the
top-down prior p(z_i | z_{>i}) (eq. 17–19 of the paper), and the top layer's is
the estimate itself. Because every prior's parents are drawn before the layer
they condition, each layer's KL is analytic.

Stages, skips and latent heads are the shared ones in `hvbench.blocks` (the
official BIVA code's layout), so `lvae`, `biva` and the staged `vae` compare
like for like. Unlike that code's `LvaeStage`, which merges the two paths with a
learned gated block, this is the paper's precision-weighted merge.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hvbench.blocks import (
    ConvStack,
    LatentParams,
    StagePlan,
    StagesConfig,
    generative_stages,
    output_layer,
    plan_stages,
)
from hvbench.latents import (
    AncestralModel,
    LatentSample,
    draw,
    merge_precision_weighted,
)
from hvbench.likelihoods import get_likelihood
from hvbench.options import AT_LEAST_1, option
from hvbench.registry import register_model
from hvbench.task import TaskSpec


@dataclass(frozen=True)
class LVAEConfig(StagesConfig):
    mixtures: int = option(10, range=AT_LEAST_1)  # logistic mixture components (dlogistic tasks only)


class LadderVAE(AncestralModel):
    def __init__(self, cfg: LVAEConfig, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.head = get_likelihood(spec.likelihood, spec.shape[0], cfg.mixtures)
        self.plans: list[StagePlan] = plan_stages(cfg, spec.shape)
        act, drop = cfg.activation, cfg.dropout
        self.up = nn.ModuleList(
            ConvStack(
                p.in_shape,
                p.shape[0],
                p.kernel,
                p.sizes,
                first_residual=i > 0,
                activation=act,
                dropout=drop,
            )
            for i, p in enumerate(self.plans)
        )
        self.estimate = nn.ModuleList(
            LatentParams(p.shape, p.units, p.spatial, act) for p in self.plans
        )
        # p(z_i | z_{>i}) for every layer but the top, read from the stage above's output
        self.prior = nn.ModuleList(
            LatentParams(p.shape, p.units, p.spatial, act) for p in self.plans[:-1]
        )
        self.down = generative_stages(self.plans, [p.units for p in self.plans], act, drop)
        self.out = output_layer(cfg.filters, self.head.out_channels, act)

    def features(self, x: Tensor) -> list[Tensor]:
        """Every stage's deterministic features: the only place the data enters."""
        h, features = self.head.prepare(x), []
        for stack in self.up:
            h, _ = stack(h)
            features.append(h)
        return features

    def ancestral_pass(
        self, features: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        """Ancestral pass z_L → z_1 → x; posterior draws given `features`, prior draws without."""
        groups: dict[str, LatentSample] = {}
        d, skips = None, None
        for i in reversed(range(len(self.plans))):
            p = (
                self.standard_prior(n, self.plans[i].latent_shape)
                if d is None
                else self.prior[i](d)
            )
            if features is None:
                z = p.rsample()
            else:
                estimate = self.estimate[i](features[i])
                q = estimate if d is None else merge_precision_weighted(estimate, p)
                groups[f"z{i + 1}"] = draw(q, p)
                z = groups[f"z{i + 1}"].z
            d, skips = self.down[i](z, skips)
        return self.out(d), dict(reversed(groups.items()))


@register_model(
    "lvae",
    config=LVAEConfig,
    description="Ladder VAE (Sønderby et al. 2016): precision-weighted top-down posterior",
)
def build_lvae(cfg: LVAEConfig, spec: TaskSpec) -> LadderVAE:
    return LadderVAE(cfg, spec)
