"""The board over seeds: grouping by config, mean ± sample std, and published cards kept apart."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from hvbench import published
from hvbench.aggregate import Spread, config_hash, flat, over_seeds
from hvbench.config import resolve
from hvbench.errors import UserError


def _row(run_id: str, elbo: float | None, active: str = "3/10", **extra: object) -> dict:
    return {
        "task": "toy-corr",
        "model": "vae",
        "run_id": run_id,
        "split": "test",
        "elbo_nats": elbo,
        "iwae_k": 16,
        "active_units": active,
        "precision": "fp32",
        "steps": 30,
        **extra,
    }


def _config(seed: int, lr: float = 1e-3, run_id: str = "x") -> dict:
    cfg = resolve("toy-corr", "vae", overrides=[f"train.seed={seed}", f"train.lr={lr}"])
    config = cfg.to_dict()
    config["output"]["run_id"] = run_id
    return config


def test_config_hash_ignores_seed_and_bookkeeping_only() -> None:
    base = _config(0)
    assert config_hash(_config(1, run_id="y")) == config_hash(base)
    moved = {**base, "output": {**base["output"], "root": "elsewhere"}, "wandb": {"mode": "x"}}
    assert config_hash(moved) == config_hash(base)
    assert config_hash(_config(0, lr=2e-3)) != config_hash(base)


def test_seeds_of_one_config_become_one_row_with_mean_and_sample_std() -> None:
    rows = [
        _row("a", -10.0, "3/10"),
        _row("b", -12.0, "5/10"),
        _row("c", -5.0, "9/10"),  # another learning rate: a row of its own
    ]
    configs = {
        ("toy-corr", "vae", "a"): _config(0),
        ("toy-corr", "vae", "b"): _config(1),
        ("toy-corr", "vae", "c"): _config(0, lr=2e-3),
    }
    best, pair = over_seeds(rows, configs)
    assert (best["n"], best["runs"], best["elbo_nats"]) == (1, ["c"], -5.0)
    assert pair["n"] == 2 and pair["seeds"] == [0, 1] and pair["runs"] == ["a", "b"]
    assert pair["elbo_nats"] == Spread(-11.0, pytest.approx(math.sqrt(2)))
    assert pair["active_units"] == "4.0 ± 1.4/10"
    assert (pair["precision"], pair["steps"], pair["iwae_k"]) == ("fp32", 30, 16)  # equal: kept


def test_a_metric_one_seed_could_not_compute_is_not_averaged_away() -> None:
    rows = [_row("a", -10.0), _row("b", None)]
    configs = {("toy-corr", "vae", k): _config(i) for i, k in enumerate("ab")}
    (row,) = over_seeds(rows, configs)
    assert row["n"] == 2 and row["elbo_nats"] is None


def test_a_run_without_a_readable_config_stands_alone() -> None:
    rows = [_row("a", -10.0), _row("b", -11.0)]
    assert [r["n"] for r in over_seeds(rows, {})] == [1, 1]


def test_csv_rows_have_the_same_columns() -> None:
    rows = [_row("a", -10.0), _row("b", -12.0), _row("c", -5.0)]
    configs = {
        ("toy-corr", "vae", "a"): _config(0),
        ("toy-corr", "vae", "b"): _config(1),
        ("toy-corr", "vae", "c"): _config(0, lr=2e-3),
    }
    single, pair = flat(over_seeds(rows, configs))
    assert single.keys() == pair.keys()
    assert (single["elbo_nats_mean"], single["elbo_nats_std"]) == (-5.0, None)
    assert pair["elbo_nats_mean"] == -11.0 and pair["seeds"] == "0 1"


def test_published_cards_name_estimator_split_and_source(tmp_path: Path) -> None:
    cards = published.load()
    assert {c["model"].split()[0] for c in cards} >= {"NVAE", "Efficient-VDVAE", "BIVA"}
    assert all(c["task"] == "celeba" and c["unit"] == "bits/dim" for c in cards)
    bad = tmp_path / "cards.yaml"
    bad.write_text("- {task: celeba, model: X, metric: nll_bpd, value: 1.0, unit: bits/dim}\n")
    with pytest.raises(UserError, match="card 1 has no 'estimator'"):
        published.load(bad)
