"""Evaluate every registered model, built from its smoke config with seed-0 weights, on the
smoke toy task with an odd test split (two processes shard it with padding, and the IWAE
subset too); run in the test's own process and under torchrun with 2 processes by
tests/test_distributed.py.

Writes {model: {"metrics": ..., "se": ...}} as JSON to argv[1] from the main process.
`se` (1-process runs only) holds the Monte Carlo standard errors of the sampled bounds given
the split, from two extra passes of each: the tolerance of a sampled metric between launches.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import torch
from accelerate.utils import set_seed

from hvbench.config import resolve
from hvbench.evaluate import evaluate_split
from hvbench.paths import cache_dir
from hvbench.registry import MODELS, TASKS
from hvbench.run import make_accelerator

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "smoke"
TEST_EXAMPLES, IWAE_EXAMPLES = 131, 33


def _standard_error(first: torch.Tensor, second: torch.Tensor, draws: int) -> float:
    """SE of a mean over examples of `draws`-draw averages, from two independent draws each."""
    per_example = (first - second).double().square() / 2  # one draw's MC variance, per example
    return math.sqrt(float(per_example.mean()) / draws / len(first))


@torch.no_grad()
def standard_errors(model: torch.nn.Module, images: torch.Tensor, draws: int, cfg) -> dict:
    subset = images[: cfg.iwae_examples]
    elbo = [model(images).elbo for _ in range(2)]
    iwae = [torch.logsumexp(model.log_weights(subset, cfg.iwae_k), 1) for _ in range(2)]
    return {
        "test/elbo_nats": _standard_error(*elbo, draws),
        "test/iwae_elbo_nats": _standard_error(*(e[: len(subset)] for e in elbo), draws),
        "test/iwae_nats": _standard_error(*iwae, 1),
    }


def main(out: Path) -> None:
    accelerator = make_accelerator("no")
    results = {}
    for name in MODELS.names():
        cfg = resolve(config_file=CONFIGS / f"toy-{name}.yaml")
        cfg = replace(
            cfg,
            task=replace(cfg.task, n_test=TEST_EXAMPLES),
            eval=replace(
                cfg.eval, au_samples=4, throughput_warmup=0, iwae_examples=IWAE_EXAMPLES
            ),
        )
        task = TASKS.get(cfg.task_name).build(cfg.task, cache_dir())
        set_seed(0)  # the same weights in every process and every launch
        model = accelerator.prepare(MODELS.get(name).build(cfg.model, task.spec))
        set_seed(1, device_specific=True)
        evaluation = evaluate_split(model, task, "test", accelerator, cfg.eval)
        record = {"metrics": evaluation.metrics}
        if accelerator.num_processes == 1:
            draws = 1 if model.posterior_mean_is_exact else cfg.eval.au_samples
            record["se"] = standard_errors(model, task.splits["test"], draws, cfg.eval)
        results[name] = record
    if accelerator.is_main_process:
        out.write_text(json.dumps(results))
    accelerator.wait_for_everyone()  # no rank tears gloo down while another still talks
    accelerator.end_training()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
