"""The latent contract takes any posterior: a model whose groups are not diagonal Gaussians
(tests/flow_plugin.py: a Laplace group and a linear inverse-autoregressive flow step) passes
the shared maths checks, and trains, evaluates and ranks through `hvbench run` as a plug-in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from hvbench.latents import hierarchy_output
from hvbench.leaderboard import build, load_runs
from hvbench.results import folder_of
from hvbench.task import TaskSpec
from tests.conftest import REPO
from tests.flow_plugin import NAME, FlowVAE, FlowVAEConfig
from tests.model_checks import (
    check_gradients_reach_every_group_and_parameter,
    check_iwae_brackets_elbo,
    check_kl_terms,
)

# `python -m hvbench` with the plug-in registered first, as an installed plug-in would be
WITH_PLUGIN = "from tests.flow_plugin import register; register(); from hvbench.cli import main; main()"


def test_a_flow_and_a_laplace_group_pass_the_model_checks() -> None:
    torch.manual_seed(0)
    model = FlowVAE(FlowVAEConfig(hidden=16), TaskSpec((1, 8, 8), "gaussian"))
    x = torch.rand(6, 1, 8, 8)
    px_params, groups = model.hierarchy(x)
    out = hierarchy_output(model.head, x, px_params, groups)
    # Laplace ‖ Normal has a closed form unit by unit; the full-covariance group has a rate term
    assert out.analytic == {"top": True, "flow": False}
    assert out.kl_units["top"].shape == (6, 2) and out.kl_units["flow"].shape == (6, 1)
    assert out.post_mean["flow"].shape == (6, 3)  # activity reads q's mean, unit by unit
    check_kl_terms(out, groups)
    check_iwae_brackets_elbo(model, x)
    check_gradients_reach_every_group_and_parameter(model, x)


def test_a_plugin_model_with_a_flow_posterior_trains_evaluates_and_ranks(tmp_path: Path) -> None:
    root = tmp_path / "results"
    config = tmp_path / "flow.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": {"name": "toy-corr", "n_train": 256, "n_val": 64, "n_test": 128},
                "model": {"name": NAME, "hidden": 16},
                "train": {"steps": 6, "batch_size": 32, "eval_every": 6, "log_every": 3,
                          "val_examples": 64},
                "eval": {"batch_size": 128, "iwae_k": 4, "iwae_examples": 16, "au_samples": 2},
                "wandb": {"mode": "disabled"},
                "output": {"root": str(root), "run_id": "flow"},
            }
        )
    )
    done = subprocess.run(
        [sys.executable, "-c", WITH_PLUGIN, "run", "--config", str(config)],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    record = json.loads((root / "runs" / "toy-corr" / NAME / "flow" / "metrics.json").read_text())
    m = record["metrics"]
    assert record["units"]["test"]["flow"]["analytic"] is False
    assert "rate_nats" in record["units"]["test"]["flow"]
    assert m["test/units"] == 5 and "test/rate_nats/flow" in m and "test/kl_nats/top" in m
    assert m["test/kl_collapse_rate"] == m["test/kl_collapse_rate/top"]  # the KL group only
    assert (root / "runs" / "toy-corr" / NAME / "flow" / "figures" / "kl_per_unit.png").is_file()

    (loaded,) = load_runs(root)  # a plug-in's run loads without the plug-in, from its folder
    assert folder_of(loaded) == root / "runs" / "toy-corr" / NAME / "flow"
    runs, groups, _ = build(root)
    assert [(r["model"], r["run_id"]) for r in runs] == [(NAME, "flow")]
    terms = {g["group"]: g["term"] for g in groups}
    assert terms == {"top": "KL", "flow": "rate"}
    board = (root / "leaderboard.md").read_text()
    assert NAME in board and "n/a (rate term)" in board
