"""Every registered model has a config on every registered task, with its budget in the header.

Parametrized over the registries, so a new model or task fails here until its
configs exist. Each config is resolved (keys and values checked) and, where the
task's image shape is fixed, its model is built for that shape.
"""

from __future__ import annotations

import re

import pytest

from hvbench.config import default_config_path, resolve
from hvbench.registry import MODELS, TASKS
from hvbench.task import TaskSpec
from hvbench.tasks.toy import DAG

# the budget's unit: CPU minutes for the toy tasks and dSprites, GPU hours for CelebA; the
# file task's images are the user's, so its configs give the cost per image size
UNITS = {"celeba": r"GPU hours", "file": r"per image size.*CPU minutes"}
SPECS = {  # the shapes a task fixes without its data (file: a 1×32×32 example)
    "toy-corr": TaskSpec((1, 32, 32), "gaussian", DAG),
    "toy-uncorr": TaskSpec((1, 32, 32), "gaussian", DAG),
    "dsprites": TaskSpec((1, 64, 64), "bernoulli"),
    "celeba": TaskSpec((3, 64, 64), "dlogistic"),
    "file": TaskSpec((1, 32, 32), "gaussian"),
}


@pytest.mark.parametrize("model", MODELS.names())
@pytest.mark.parametrize("task", TASKS.names())
def test_every_task_and_model_has_a_config_with_a_budget(task: str, model: str) -> None:
    path = default_config_path(task, model)
    assert path is not None, f"configs/{task}/{model}.yaml is missing"
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line.lstrip("# "))
    starts = [i for i, line in enumerate(header) if line.startswith("Budget:")]
    assert starts, f"{path} states no 'Budget:' in its header comment"
    budget = " ".join(header[starts[0] :])
    assert re.search(UNITS.get(task, r"CPU\b.*minutes|minutes.*\bCPU\b"), budget), budget
    cfg = resolve(task, model)
    assert (cfg.task_name, cfg.model_name) == (task, model)
    if task in SPECS:
        MODELS.get(model).build(cfg.model, SPECS[task])
