"""The training loop: plain PyTorch under Accelerate (docs/design.md §3, §5, §8.2, §9).

Data never goes through a DataLoader: a split is one tensor on the device and
a batch is an index gather from a seeded permutation, each process taking its
slice of the global batch. A step whose loss or gradient norm is not finite,
or whose gradient norm passes `train.skip_threshold`, is skipped and counted
(VDVAE-style); too many skips fail the run loudly, naming the latent groups
that blew up, while the last checkpoint stays intact.

Resuming is exact: a checkpoint holds the model, optimizer, grad scaler, every
process's RNGs, the sampler's permutation and position, `TrainState` and the
weights' moving average (`train.ema_rate`), and
nothing between two checkpoints draws random numbers differently on a resumed
run than on an uninterrupted one (validation and timing included).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from torch import Tensor
from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

from hvbench.checkpoint import Checkpointer, read_ema
from hvbench.config import TrainConfig
from hvbench.device import synchronize
from hvbench.ema import EMA
from hvbench.errors import UserError
from hvbench.objective import beta_at, training_loss
from hvbench.progress import StepReporter
from hvbench.signals import StopOnSignal

MAX_CONSECUTIVE_SKIPS = 50
# test-only: each training step burns this fraction of its own CPU time again, so the CI's
# performance checks can be shown to fail on a slower step (tests/bench/test_perf_checks.py)
TEST_SLOWDOWN = "HVBENCH_TEST_SLOWDOWN"


class TrainingDiverged(RuntimeError):
    """The run cannot make progress: too many skipped steps. The message names the step and
    the latent groups that blew up; the run is marked failed."""


class Interrupted(Exception):
    """A signal stopped training at a step boundary, after a checkpoint of that step."""

    def __init__(self, step: int, signum: int):
        super().__init__(f"stopped at step {step}")
        self.step, self.signum = step, signum


@dataclass
class TrainState:
    """What a resumed run continues from besides the model, optimizer and RNGs."""

    step: int = 0
    skipped_steps: int = 0
    overflow_steps: int = 0  # fp16 steps whose gradient overflowed: the grad scaler's business
    consecutive_skips: int = 0
    timed_images: int = 0
    timed_seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    skipped_steps: int = 0
    steps: int = 0
    images_per_s: float = float("nan")
    overflow_steps: int = 0
    ema: EMA | None = None  # the averaged weights when train.ema_rate > 0


OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamax": torch.optim.Adamax,
}


def make_optimizer(
    name: str, parameters: Iterable[torch.nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    """`train.optimizer` over `parameters`, updating every tensor in one call: Adam's fused
    kernel where torch has one for the parameters' device (CUDA; CPUs since torch 2.4),
    else the foreach implementation. torch's default on a CPU is a Python loop of about
    eight element-wise ops per tensor (4% of a paper config's bf16 step). The update is
    the same up to rounding, and a resumed run takes the same path as an uninterrupted one
    (`load_state_dict` restores the group's `fused`/`foreach` with the moments)."""
    parameters = list(parameters)
    devices = {p.device.type for p in parameters}
    fused = name == "adam" and devices <= set(_get_fused_kernels_supported_devices())
    speed = {"fused": True} if fused else {"foreach": True}
    return OPTIMIZERS[name](parameters, lr=lr, **speed)


def with_speed_options(model: torch.nn.Module, cfg: TrainConfig) -> torch.nn.Module:
    """`train.channels_last` and `train.compile`, applied in place: parameter names, state
    dicts and checkpoints stay those of the plain model (`Module.compile`, not a wrapper).
    Channels-last also goes to every module with a `memory_format` (one that makes a map
    from a vector), so no map enters the convolutions in the other layout."""
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
        for module in model.modules():
            if hasattr(module, "memory_format"):
                module.memory_format = torch.channels_last
    if cfg.compile:
        model.compile()
    return model


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

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "generator": self.generator.get_state(),
            "perm": self._perm,
            "pos": torch.tensor(self._pos),
        }

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if set(state) != {"generator", "perm", "pos"} or state["perm"].shape != (self.n,):
            raise UserError(f"the checkpoint's batch sampler does not fit a split of {self.n}")
        self.generator.set_state(state["generator"])
        self._perm, self._pos = state["perm"], int(state["pos"])


def train(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    train_images: Tensor,
    cfg: TrainConfig,
    accelerator: Accelerator,
    validate: Callable[[], dict[str, float]],
    log: Callable[[dict[str, float], int], None],
    checkpointer: Checkpointer | None = None,
) -> TrainResult:
    """Run `cfg`'s steps, continuing from `checkpointer`'s latest checkpoint if it has one and
    saving one every checkpoint_every steps and at the end; `validate()` runs every eval_every
    steps, `log(metrics, step)` every log_every. Raises Interrupted after SIGINT/SIGTERM (once a
    checkpoint of the step in hand is saved) and TrainingDiverged."""
    steps = total_steps(cfg, len(train_images), accelerator.num_processes)
    sampler = BatchSampler(len(train_images), cfg.batch_size, accelerator, cfg.seed)
    base = accelerator.unwrap_model(model)
    ema = EMA(base, cfg.ema_rate) if cfg.ema_rate > 0 else None
    state = _restore(checkpointer, sampler, ema)
    first = state.step + 1
    warmup = min(20, max(1, steps // 10))  # steps excluded from throughput, also after a resume
    clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
    fp16 = accelerator.mixed_precision == "fp16"
    slowdown = float(os.environ.get(TEST_SLOWDOWN) or 0)

    def save(step: int) -> None:
        if checkpointer is not None:
            averaged = ema.state_dict() if ema is not None else None
            checkpointer.save(step, dataclasses.asdict(state), sampler.state_dict(), averaged)

    with StepReporter(steps, accelerator.is_main_process) as reporter, StopOnSignal() as stop:
        for step in range(first, steps + 1):
            model.train()
            t0, cpu0 = time.perf_counter(), time.thread_time()
            x = train_images[sampler.next()].to(accelerator.device, non_blocking=True)
            beta = beta_at(step, cfg)
            with accelerator.autocast():
                out = model(x)
            loss, parts = training_loss(out, cfg, beta)
            accelerator.backward(loss)
            grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
            finite_loss, finite_grad = bool(torch.isfinite(loss)), bool(torch.isfinite(grad_norm))
            spike = finite_grad and 0 < cfg.skip_threshold < float(grad_norm)
            overflow = fp16 and finite_loss and not finite_grad
            skipped = not (finite_loss and finite_grad and not spike) and not overflow
            if not skipped or (fp16 and not finite_grad):
                optimizer.step()  # under fp16 the grad scaler itself skips inf steps and rescales
            elif fp16:
                accelerator.scaler.update()  # a skipped spike still closes the scaler's step
            optimizer.zero_grad(set_to_none=True)
            if ema is not None and not skipped and not overflow:  # only steps that moved θ
                ema.update(base)
            if slowdown > 0:
                _burn(slowdown * (time.thread_time() - cpu0))
            state.step = step
            state.skipped_steps += skipped
            state.overflow_steps += overflow
            state.consecutive_skips = state.consecutive_skips + 1 if skipped or overflow else 0
            problem = _progress_problem(state, steps, cfg, step)
            if problem:
                cause = (
                    f"gradient norm {float(grad_norm):.3g} > train.skip_threshold"
                    if spike
                    else "non-finite loss"
                    if not finite_loss
                    else "non-finite gradient"
                )
                why = diagnose(model, x, accelerator, cfg)
                raise TrainingDiverged(f"{problem} (step {step}: {cause}); {why}")
            if step - first >= warmup:
                synchronize(accelerator.device)
                state.timed_seconds += time.perf_counter() - t0
                state.timed_images += len(x) * accelerator.num_processes
            record: dict[str, float] = {}
            if step % cfg.eval_every == 0 or step == steps:
                record.update(validate())
            if record or step % cfg.log_every == 0:
                record.update({k: float(v) for k, v in parts.items()})
                record["train/beta"] = beta
                record["train/grad_norm"] = float(grad_norm)
                record["train/skipped_steps"] = state.skipped_steps
                state.history.append({"step": step, **record})
                log(record, step)
            reporter.update(step, record)
            saved = step % cfg.checkpoint_every == 0 or step == steps
            if saved:
                save(step)
            if _agreed(accelerator, stop.received is not None):
                if not saved:
                    save(step)
                raise Interrupted(step, stop.received or 2)
    return TrainResult(
        history=state.history,
        skipped_steps=state.skipped_steps,
        steps=steps,
        images_per_s=state.timed_images / state.timed_seconds if state.timed_seconds else math.nan,
        overflow_steps=state.overflow_steps,
        ema=ema,
    )


def _burn(seconds: float) -> None:
    """Busy-wait `seconds` of this thread's CPU time (the HVBENCH_TEST_SLOWDOWN hook)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def _restore(
    checkpointer: Checkpointer | None, sampler: BatchSampler, ema: EMA | None
) -> TrainState:
    latest = checkpointer.latest() if checkpointer is not None else None
    if latest is None:
        return TrainState()
    saved, sampler_state = checkpointer.restore(latest)
    sampler.load_state_dict(sampler_state)
    if ema is not None:
        ema.load_state_dict(read_ema(latest), f"checkpoint {latest}")
    known = {f.name for f in dataclasses.fields(TrainState)}
    if set(saved) != known:
        raise UserError(f"checkpoint {latest} holds another training state ({sorted(saved)})")
    return TrainState(**saved)


def _agreed(accelerator: Accelerator, local: bool) -> bool:
    """True on every process when any process was asked to stop (a signal may reach only one)."""
    if accelerator.num_processes == 1:
        return local
    flag = torch.tensor([float(local)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _progress_problem(state: TrainState, steps: int, cfg: TrainConfig, step: int) -> str | None:
    """Why the run must fail now: it can no longer end within train.max_skip_fraction, or it
    stalled altogether."""
    if state.skipped_steps > cfg.max_skip_fraction * steps:
        return (
            f"training failed at step {step}: {state.skipped_steps} of {step} steps skipped, more "
            f"than train.max_skip_fraction={cfg.max_skip_fraction} of {steps}"
        )
    if state.consecutive_skips >= MAX_CONSECUTIVE_SKIPS:
        return (
            f"training diverged at step {step}: {state.consecutive_skips} steps in a row had a "
            "non-finite loss or gradient"
        )
    return None


def diagnose(
    model: torch.nn.Module, x: Tensor, accelerator: Accelerator, cfg: TrainConfig
) -> str:
    """Which latent groups blew up on batch `x`: each group's KL, and the gradient of that KL
    with respect to the parameters, recomputed once on the unwrapped model (a run that fails
    no longer cares about the random stream)."""
    base = accelerator.unwrap_model(model)
    params = [p for p in base.parameters() if p.requires_grad]
    with accelerator.autocast():
        out = base(x)
    bad_kl, bad_grad, norms = [], [], {}
    for group, kl in out.kl.items():
        value = kl.float().mean()
        if not torch.isfinite(value):
            bad_kl.append(group)
        if value.requires_grad:
            grads = torch.autograd.grad(value, params, retain_graph=True, allow_unused=True)
            squares = (float(g.float().square().sum()) for g in grads if g is not None)
            norms[group] = math.sqrt(sum(squares))
            if not math.isfinite(norms[group]):
                bad_grad.append(group)
    parts = []
    if bad_kl:
        parts.append(f"KL not finite in latent group(s) {', '.join(bad_kl)}")
    if bad_grad:
        parts.append(f"KL gradient not finite in latent group(s) {', '.join(bad_grad)}")
    if not torch.isfinite(out.log_px.float().mean()):
        parts.append("log p(x|z) not finite")
    if not bad_kl and not bad_grad and norms:
        top = max(norms, key=lambda g: norms[g])
        parts.append(
            f"KL and its gradient finite in every latent group (largest gradient norm "
            f"{norms[top]:.3g}, in {top})"
        )
    advice = "lower train.lr, set train.grad_clip"
    if cfg.skip_threshold > 0:
        advice += f" or raise train.skip_threshold={cfg.skip_threshold}"
    return "; ".join(parts or ["every term finite on a recomputation"]) + f" ({advice})"
