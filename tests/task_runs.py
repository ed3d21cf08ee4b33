"""Run every registered model for a few steps on a dataset task, in-process.

Shared by the dataset tests so that a new model is trained on every dataset
the moment it is registered. Each model keeps the sizes of its own smoke config
(`configs/smoke/toy-<model>.yaml`) when it has one, else its defaults.

Torch runs on one thread here: on a shared 2-core
machine, two OpenMP threads that wait on each other made these tiny steps
10-40× slower than one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml

from hvbench.config import read_yaml, resolve
from hvbench.run import execute
from tests.conftest import CONFIGS

TINY_BUDGET = {
    "train": {"steps": 3, "batch_size": 16, "eval_every": 3, "log_every": 1, "val_examples": 32},
    "eval": {
        "batch_size": 32,
        "max_examples": 32,
        "iwae_k": 2,
        "iwae_examples": 8,
        "au_samples": 2,
    },
    "wandb": {"mode": "disabled"},
}


def model_section(model: str) -> dict[str, Any]:
    smoke = CONFIGS / "smoke" / f"toy-{model}.yaml"
    section = read_yaml(smoke).get("model", {}) if smoke.is_file() else {}
    return {**section, "name": model}


def train_briefly(task: dict[str, Any], model: str, root: Path) -> dict[str, Any]:
    """Train and evaluate `model` on `task` (a config section); return its metrics.json."""
    raw = {
        "task": task,
        "model": model_section(model),
        **TINY_BUDGET,
        "output": {"root": str(root), "figures": False},
    }
    config = root / "config.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump(raw))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_dir = execute(resolve(config_file=config))
    finally:
        torch.set_num_threads(threads)
    return json.loads((run_dir / "metrics.json").read_text())
