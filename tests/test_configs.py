"""Every shipped run config states its budget, resolves and builds its model.

A task × model pair needs no config of its own (a run without one takes the
option defaults, and tests/test_every_pair.py trains every pair): the configs
that exist, `configs/<task>/<model>.yaml` for registered names, are checked here.
Each is resolved (keys and values checked) and, where the task's image shape is
fixed, its model is built for that shape.
"""

from __future__ import annotations

import re

import pytest

from hvbench.config import default_config_path, resolve
from hvbench.registry import MODELS, TASKS
from hvbench.task import TaskSpec
from hvbench.tasks.toy import DAG
from tests.conftest import CONFIGS

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


SHIPPED = [
    (task, model)
    for task in TASKS.names()
    for model in MODELS.names()
    if default_config_path(task, model) is not None
]


def test_every_config_folder_names_registered_tasks_and_models() -> None:
    folders = {p.name for p in CONFIGS.iterdir() if p.is_dir()} - {"smoke", "sweeps", "paper"}
    assert folders <= set(TASKS.names()), folders - set(TASKS.names())
    for folder in folders:
        stems = {p.stem for p in (CONFIGS / folder).glob("*.yaml")}
        assert stems <= set(MODELS.names()), (folder, stems - set(MODELS.names()))


@pytest.mark.parametrize(("task", "model"), SHIPPED)
def test_every_shipped_config_has_a_budget_and_builds(task: str, model: str) -> None:
    path = default_config_path(task, model)
    assert path is not None
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
