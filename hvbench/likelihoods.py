"""Likelihood heads p(x|z), shared by every model.

A decoder produces `head.out_channels` channels of parameters; the head
turns them into log p(x|z) per example (in fp32, whatever the autocast
precision) and into a mean image for figures. Keeping them here means an ELBO
from `lvae` and one from `vae` mean the same thing.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from hvbench.errors import UserError


def soft_clamp(x: Tensor, bound: float) -> Tensor:
    """Smoothly keep |x| < bound (NVAE): gradients never vanish the way a hard clamp's do."""
    return bound * torch.tanh(x / bound)


class Bernoulli:
    """Binary pixels; the decoder emits logits."""

    name = "bernoulli"

    def __init__(self, channels: int):
        self.channels = channels
        self.out_channels = channels

    def prepare(self, x: Tensor) -> Tensor:
        return x.float()

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        logits = params.float()
        return (
            -F.binary_cross_entropy_with_logits(logits, x.float(), reduction="none")
            .flatten(1)
            .sum(1)
        )

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params.float())


class Gaussian:
    """Continuous pixels; the decoder emits a mean and a log-scale per pixel."""

    name = "gaussian"
    log_scale_bound = 7.0

    def __init__(self, channels: int):
        self.channels = channels
        self.out_channels = 2 * channels

    def prepare(self, x: Tensor) -> Tensor:
        return x.float()

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        mu, log_scale = params.float().chunk(2, dim=1)
        log_scale = soft_clamp(log_scale, self.log_scale_bound)
        z = (x.float() - mu) * torch.exp(-log_scale)
        log_p = -0.5 * z.square() - log_scale - 0.5 * math.log(2 * math.pi)
        return log_p.flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        return params.float().chunk(2, dim=1)[0]


class DiscretizedLogisticMixture:
    """8-bit pixels (PixelCNN++, Salimans et al. 2017), generalised to C channels.

    Per pixel, a mixture of `mixtures` components shared across channels; within
    a component channel c's mean is shifted linearly by the earlier channels'
    values (the C(C-1)/2 coefficients; 3 for RGB, as in PixelCNN++).
    Data are scaled to [-1, 1] with bins of width 2/255.
    """

    name = "dlogistic"
    bins = 255

    def __init__(self, channels: int, mixtures: int = 10):
        self.channels = channels
        self.mixtures = mixtures
        self.out_channels = mixtures * (1 + 2 * channels + channels * (channels - 1) // 2)

    def prepare(self, x: Tensor) -> Tensor:
        return x.float() / 127.5 - 1.0

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        m, channels = self.mixtures, self.channels
        b, _, h, w = params.shape
        params = params.float()
        logits = params[:, :m]
        rest = params[:, m:].reshape(b, -1, m, h, w)
        means = rest[:, :channels]
        log_scales = soft_clamp(rest[:, channels : 2 * channels], 7.0).clamp(min=-7.0)
        coeffs = torch.tanh(rest[:, 2 * channels :])
        return logits, means, log_scales, coeffs

    def _shift_means(self, means: Tensor, coeffs: Tensor, x: Tensor) -> Tensor:
        """Add the autoregressive shift: mean_c += Σ_{c'<c} coeff_{c,c'} · x_{c'}."""
        channels = means.shape[1]
        shifted, pair = [means[:, 0]], 0
        for c in range(1, channels):
            shift = means[:, c]
            for prev in range(c):
                shift = shift + coeffs[:, pair] * x[:, prev].unsqueeze(1)
                pair += 1
            shifted.append(shift)
        return torch.stack(shifted, dim=1)

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        x = x.float()
        logits, means, log_scales, coeffs = self._split(params)
        means = self._shift_means(means, coeffs, x)
        centered = x.unsqueeze(2) - means  # (B, C, M, H, W)
        inv_scale = torch.exp(-log_scales)
        half_bin = 1.0 / self.bins
        plus_in = inv_scale * (centered + half_bin)
        min_in = inv_scale * (centered - half_bin)
        log_cdf_plus = plus_in - F.softplus(plus_in)  # log σ(plus_in), for x at the bottom bin
        log_one_minus_cdf_min = -F.softplus(min_in)  # log(1 − σ(min_in)), for the top bin
        cdf_delta = torch.sigmoid(plus_in) - torch.sigmoid(min_in)
        mid_in = inv_scale * centered
        log_pdf_mid = mid_in - log_scales - 2.0 * F.softplus(mid_in)
        # Where the bin mass underflows, fall back to density × bin width (PixelCNN++).
        log_mid = torch.where(
            cdf_delta > 1e-5,
            torch.log(cdf_delta.clamp(min=1e-12)),
            log_pdf_mid - math.log(self.bins / 2),
        )
        xb = x.unsqueeze(2).expand_as(centered)
        log_probs = torch.where(
            xb < -0.999, log_cdf_plus, torch.where(xb > 0.999, log_one_minus_cdf_min, log_mid)
        )
        log_mix = log_probs.sum(1) + F.log_softmax(logits, dim=1)  # (B, M, H, W)
        return torch.logsumexp(log_mix, dim=1).flatten(1).sum(1)

    def mean(self, params: Tensor) -> Tensor:
        """Mixture mean in [0, 1], channels filled in order so the linear shift can use them."""
        logits, means, _, coeffs = self._split(params)
        weights = torch.softmax(logits, dim=1)
        x = torch.zeros_like(means[:, :, 0])
        for c in range(self.channels):
            shifted = self._shift_means(means, coeffs, x)[:, c]
            x[:, c] = (weights * shifted).sum(1).clamp(-1, 1)
        return (x + 1) / 2


LikelihoodHead = Bernoulli | Gaussian | DiscretizedLogisticMixture


def get_likelihood(name: str, channels: int, mixtures: int = 10) -> LikelihoodHead:
    """The head for a task's likelihood; `mixtures` only matters for `dlogistic`."""
    if name == "bernoulli":
        return Bernoulli(channels)
    if name == "gaussian":
        return Gaussian(channels)
    if name == "dlogistic":
        return DiscretizedLogisticMixture(channels, mixtures)
    raise UserError(f"unknown likelihood {name!r}; choose from: bernoulli, gaussian, dlogistic")
