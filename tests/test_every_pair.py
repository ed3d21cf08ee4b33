"""Every registered model trains and evaluates on every registered task, for a few steps.

Parametrised over the registries, so a model (its file plus `configs/smoke/toy-<name>.yaml`)
or a task (its file, registering a `sample`: a tiny instance of itself) is trained here the
moment it is registered, with no test written for it.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hvbench.registry import MODELS, TASKS
from tests.task_runs import train_briefly


def test_every_task_ships_a_sample() -> None:
    missing = [entry.name for entry in TASKS.entries() if entry.sample is None]
    assert not missing, f"tasks without a sample for the tests: {missing}"


@pytest.mark.parametrize("model", MODELS.names())
@pytest.mark.parametrize("task", TASKS.names())
def test_every_model_trains_on_every_task(task: str, model: str, tmp_path: Path) -> None:
    sample = TASKS.get(task).sample
    assert sample is not None
    section = {"name": task, **sample(tmp_path / "data")}
    record = train_briefly(section, model, tmp_path / "runs")
    assert (record["task"], record["model"]) == (task, model)
    for split in record["run"]["eval_splits"]:
        assert math.isfinite(record["metrics"][f"{split}/elbo_nats"])
        assert record["metrics"][f"{split}/units"] > 0
