"""The training objective (docs/design.md §5) and its KL schedule.

loss = −( w_rec · log p(x|z) − β(t) · Σ_groups max(KL_g, λ_free) ), with the
free-bits floor applied to each group's batch-mean KL (Kingma et al. 2016), so
a group below λ_free gets no gradient pushing it further down. None of this
touches the *reported* ELBO, which is always `ModelOutput.elbo`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from hvbench.config import TrainConfig
from hvbench.latents import ModelOutput


def beta_at(step: int, cfg: TrainConfig) -> float:
    """β(t): constant, a linear warm-up to β, or a cyclical ramp (Fu et al. 2019)."""
    if cfg.beta_schedule == "constant" or cfg.warmup_steps <= 0:
        return cfg.beta
    if cfg.beta_schedule == "linear":
        return cfg.beta * min(1.0, step / cfg.warmup_steps)
    period = max(cfg.cycle_steps, cfg.warmup_steps)
    return cfg.beta * min(1.0, (step % period) / cfg.warmup_steps)


def training_loss(
    out: ModelOutput, cfg: TrainConfig, beta: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted objective to minimise, and its parts (detached) for logging."""
    kl_per_group = torch.stack([k.mean() for k in out.kl.values()])
    kl_floored = kl_per_group.clamp(min=cfg.free_bits) if cfg.free_bits > 0 else kl_per_group
    log_px = out.log_px.mean()
    loss = -(cfg.w_rec * log_px - beta * kl_floored.sum())
    parts = {
        "train/loss": loss.detach(),
        "train/elbo_nats": (log_px - kl_per_group.sum()).detach(),
        "train/log_px_nats": log_px.detach(),
        "train/kl_nats": kl_per_group.sum().detach(),
    }
    return loss, parts
