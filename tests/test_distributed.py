"""Multi-process runs: torchrun with 2 CPU processes gives Accelerate a real gloo group."""

from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from hvbench.registry import MODELS
from tests import distributed_eval
from tests.conftest import REPO, torchrun


def _evaluate_every_model_in_two_processes(out: Path, cwd: Path) -> dict:
    command = [*torchrun(2), str(REPO / "tests" / "distributed_eval.py"), str(out)]
    result = subprocess.run(
        command, cwd=cwd, env=os.environ.copy(), capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_every_model_gives_the_same_metrics_from_two_processes_as_from_one(tmp_path: Path) -> None:
    """Same weights, same split: sharding, padding and gathering change nothing but Monte Carlo
    noise. Counts are equal; deterministic numbers (a flat VAE's analytic KL and exact activity)
    agree to float tolerance; sampled bounds within 5 Monte Carlo standard errors."""
    distributed_eval.main(tmp_path / "one.json")  # one process: this one, as a plain run is
    one = json.loads((tmp_path / "one.json").read_text())
    two = _evaluate_every_model_in_two_processes(tmp_path / "two.json", tmp_path)
    assert set(one) == set(two) == set(MODELS.names())
    for name, record in one.items():
        a, b = record["metrics"], two[name]["metrics"]
        assert set(a) == set(b), name
        for k in ("test/examples", "test/units", "test/iwae_examples", "test/iwae_k"):
            assert a[k] == b[k], (name, k)
        for k, se in record["se"].items():
            tolerance = 5 * math.sqrt(2) * se + 1e-3
            assert abs(a[k] - b[k]) <= tolerance, (name, k, a[k], b[k], tolerance)
        uncertain = a["test/uncertain_units"] + b["test/uncertain_units"]
        assert abs(a["test/active_units"] - b["test/active_units"]) <= uncertain, name
    flat_one, flat_two = one["vae"]["metrics"], two["vae"]["metrics"]
    assert flat_one["test/kl_nats/z"] == pytest.approx(flat_two["test/kl_nats/z"], rel=1e-5)
    assert flat_one["test/active_units"] == flat_two["test/active_units"]
    assert flat_one["test/uncertain_units"] == 0  # one exact pass: no Monte Carlo at all
