"""Per-model step throughput (pytest-benchmark). Run `pytest tests/bench --benchmark-enable`.

With benchmarks disabled (the default in pyproject) each body runs once, so
every registered model is also smoke-tested for a train and an eval step.
"""

from __future__ import annotations

import pytest
import torch

from hvbench.bench import synthetic_batch
from hvbench.config import build
from hvbench.registry import MODELS
from hvbench.task import TaskSpec
from hvbench.tasks.toy import DAG

SPEC = TaskSpec(shape=(1, 32, 32), likelihood="gaussian", dag=DAG)
BATCH = 64


def make(name: str) -> torch.nn.Module:
    entry = MODELS.get(name)
    torch.manual_seed(0)
    return entry.build(build(entry.config, {}, "model"), SPEC)


@pytest.mark.parametrize("name", MODELS.names())
def test_train_step(benchmark, name: str) -> None:
    model = make(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = synthetic_batch(SPEC, BATCH, torch.Generator().manual_seed(0))

    def step() -> float:
        loss = -model(x).elbo.mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    assert torch.isfinite(torch.tensor(benchmark(step)))


@pytest.mark.parametrize("name", MODELS.names())
def test_eval_step(benchmark, name: str) -> None:
    model = make(name).eval()
    x = synthetic_batch(SPEC, BATCH, torch.Generator().manual_seed(0))

    @torch.no_grad()
    def forward() -> torch.Tensor:
        return model(x).elbo

    assert benchmark(forward).shape == (BATCH,)
