"""`vae`: one Gaussian latent vector with a conv encoder and decoder (Kingma & Welling 2014).

The network is sized from the task's shape: stride-2 4×4 convs halve the image
until it is at most 4×4, then two dense layers. For 1×64×64 binary images this
is exactly the β-VAE net of Burgess et al. 2018 (4 × conv 32, 2 × FC 256,
10 latents).

`stacked-vae` is the stacked VAE of the official BIVA code (`VaeStage`): one
latent group per stage, inferred bottom-up (q(z_i | z_{i-1}), z_0 = x) with the
same stages, skips and latent heads as `lvae` and `biva`, so the three compare
like for like (`configs/paper/vae.yaml` builds it at the official code's sizes).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from hvbench.blocks import (
    ConvStack,
    LatentParams,
    LatentToFeatures,
    StagePlan,
    StagesConfig,
    generative_stages,
    output_layer,
    plan_stages,
)
from hvbench.latents import AncestralModel, DiagonalGaussian, LatentSample, draw
from hvbench.likelihoods import get_likelihood
from hvbench.options import AT_LEAST_1, option
from hvbench.registry import register_model
from hvbench.task import TaskSpec


@dataclass(frozen=True)
class VAEConfig:
    latent_dim: int = option(10, range=AT_LEAST_1)
    channels: int = option(32, range=AT_LEAST_1)  # conv width at every resolution (Burgess: 32)
    hidden: int = option(256, range=AT_LEAST_1)  # width of the two dense layers
    mixtures: int = option(10, range=AT_LEAST_1)  # logistic mixture components (dlogistic tasks only)


@dataclass(frozen=True)
class StackedVAEConfig(StagesConfig):
    mixtures: int = option(10, range=AT_LEAST_1)  # logistic mixture components (dlogistic tasks only)


def halving_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Feature sizes of a k4-s2-p1 conv stack run until the map is at most 4×4."""
    sizes = [(height, width)]
    while max(sizes[-1]) > 4:
        h, w = sizes[-1]
        sizes.append(((h - 2) // 2 + 1, (w - 2) // 2 + 1))
    return sizes


class VAE(AncestralModel):
    """The flat VAE as a one-group hierarchy: ELBO, samples and IWAE come from `AncestralModel`."""

    posterior_mean_is_exact = True  # E_q[z|x] is the encoder mean: no Monte Carlo needed

    def __init__(self, cfg: VAEConfig, spec: TaskSpec):
        super().__init__()
        channels, height, width = spec.shape
        self.spec = spec
        self.latent_dim = cfg.latent_dim
        self.head = get_likelihood(spec.likelihood, channels, cfg.mixtures)
        sizes = halving_sizes(height, width)
        self.top_shape = (cfg.channels, *sizes[-1])
        flat = cfg.channels * sizes[-1][0] * sizes[-1][1]

        encoder: list[nn.Module] = []
        in_ch = channels
        for _ in sizes[1:]:
            encoder += [nn.Conv2d(in_ch, cfg.channels, 4, 2, 1), nn.ReLU()]
            in_ch = cfg.channels
        encoder += [nn.Flatten(), nn.Linear(flat, cfg.hidden), nn.ReLU()]
        encoder += [
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, 2 * cfg.latent_dim),
        ]
        self.encoder = nn.Sequential(*encoder)

        decoder: list[nn.Module] = [nn.Linear(cfg.latent_dim, cfg.hidden), nn.ReLU()]
        decoder += [
            nn.Linear(cfg.hidden, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, flat),
            nn.ReLU(),
        ]
        decoder += [nn.Unflatten(1, self.top_shape)]
        for i, (h, w) in enumerate(reversed(sizes[:-1])):
            prev_h, prev_w = list(reversed(sizes))[i]
            out_ch = self.head.out_channels if i == len(sizes) - 2 else cfg.channels
            pad = (h - 2 * prev_h, w - 2 * prev_w)  # 0 or 1: undo the floor of odd sizes
            decoder.append(nn.ConvTranspose2d(cfg.channels, out_ch, 4, 2, 1, output_padding=pad))
            if out_ch == cfg.channels:
                decoder.append(nn.ReLU())
        self.decoder = nn.Sequential(*decoder)

    def features(self, x: Tensor) -> list[Tensor]:
        """The encoder's (μ, log σ) features: everything inference computes from x."""
        return [self.encoder(self.head.prepare(x))]

    def ancestral_pass(
        self, features: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        """One latent group: z ~ q(z | x) given the encoder's features, z ~ N(0, I) without."""
        prior = self.standard_prior(n, (self.latent_dim,))
        if features is None:
            return self.decoder(prior.rsample()), {}
        group = draw(DiagonalGaussian.from_params(features[0]), prior)
        return self.decoder(group.z), {"z": group}


class StackedVAE(AncestralModel):
    """A VAE with one latent group per stage, inferred bottom-up and generated top-down.

    z_i is drawn before the z_{i+1} its prior p(z_i | z_{i+1}) reads, so every
    group but the top has the single-sample KL term (see `LatentSample`).
    """

    def __init__(self, cfg: StackedVAEConfig, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.head = get_likelihood(spec.likelihood, spec.shape[0], cfg.mixtures)
        self.plans: list[StagePlan] = plan_stages(cfg, spec.shape)
        act, drop, blocks = cfg.activation, cfg.dropout, cfg.blocks
        self.up = nn.ModuleList(
            ConvStack(
                p.in_shape,
                p.shape[0],
                p.kernel,
                p.sizes,
                skip_shapes=[p.in_shape] * blocks if i else None,  # the stage below's features
                first_residual=i > 0,
                activation=act,
                dropout=drop,
            )
            for i, p in enumerate(self.plans)
        )
        below = self.plans[:-1]
        self.post = nn.ModuleList(
            LatentParams(p.shape, p.units, p.spatial, act) for p in self.plans
        )
        self.lift = nn.ModuleList(LatentToFeatures(p.units, p.shape, p.spatial) for p in below)
        self.prior = nn.ModuleList(LatentParams(p.shape, p.units, p.spatial, act) for p in below)
        self.down = generative_stages(self.plans, [p.units for p in self.plans], act, drop)
        self.out = output_layer(cfg.filters, self.head.out_channels, act)

    def upward(self, h: Tensor) -> tuple[list[DiagonalGaussian], list[Tensor]]:
        """q(z_i | z_{i-1}) and its draw, stage by stage up from stage 1's features `h`."""
        posteriors, draws = [], []
        for i, post in enumerate(self.post):
            posteriors.append(post(h))
            draws.append(posteriors[-1].rsample())
            if i + 1 < len(self.up):
                stack = self.up[i + 1]
                h, _ = stack(self.lift[i](draws[-1]), [h] * len(stack.blocks))
        return posteriors, draws

    def downward(
        self, up: tuple[list[DiagonalGaussian], list[Tensor]] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        """Generative pass z_L → x through the posterior draws in `up`, or prior draws without."""
        p = self.standard_prior(n, self.plans[-1].latent_shape)
        groups: dict[str, LatentSample] = {}
        d, skips = None, None
        for i in reversed(range(len(self.plans))):
            if d is not None:
                p = self.prior[i](d)
            if up is None:
                z = p.rsample()
            else:
                z = up[1][i]
                groups[f"z{i + 1}"] = LatentSample(z, up[0][i], p, analytic=d is None)
            d, skips = self.down[i](z, skips)
        return self.out(d), dict(reversed(groups.items()))

    def features(self, x: Tensor) -> list[Tensor]:
        """Stage 1's features: deterministic in x, as nothing is sampled below them."""
        return [self.up[0](self.head.prepare(x))[0]]

    def ancestral_pass(
        self, first: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        return self.downward(None if first is None else self.upward(first[0]), n)


@register_model(
    "vae",
    config=VAEConfig,
    description="flat VAE, one Gaussian latent (Burgess et al. 2018 net at 64×64)",
)
def build_vae(cfg: VAEConfig, spec: TaskSpec) -> VAE:
    return VAE(cfg, spec)


@register_model(
    "stacked-vae",
    config=StackedVAEConfig,
    description="stacked VAE of the official BIVA code: one latent group per stage, bottom-up",
)
def build_stacked_vae(cfg: StackedVAEConfig, spec: TaskSpec) -> StackedVAE:
    return StackedVAE(cfg, spec)
