"""What a run says at its start and at its end, so its log answers "what happened?".

At the start: the device, the number of processes, the precision and the CPU
threads, and a warning when a launcher asked for more processes than started
(Accelerate's CPU launcher runs one process whatever `--num_processes` says).
At the end: the key test numbers, where the record is, and where the W&B run
went (offline: the `wandb sync` command), so nobody has to open metrics.json
to learn whether the run worked.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from accelerate import Accelerator

from hvbench.config import PRECISION_NAMES
from hvbench.device import device_name
from hvbench.metric_table import key


def start_line(what: str, task: str, model: str, precision: str, accelerator: Accelerator) -> str:
    processes = accelerator.num_processes
    return (
        f"hvbench {what} {task}/{model}: {device_name(accelerator.device)}, "
        f"{processes} process{'es' if processes > 1 else ''}, {PRECISION_NAMES[precision]}, "
        f"{torch.get_num_threads()} torch threads per process"
    )


def launcher_warning(processes: int, env: dict[str, str] | None = None) -> str | None:
    """A warning when the launcher's environment asked for more processes than started.

    torchrun sets WORLD_SIZE; `accelerate launch` passes no count to a process it starts
    alone, but it sets MASTER_ADDR only when asked for more than one process or machine.
    """
    env = dict(os.environ if env is None else env)
    asked: int | None = None
    for name in ("WORLD_SIZE", "ACCELERATE_NUM_PROCESSES"):
        if env.get(name, "").isdigit():
            asked = int(env[name])
            break
    several = asked is not None and asked > processes
    if asked is None and "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env and processes == 1:
        several = True
    if not several:
        return None
    count = f"{asked} processes" if asked else "several processes"
    return (
        f"hvbench: warning: the launcher asked for {count} but this run has {processes}; "
        "`accelerate launch --cpu` starts one process on a CPU: use `torchrun --nproc_per_node N "
        "-m hvbench ...` for several CPU processes"
    )


def result_lines(record: dict[str, Any], path: Any, wandb_where: str | None = None) -> list[str]:
    """The end of a run or re-evaluation: its key numbers on the ranked split, world size,
    where the record is, and where W&B has it."""
    m, info = record["metrics"], record["run"]
    split = info["eval_splits"][-1]

    def get(name: str) -> Any:
        return m.get(key(name, split))

    numbers = [f"ELBO {_num(get('elbo_nats'))} nats"]
    per_dim = get("elbo_nll_bpd")
    numbers[0] += (
        f" ({_num(per_dim)} bits/dim)"
        if per_dim is not None
        else f" ({_num(get('elbo_nll_nats_per_dim'))} nats/dim)"
    )
    if get("iwae_nats") is not None:
        numbers.append(f"IWAE-{get('iwae_k')} {_num(get('iwae_nats'))}")
    units = get("units")
    numbers += [
        f"active {get('active_units')}/{units}",
        f"cond. active {get('conditional_active_units')}/{units}",
        f"KL collapse {_num(get('kl_collapse_rate'))}",
    ]
    rate = m.get(key("train_images_per_s"))
    how = [
        *([f"train {_num(rate)} img/s"] if rate is not None else []),
        f"world size {info['world_size']} on {info['device']}",
        PRECISION_NAMES.get(info["precision"], info["precision"]),
        f"{info['steps']} steps",
    ]
    lines = [f"  {split}: " + " · ".join(numbers), "  " + " · ".join(how), f"  record: {path}"]
    reasons: dict[str, list[str]] = {}
    for name, reason in (record.get("notes") or {}).items():
        reasons.setdefault(str(reason), []).append(name.removeprefix(f"{split}/"))
    lines += [f"  {', '.join(names)}: {reason}" for reason, names in reasons.items()]
    if wandb_where:
        lines.append(f"  {wandb_where}")
    return lines


def _num(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value)
