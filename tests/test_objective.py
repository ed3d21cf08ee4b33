"""The training objective: KL schedules and free bits; the reported ELBO stays the true bound."""

from __future__ import annotations

import torch

from hvbench.config import TrainConfig
from hvbench.latents import ModelOutput
from hvbench.objective import beta_at, training_loss


def test_schedules() -> None:
    constant = TrainConfig(beta=0.5)
    assert beta_at(0, constant) == beta_at(10_000, constant) == 0.5
    linear = TrainConfig(beta=2.0, beta_schedule="linear", warmup_steps=100)
    assert [beta_at(s, linear) for s in (0, 50, 100, 500)] == [0.0, 1.0, 2.0, 2.0]
    cyclical = TrainConfig(beta=1.0, beta_schedule="cyclical", warmup_steps=50, cycle_steps=100)
    assert [beta_at(s, cyclical) for s in (0, 25, 50, 99, 100, 125)] == [
        0.0,
        0.5,
        1.0,
        1.0,
        0.0,
        0.5,
    ]


def output(kl_a: float, kl_b: float, log_px: float) -> ModelOutput:
    kl = {
        "a": torch.tensor([[kl_a]], requires_grad=True),
        "b": torch.tensor([[kl_b]], requires_grad=True),
    }
    return ModelOutput(
        log_px=torch.tensor([log_px]),
        kl_units=kl,
        post_mean={},
        prior_mean={},
        analytic=dict.fromkeys(kl, True),
        px_params=torch.zeros(1),
    )


def test_weights_and_free_bits_change_the_loss_not_the_elbo() -> None:
    out = output(0.5, 3.0, -10.0)
    loss, parts = training_loss(out, TrainConfig(w_rec=5.0, free_bits=1.0), beta=0.1)
    assert torch.isclose(loss, torch.tensor(5 * 10.0 + 0.1 * (1.0 + 3.0)))
    assert torch.isclose(parts["train/elbo_nats"], torch.tensor(-10.0 - 3.5))
    assert torch.isclose(out.elbo, torch.tensor([-13.5])).all()
    loss.backward()
    assert out.kl_units["a"].grad.item() == 0.0  # below the floor: no push down
    assert abs(out.kl_units["b"].grad.item() - 0.1) < 1e-7
