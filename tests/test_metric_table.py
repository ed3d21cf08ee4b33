"""The one table of metrics: the README's copy is generated from it, and evaluation, the
leaderboard and W&B use no metric name the table does not define."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from hvbench import leaderboard
from hvbench.config import EvalConfig, build
from hvbench.evaluate import evaluate_split
from hvbench.metric_table import BY_NAME, README_BEGIN, README_END, key, readme_block, title
from hvbench.registry import MODELS
from hvbench.task import TaskData, TaskSpec
from tests.conftest import REPO


def test_the_readme_table_is_generated_from_the_metric_table() -> None:
    text = (REPO / "README.md").read_text()
    shown = text[text.index(README_BEGIN) : text.index(README_END) + len(README_END)]
    assert shown == readme_block(), (
        "README's metric table drifted: regenerate it with "
        "python -c \"import pathlib, hvbench.metric_table as t; t.write_readme(pathlib.Path('README.md'))\""
    )


def _name(metric_key: str) -> str:
    """`test/kl_nats/z1` → kl_nats; `perf/test_eval_images_per_s` → <split>_eval_images_per_s."""
    parts = metric_key.split("/")
    if parts[0] == "perf":
        return parts[1].replace("test_", "<split>_", 1)
    return parts[1]


def test_every_key_evaluation_writes_is_in_the_table() -> None:
    torch.manual_seed(0)
    spec = TaskSpec((1, 12, 12), "bernoulli")
    entry = MODELS.get("biva")
    section = {"latents": [4, 3, 2], "filters": 8, "kernels": [3, 3, 3], "strides": [2, 1, 2]}
    model = entry.build(build(entry.config, section, "model"), spec).eval()
    images = torch.randint(0, 2, (60, *spec.shape), dtype=torch.uint8)
    factors = torch.rand(60, 2)
    task = TaskData("t", spec, {"test": images}, "t", ("a", "b"), {"test": factors})
    cfg = EvalConfig(batch_size=30, iwae_k=4, au_samples=2, throughput_warmup=0)
    metrics = evaluate_split(model, task, "test", Accelerator(cpu=True), cfg).metrics
    assert {_name(k) for k in metrics} <= set(BY_NAME)
    assert "test/rate_nats/z1_bu" in metrics and "test/kl_nats/z1_td" in metrics


def test_leaderboard_columns_read_keys_of_the_table() -> None:
    """The per-run columns that are metrics carry the table's names."""
    own = {"task", "model", "run_id", "seed", "split", "eval", "nll_per_dim", "reference_iwae_bpd"}
    own.add("reference")
    own |= {"eval_images_per_s", "device", "precision", "steps", "data_source"}
    for column, _ in leaderboard.COLUMNS:
        assert column in own or column in BY_NAME, column
    assert key("<split>_eval_images_per_s", "val") == "perf/val_eval_images_per_s"


def test_board_and_wandb_report_headers_take_their_arrows_from_the_table() -> None:
    for column, header in leaderboard.COLUMNS:
        name = leaderboard.METRIC_OF.get(column, column)
        arrow = BY_NAME[name].direction if name in BY_NAME else ""
        assert header.endswith(f" {arrow}") if arrow else not header.endswith(("↑", "↓")), column
    assert leaderboard.header("train_images_per_s", "img/s") == "img/s ↑"
    assert title("iwae_k", "k") == "k" and title("collapse_rate", "collapse") == "collapse ↓"


def _record(split_metrics: dict, reference_split: str | None) -> dict:
    return {
        "task": "celeba",
        "model": "vae",
        "run_id": "r",
        "metrics": split_metrics,
        "units": {"test": {"z": {"analytic": True}, "z_bu": {"analytic": False}}},
        "run": {
            "eval_splits": ["val", "test"],
            "reference_split": reference_split,
            "device": "cpu",
            "world_size": 1,
            "precision": "no",
            "steps": 1,
            "data_source": "x",
        },
    }


def test_the_board_shows_iwae_bits_per_dim_on_the_published_split_with_k_and_n() -> None:
    metrics = {"val/iwae_nll_bpd": 2.5, "val/iwae_k": 1000, "val/iwae_examples": 19867}
    metrics |= {"test/elbo_nats": -1.0, "test/iwae_nll_bpd": 2.7}
    (row,) = leaderboard.rows([_record(metrics, "val")])
    assert row["split"] == "test" and row["reference_iwae_bpd"] == 2.5
    assert row["reference"] == "val, k=1000, n=19867"
    (plain,) = leaderboard.rows([_record(metrics, None)])
    assert plain["reference_iwae_bpd"] is None


def test_group_rows_mark_rate_terms_and_their_kl_collapse_as_not_applicable() -> None:
    metrics = {"test/kl_collapse_rate/z": 0.5, "test/kl_collapse_rate/z_bu": float("nan")}
    rows = {r["group"]: r for r in leaderboard.group_rows([_record(metrics, None)])}
    assert rows["z"]["term"] == "KL" and rows["z"]["kl_collapse_rate"] == 0.5
    assert rows["z_bu"]["term"] == "rate" and rows["z_bu"]["kl_collapse_rate"].startswith("n/a")
