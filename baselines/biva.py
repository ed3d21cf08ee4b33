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
    GenerativeStage,
    LatentParams,
    LatentToFeatures,
    StagePlan,
    StagesConfig,
    output_layer,
    plan_stages,
)
from hvbench.latents import (
    DiagonalGaussian,
    LatentSample,
    ModelOutput,
    draw,
    hierarchy_output,
    rerun_log_weights,
)
from hvbench.likelihoods import get_likelihood
from hvbench.registry import register_model
from hvbench.task import TaskSpec


@dataclass(frozen=True)
class BIVAConfig(StagesConfig):
    merge_kernel: int = 3  # kernel of the block merging TD features with d (official: 3)
    mixtures: int = 10  # logistic mixture components (dlogistic tasks only)


@dataclass
class Upward:
    """What inference leaves for the top-down pass, per stage below the top."""

    bu_q: list[DiagonalGaussian]  # q(z_i^BU | x, z_{<i}^BU)
    bu_z: list[Tensor]  # z_i^BU, drawn on the way up
    td: list[Tensor]  # TD-path features
    top: DiagonalGaussian | None  # q(z_L | x, z^BU), set at the top stage


class BIVA(nn.Module):
    def __init__(self, cfg: BIVAConfig, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.head = get_likelihood(spec.likelihood, spec.shape[0], cfg.mixtures)
        self.plans: list[StagePlan] = plan_stages(cfg, spec.shape)
        act, drop = cfg.activation, cfg.dropout
        plans, below = self.plans, self.plans[:-1]
        blocks = len(plans[0].sizes)

        def stack(i: int, skip: tuple[int, int, int] | None) -> ConvStack:
            p = plans[i]
            return ConvStack(
                p.in_shape,
                p.shape[0],
                p.kernel,
                p.sizes,
                skip_shapes=[skip] * blocks if skip else None,
                first_residual=i > 0,
                activation=act,
                dropout=drop,
            )

        def doubled(shape: tuple[int, int, int]) -> tuple[int, int, int]:
            return (2 * shape[0], *shape[1:])

        self.bu = nn.ModuleList(
            stack(i, doubled(plans[i - 1].shape) if i else None) for i in range(len(plans))
        )
        self.td = nn.ModuleList(stack(i, p.shape) for i, p in enumerate(plans))
        self.bu_post = nn.ModuleList(LatentParams(p.shape, p.units, p.spatial, act) for p in below)
        self.bu_features = nn.ModuleList(
            LatentToFeatures(p.units, p.shape, p.spatial) for p in below
        )
        top = plans[-1]
        self.top_merge = GatedResBlock(
            doubled(top.shape),
            top.shape[0],
            top.kernel,
            top.shape[1:],
            activation=act,
            dropout=drop,
        )
        self.top_post = LatentParams(top.shape, top.units, top.spatial, act)

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
        self.td_post = nn.ModuleList(LatentParams(p.shape, p.units, p.spatial, act) for p in below)
        self.td_prior = nn.ModuleList(LatentParams(p.shape, p.units, p.spatial, act) for p in below)
        self.bu_prior = nn.ModuleList(LatentParams(p.shape, p.units, p.spatial, act) for p in below)
        down = [GenerativeStage(top, top.units, None, act, drop)]
        for p in reversed(below):
            down.append(GenerativeStage(p, 2 * p.units, down[-1].stack.hidden_shapes, act, drop))
        self.down = nn.ModuleList(reversed(down))  # indexed bottom to top
        self.out = output_layer(cfg.filters, self.head.out_channels, act)

    def upward(self, x: Tensor) -> Upward:
        """Both inference paths, bottom to top, drawing z_i^BU on the way."""
        x_bu = x_td = self.head.prepare(x)
        skip, up = None, Upward([], [], [], None)
        for i, (bu, td) in enumerate(zip(self.bu, self.td, strict=True)):
            h_bu, _ = bu(x_bu, None if skip is None else [skip] * len(bu.blocks))
            h_td, _ = td(x_td, [h_bu] * len(td.blocks))
            if i == len(self.plans) - 1:
                break
            q = self.bu_post[i](h_bu)
            up.bu_q.append(q)
            up.bu_z.append(q.rsample())
            up.td.append(h_td)
            x_bu, x_td = self.bu_features[i](up.bu_z[-1]), h_td
            skip = torch.cat([h_bu, h_td], 1)
        up.top = self.top_post(self.top_merge(torch.cat([h_bu, h_td], 1)))
        return up

    def downward(self, up: Upward | None, n: int) -> tuple[Tensor, dict[str, LatentSample]]:
        """Ancestral pass z_L → (z_i^TD, z_i^BU) → x; posterior draws given `up`, prior draws without."""
        top = len(self.plans)
        prior = DiagonalGaussian.standard(
            torch.empty(n, *self.plans[-1].latent_shape, device=next(self.parameters()).device)
        )
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

    def hierarchy(self, x: Tensor) -> tuple[Tensor, dict[str, LatentSample]]:
        """One posterior draw of every group: decoder parameters and each group's (z, q, p)."""
        return self.downward(self.upward(x), len(x))

    def forward(self, x: Tensor) -> ModelOutput:
        return hierarchy_output(self.head, x, *self.hierarchy(x))

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        return self.head.mean(self.downward(None, n)[0])

    def log_weights(self, x: Tensor, k: int) -> Tensor:
        """(B, k) log p(x, z) − log q(z | x) for k ancestral draws (inference reruns: it samples)."""
        return rerun_log_weights(self.hierarchy, self.head, x, k)


@register_model(
    "biva",
    config=BIVAConfig,
    description="BIVA (Maaløe et al. 2019): bottom-up and top-down latents per stage, shared top",
)
def build_biva(cfg: BIVAConfig, spec: TaskSpec) -> BIVA:
    return BIVA(cfg, spec)
