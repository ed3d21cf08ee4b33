"""An exponential moving average of a model's weights (`train.ema_rate`; docs/design.md §5).

VDVAE and NVAE report the numbers of averaged weights, which are smoother than the last
step's; a run with `train.ema_rate` > 0 keeps the average and its final evaluation scores it.
The average is kept in fp32 whatever the training precision (an average of bf16-rounded
steps would lose the small updates it exists to accumulate), updated only after a step the
optimiser applied (a skipped or overflowed step changed no weight), and saved in every
checkpoint beside the model (`checkpoint.EMA_FILE`), so a resumed run continues the same
average bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hvbench.errors import UserError


class EMA:
    """ema ← rate · ema + (1 − rate) · θ after every applied step, starting from the initial θ
    (VDVAE's update). Parameters only: hvbench's models hold no buffers."""

    def __init__(self, model: nn.Module, rate: float):
        self.rate = rate
        named = list(model.named_parameters())
        self.names = [name for name, _ in named]
        self.average = [p.detach().float().clone() for _, p in named]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average; a lerp, so a rate whose 1 − rate
        rounds to 1 gives the weights themselves, bit for bit."""
        weights = [p.detach().float() for p in model.parameters()]
        torch._foreach_lerp_(self.average, weights, 1.0 - self.rate)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Put the averaged weights into `model` (for the final evaluation and saved weights)."""
        for p, average in zip(model.parameters(), self.average, strict=True):
            p.copy_(average.to(p.dtype))

    def state_dict(self) -> dict[str, Tensor]:
        """Named like the model's own state dict, so the file loads into the model as weights."""
        return dict(zip(self.names, self.average, strict=True))

    def load_state_dict(self, state: dict[str, Tensor], source: str) -> None:
        """Continue from a saved average; one that does not fit the model is a UserError naming
        `source`."""
        if set(state) != set(self.names):
            raise UserError(f"{source} holds the average of another model's weights")
        for name, average in zip(self.names, self.average, strict=True):
            if state[name].shape != average.shape:
                raise UserError(f"{source}: {name} has shape {tuple(state[name].shape)}")
            average.copy_(state[name])
