"""`biva`: the Bidirectional-Inference VAE (Maaløe et al. 2019).

Every stage below the top has two latent groups. Inference runs two
deterministic bottom-up paths: the *bottom-up* (BU) path samples z_i^BU on the
way up and feeds that sample to the next stage; the *top-down* (TD) path, which
reads the BU features as a skip, only carries features up. The top stage merges
both paths and samples the one shared top latent z_L. Then, top-down, each
stage infers z_i^TD from its TD features merged with the generative state d
(a gated block with d as skip), and the generative path reads [z_i^TD, z_i^BU]
together, with skip connections from the stage above.

KL terms: z_L and z_i^TD are drawn after everything their priors read, so their
KL is analytic; z_i^BU is drawn before the z_{>i} its prior p(z_i^BU | z_{>i})
reads, so its term is the single-sample log q − log p (as the official code
computes every term). The structure follows the official `BivaStage` /
`BivaTopStage` (biva-pytorch 0.1.4) with the shared blocks of `hvbench.blocks`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from hvbench.blocks import (
    ConvStack,
    GatedResBlock,
    LatentParams,
    LatentToFeatures,
    Shape,
    StagePlan,
    StagesConfig,
    generative_stages,
    output_layer,
    plan_stages,
)
from hvbench.errors import UserError
from hvbench.latents import (
    AncestralModel,
    DiagonalGaussian,
    LatentSample,
    draw,
)
from hvbench.likelihoods import get_likelihood
from hvbench.options import AT_LEAST_1, option
from hvbench.registry import register_model
from hvbench.task import TaskSpec


@dataclass(frozen=True)
class BIVAConfig(StagesConfig):
    merge_kernel: int = 3  # kernel of the block merging TD features with d (official: 3)
    mixtures: int = option(10, range=AT_LEAST_1)  # logistic mixture components (dlogistic tasks only)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.merge_kernel % 2 == 0:
            raise UserError(f"model.merge_kernel must be odd, got {self.merge_kernel}")


def doubled(shape: Shape) -> Shape:
    """Two paths' features side by side (BIVA concatenates BU and TD along channels)."""
    return (2 * shape[0], *shape[1:])


@dataclass
class Upward:
    """What inference leaves for the top-down pass, per stage below the top."""

    bu_q: list[DiagonalGaussian]  # q(z_i^BU | x, z_{<i}^BU)
    bu_z: list[Tensor]  # z_i^BU, drawn on the way up
    td: list[Tensor]  # TD-path features
    top: DiagonalGaussian | None  # q(z_L | x, z^BU), set at the top stage


class BIVA(AncestralModel):
    def __init__(self, cfg: BIVAConfig, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.head = get_likelihood(spec.likelihood, spec.shape[0], cfg.mixtures)
        self.plans: list[StagePlan] = plan_stages(cfg, spec.shape)
        self._build_inference(cfg)
        self._build_generative(cfg)
        self.out = output_layer(cfg.filters, self.head.out_channels, cfg.activation)

    def _build_inference(self, cfg: BIVAConfig) -> None:
        """Two bottom-up stacks per stage: BU reads both paths of the stage below as skip,
        TD reads this stage's BU features; q(z_i^BU) per stage below the top, q(z_L) at it."""
        act, drop, plans = cfg.activation, cfg.dropout, self.plans

        def stack(i: int, skip: Shape | None) -> ConvStack:
            p = plans[i]
            return ConvStack(
                p.in_shape,
                p.shape[0],
                p.kernel,
                p.sizes,
                skip_shapes=[skip] * cfg.blocks if skip else None,
                first_residual=i > 0,
                activation=act,
                dropout=drop,
            )

        self.bu = nn.ModuleList(
            stack(i, doubled(plans[i - 1].shape) if i else None) for i in range(len(plans))
        )
        self.td = nn.ModuleList(stack(i, p.shape) for i, p in enumerate(plans))
        below, top = plans[:-1], plans[-1]
        self.bu_post = nn.ModuleList(LatentParams(p.shape, p.units, p.spatial, act) for p in below)
        self.bu_features = nn.ModuleList(
            LatentToFeatures(p.units, p.shape, p.spatial) for p in below
        )
        self.top_merge = GatedResBlock(
            doubled(top.shape),
            top.shape[0],
            top.kernel,
            top.shape[1:],
            activation=act,
            dropout=drop,
        )
        self.top_post = LatentParams(top.shape, top.units, top.spatial, act)

    def _build_generative(self, cfg: BIVAConfig) -> None:
        """Per stage below the top: q(z_i^TD) from TD features merged with d, the priors of
        both groups from d, and the generative stack reading [z_i^TD, z_i^BU]."""
        act, drop, below, top = cfg.activation, cfg.dropout, self.plans[:-1], self.plans[-1]

        def heads() -> nn.ModuleList:
            return nn.ModuleList(LatentParams(p.shape, p.units, p.spatial, act) for p in below)

        self.td_merge = nn.ModuleList(
            GatedResBlock(
                p.shape,
                p.shape[0],
                cfg.merge_kernel,
                p.shape[1:],
                skip_shape=p.shape,
                activation=act,
                dropout=drop,
            )
            for p in below
        )
        self.td_post, self.td_prior, self.bu_prior = heads(), heads(), heads()
        units = [2 * p.units for p in below] + [top.units]  # [z_i^TD, z_i^BU] below the top
        self.down = generative_stages(self.plans, units, act, drop)

    def features(self, x: Tensor) -> list[Tensor]:
        """Stage 1's BU and TD features: deterministic in x, as nothing is sampled below them."""
        h = self.head.prepare(x)
        h_bu, _ = self.bu[0](h)
        h_td, _ = self.td[0](h, [h_bu] * len(self.td[0].blocks))
        return [h_bu, h_td]

    def upward(self, first: list[Tensor]) -> Upward:
        """Both inference paths above stage 1, drawing z_i^BU on the way up."""
        (h_bu, h_td), up = first, Upward([], [], [], None)
        for i in range(len(self.plans) - 1):
            q = self.bu_post[i](h_bu)
            up.bu_q.append(q)
            up.bu_z.append(q.rsample())
            up.td.append(h_td)
            skip = torch.cat([h_bu, h_td], 1)
            bu, td = self.bu[i + 1], self.td[i + 1]
            h_bu, _ = bu(self.bu_features[i](up.bu_z[-1]), [skip] * len(bu.blocks))
            h_td, _ = td(h_td, [h_bu] * len(td.blocks))
        up.top = self.top_post(self.top_merge(torch.cat([h_bu, h_td], 1)))
        return up

    def downward(self, up: Upward | None, n: int) -> tuple[Tensor, dict[str, LatentSample]]:
        """Ancestral pass z_L → (z_i^TD, z_i^BU) → x; posterior draws given `up`, prior draws without."""
        top = len(self.plans)
        prior = self.standard_prior(n, self.plans[-1].latent_shape)
        groups: dict[str, LatentSample] = {}
        if up is None:
            z = prior.rsample()
        else:
            groups[f"z{top}"] = draw(up.top, prior)
            z = groups[f"z{top}"].z
        d, skips = self.down[-1](z, None)
        for i in reversed(range(top - 1)):
            p_td, p_bu = self.td_prior[i](d), self.bu_prior[i](d)
            if up is None:
                z_td, z_bu = p_td.rsample(), p_bu.rsample()
            else:
                q_td = self.td_post[i](self.td_merge[i](up.td[i], d))
                z_bu = up.bu_z[i]
                groups[f"z{i + 1}_td"] = draw(q_td, p_td)
                groups[f"z{i + 1}_bu"] = LatentSample(z_bu, up.bu_q[i], p_bu, analytic=False)
                z_td = groups[f"z{i + 1}_td"].z
            d, skips = self.down[i](torch.cat([z_td, z_bu], 1), skips)
        return self.out(d), dict(reversed(groups.items()))

    def ancestral_pass(
        self, first: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        """The BU path samples z^BU on the way up, so only stage 1 is shared by draws."""
        return self.downward(None if first is None else self.upward(first), n)


@register_model(
    "biva",
    config=BIVAConfig,
    description="BIVA (Maaløe et al. 2019): bottom-up and top-down latents per stage, shared top",
)
def build_biva(cfg: BIVAConfig, spec: TaskSpec) -> BIVA:
    return BIVA(cfg, spec)
