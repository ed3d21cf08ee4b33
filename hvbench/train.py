"""The training loop: plain PyTorch under Accelerate (docs/design.md §3, §5, §8.2, §9).

Data never goes through a DataLoader: a split is one tensor on the device and
a batch is an index gather from a seeded permutation, each process taking its
slice of the global batch. A step whose loss or gradient norm is not finite is
skipped and counted (VDVAE-style); too many in a row stop the run loudly.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import Tensor

from hvbench.config import TrainConfig
from hvbench.device import synchronize
from hvbench.objective import beta_at, training_loss
from hvbench.progress import StepReporter

MAX_CONSECUTIVE_SKIPS = 50


class TrainingDiverged(RuntimeError):
    """Raised when every recent step was skipped: the run cannot make progress."""


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0
    steps: int = 0
    images_per_s: float = float("nan")


def total_steps(cfg: TrainConfig, n_train: int, world: int) -> int:
    if cfg.epochs is not None:
        return max(1, math.ceil(cfg.epochs * n_train / (cfg.batch_size * world)))
    return cfg.steps


class BatchSampler:
    """Seeded epochs of a global permutation; process r takes its slice of each global batch."""

    def __init__(self, n: int, batch_size: int, accelerator: Accelerator, seed: int):
        self.n, self.batch_size = n, batch_size
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.generator = torch.Generator().manual_seed(seed)
        self.global_batch = min(batch_size * self.world, n)
        self._perm, self._pos = torch.randperm(n, generator=self.generator), 0

    def next(self) -> Tensor:
        if self._pos + self.global_batch > self.n:
            self._perm, self._pos = torch.randperm(self.n, generator=self.generator), 0
        batch = self._perm[self._pos : self._pos + self.global_batch]
        self._pos += self.global_batch
        per = self.global_batch // self.world
        return batch[self.rank * per : (self.rank + 1) * per]


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_images: Tensor,
    cfg: TrainConfig,
    accelerator: Accelerator,
    validate: Callable[[], dict[str, float]],
    log: Callable[[dict[str, float], int], None],
) -> TrainResult:
    """Run `cfg`'s steps; `validate()` runs every eval_every steps, `log(metrics, step)` every log_every."""
    steps = total_steps(cfg, len(train_images), accelerator.num_processes)
    sampler = BatchSampler(len(train_images), cfg.batch_size, accelerator, cfg.seed)
    warmup = min(20, max(1, steps // 10))  # steps excluded from throughput
    result = TrainResult(steps=steps)
    timed_images, timed_seconds, consecutive_skips = 0, 0.0, 0
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    with StepReporter(steps, accelerator.is_main_process) as reporter:
        for step in range(1, steps + 1):
            model.train()
            t0 = time.perf_counter()
            x = train_images[sampler.next()].to(accelerator.device, non_blocking=True)
            beta = beta_at(step, cfg)
            with accelerator.autocast():
                out = model(x)
            loss, parts = training_loss(out, cfg, beta)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
            finite = bool(torch.isfinite(loss)) and bool(torch.isfinite(grad_norm))
            if finite or accelerator.mixed_precision == "fp16":
                optimizer.step()  # under fp16 the grad scaler itself skips inf steps and rescales
            optimizer.zero_grad(set_to_none=True)
            consecutive_skips = 0 if finite else consecutive_skips + 1
            result.skipped_steps += not finite
            if consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
                raise TrainingDiverged(
                    f"{consecutive_skips} consecutive steps had a non-finite loss or gradient "
                    f"(last at step {step}); lower train.lr or use train.precision=no"
                )
            if step > warmup:
                synchronize(accelerator.device)
                timed_seconds += time.perf_counter() - t0
                timed_images += len(x) * accelerator.num_processes
            record: dict[str, float] = {}
            if step % cfg.eval_every == 0 or step == steps:
                record.update(validate())
            if record or step % cfg.log_every == 0:
                record.update({k: float(v) for k, v in parts.items()})
                record["train/beta"] = beta
                record["train/grad_norm"] = float(grad_norm)
                record["train/skipped_steps"] = result.skipped_steps
                result.history.append({"step": step, **record})
                log(record, step)
            reporter.update(step, record)
    result.images_per_s = timed_images / timed_seconds if timed_seconds else float("nan")
    return result
