"""A test plug-in model whose latent groups are not diagonal Gaussians.

`flow-vae` proves the latent contract (`hvbench.latents.Latent`) takes any distribution with
`rsample`, `log_prob` and `mean`, through the same `hvbench run` path as the built-in models:

- `top` (2 units): q = Laplace(μ(x), b(x)), p = N(0, I). torch.distributions knows
  KL(Laplace ‖ Normal) unit by unit, so the group's term is that closed-form KL.
- `flow` (3 units): q is one linear inverse-autoregressive flow step on a Gaussian,
  z = μ(x) + L(x) ε with L lower-triangular (a full-covariance Gaussian: its density does not
  factor over units); p = N(W z_top, I) given the top group, drawn before it. No closed form
  is known for that pair, so the group carries the single-sample rate term, one per example.

`register()` adds it to the registry of the calling process only (the test runs the CLI in
a subprocess that calls it first), so the registry the other tests walk never holds it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, distributions, nn

from hvbench.latents import AncestralModel, LatentSample, draw
from hvbench.likelihoods import get_likelihood
from hvbench.options import AT_LEAST_1, option
from hvbench.registry import register_model
from hvbench.task import TaskSpec

NAME = "flow-vae"
TOP, FLOW = 2, 3  # units of the two groups


@dataclass(frozen=True)
class FlowVAEConfig:
    hidden: int = option(32, range=AT_LEAST_1)  # width of the encoder's and decoder's layer


class FlowVAE(AncestralModel):
    """A dense two-group VAE: a Laplace top group and a full-covariance (linear IAF) group."""

    def __init__(self, cfg: FlowVAEConfig, spec: TaskSpec):
        super().__init__()
        channels, height, width = spec.shape
        self.head = get_likelihood(spec.likelihood, channels)
        self.image = (self.head.out_channels, height, width)
        pixels = channels * height * width
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(pixels, cfg.hidden), nn.ReLU())
        self.top = nn.Linear(cfg.hidden, 2 * TOP)  # Laplace location and log scale
        # the flow group reads x and its parent: location, log diagonal, strictly-lower entries
        self.flow = nn.Linear(cfg.hidden + TOP, 2 * FLOW + FLOW * (FLOW - 1) // 2)
        self.prior = nn.Linear(TOP, FLOW)  # the mean of p(z_flow | z_top)
        self.decoder = nn.Sequential(
            nn.Linear(TOP + FLOW, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, self.head.out_channels * height * width),
        )

    def features(self, x: Tensor) -> list[Tensor]:
        return [self.encoder(self.head.prepare(x))]

    def ancestral_pass(
        self, features: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        device = next(self.parameters()).device
        p_top = distributions.Normal(torch.zeros(n, TOP, device=device), 1.0)
        if features is None:
            z_top = p_top.rsample()
            p_flow = distributions.Normal(self.prior(z_top).float(), 1.0)
            return self._decode(z_top, p_flow.rsample()), {}
        h = features[0].float()
        loc, log_scale = self.top(h).float().chunk(2, dim=1)
        top = draw(distributions.Laplace(loc, log_scale.clamp(-5, 5).exp()), p_top)
        flow = draw(self._flow_posterior(h, top.z), distributions.Normal(self.prior(top.z), 1.0))
        return self._decode(top.z, flow.z), {"top": top, "flow": flow}

    def _flow_posterior(self, h: Tensor, z_top: Tensor) -> distributions.MultivariateNormal:
        """z = μ + L ε, ε ~ N(0, I): one linear inverse-autoregressive step, L lower-triangular
        with a positive diagonal (its log-determinant is the sum of the log diagonal)."""
        params = self.flow(torch.cat([h, z_top], dim=1)).float()
        loc, log_diag, below = params.split([FLOW, FLOW, FLOW * (FLOW - 1) // 2], dim=1)
        rows, cols = torch.tril_indices(FLOW, FLOW, offset=-1)
        lower = torch.zeros(len(h), FLOW, FLOW, device=h.device)
        lower[:, rows, cols] = below
        scale = lower + torch.diag_embed(log_diag.clamp(-5, 5).exp())
        return distributions.MultivariateNormal(loc, scale_tril=scale)

    def _decode(self, z_top: Tensor, z_flow: Tensor) -> Tensor:
        return self.decoder(torch.cat([z_top, z_flow], dim=1)).view(-1, *self.image)


def register() -> None:
    """Register `flow-vae` as a plug-in would, in this process."""
    register_model(NAME, config=FlowVAEConfig, description="test plug-in: Laplace and linear-IAF groups")(
        FlowVAE
    )
