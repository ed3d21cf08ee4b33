"""W&B: what a run hands to the real wandb (offline, no network), captured at the call, and
what the offline run's own log holds when read back.

The fixture wraps the real `wandb.init`, `Run.log`, `Run.define_metric` and the
summary's `update`: each call is recorded and then passes through to wandb, so
the run is a real offline run.
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stdout
from pathlib import Path
from typing import Any

import pytest
import torch
import wandb
from wandb.sdk.wandb_run import Run
from wandb.sdk.wandb_summary import Summary

from hvbench.config import resolve
from hvbench.run import execute
from hvbench.tracking import Tracker, init_kwargs, read_history, resolve_mode
from tests.conftest import CONFIGS
from tests.wandb_log import history_and_summary, records

SMOKE = CONFIGS / "smoke" / "toy-vae.yaml"


@pytest.fixture
def wandb_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    calls: dict[str, list[Any]] = {"init": [], "log": [], "define_metric": [], "summary": []}

    def record(name: str, real: Any, pick: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls[name].append(pick(*args, **kwargs))
            return real(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(wandb, "init", record("init", wandb.init, lambda **kw: kw))
    monkeypatch.setattr(Run, "log", record("log", Run.log, lambda self, data, **kw: dict(data)))
    monkeypatch.setattr(
        Run,
        "define_metric",
        record("define_metric", Run.define_metric, lambda self, name, **kw: (name, kw)),
    )
    monkeypatch.setattr(
        Summary, "update", record("summary", Summary.update, lambda self, d: dict(d))
    )
    return calls


def test_offline_run_hands_wandb_what_metrics_json_holds(
    tmp_path: Path, wandb_calls: dict[str, list[Any]]
) -> None:
    cfg = resolve(
        config_file=SMOKE,
        overrides=[
            "wandb.mode=offline",
            f"output.root={tmp_path / 'results'}",
            "output.sweep=smoke",
        ],
    )
    run_dir = execute(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]

    (init,) = wandb_calls["init"]
    assert init["mode"] == "offline" and init["name"] == run_dir.name
    assert (init["group"], init["job_type"]) == ("smoke", "vae")
    assert init["tags"] == ["fp32", "cpu", "smoke/toy-vae"]
    assert init["config"]["train"]["seed"] == 0 and init["config"]["output"]["sweep"] == "smoke"

    assert ("*", {"step_metric": "step"}) in wandb_calls["define_metric"]
    assert ("val/elbo_nats", {"step_metric": "step", "summary": "max"}) in wandb_calls["define_metric"]
    rows = wandb_calls["log"]
    assert all("step" in row for row in rows)
    steps = [row["step"] for row in rows if "train/loss" in row]
    assert steps == [10, 15, 20, 30]  # log_every=10 plus the eval_every=15 validation
    assert any("val/elbo_nats" in row for row in rows)
    (figures,) = [row for row in rows if any(k.startswith("figures/") for k in row)]  # once
    assert "figures/samples" in figures and figures["step"] == 30
    assert all(isinstance(v, wandb.Image) for k, v in figures.items() if k != "step")

    (summary,) = wandb_calls["summary"]
    for key in ("test/elbo_nats", "test/iwae_nats", "test/collapse_rate", "perf/train_images_per_s"):
        assert summary[key] == pytest.approx(metrics[key], rel=1e-9), key
    assert not any(k.startswith(("test/", "perf/")) for row in rows for k in row)

    history = read_history(run_dir)
    assert [row["step"] for row in history if "train/loss" in row] == steps
    assert history[-1]["test/elbo_nats"] == pytest.approx(metrics["test/elbo_nats"])


def test_an_offline_runs_own_log_keeps_test_numbers_in_the_summary_only(tmp_path: Path) -> None:
    """What `wandb sync` would upload, read back from the run's own .wandb file: curves in the
    history, the test and perf numbers only in the summary, the figures once, the model
    artifact when asked for, and the end of the run saying where it went."""
    cfg = resolve(
        config_file=SMOKE,
        overrides=[
            "wandb.mode=offline",
            f"output.root={tmp_path / 'results'}",
            "output.figures=true",
            "wandb.log_model=true",
            "wandb.name=smoke run",
            "train.steps=10",
        ],
    )
    out = io.StringIO()
    with redirect_stdout(out):
        run_dir = execute(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    (log,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    rows, summary = history_and_summary(log)
    keys = {k for row in rows for k in row}
    assert "train/loss" in keys and "val/elbo_nats" in keys
    assert not [k for k in keys if k.startswith(("test/", "perf/"))]
    assert sum(any(k.startswith("figures/samples") for k in row) for row in rows) == 1
    for key in ("test/elbo_nats", "test/conditional_active_units", "perf/train_images_per_s"):
        assert summary[key] == pytest.approx(metrics[key], rel=1e-9), key
    assert set(summary["val/elbo_nats"]) == {"max"}  # the best validation ELBO
    kinds = [r.WhichOneof("record_type") for r in records(log)]
    assert "artifact" in kinds
    (run,) = [r.run for r in records(log) if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "smoke run"
    whole, data = list(records(log)), log.read_bytes()  # read mid-write: what is complete
    for cut in range(8, len(data), len(data) // 40 + 1):
        (tmp_path / "torn.wandb").write_bytes(data[:cut])
        part = list(records(tmp_path / "torn.wandb"))
        assert part == whole[: len(part)], cut

    text = out.getvalue()
    assert text.startswith("hvbench run toy-corr/vae: cpu")
    assert f"record: {run_dir / 'metrics.json'}" in text and "test: ELBO " in text
    assert f"upload it with: wandb sync {log.parent}" in text


def test_init_arguments_group_by_sweep_or_task_and_tag_precision(tmp_path: Path) -> None:
    plain = resolve("toy-corr", "lvae", overrides=["train.precision=bf16"])
    kwargs = init_kwargs(plain, tmp_path, "r1", "NVIDIA H200")
    assert (kwargs["group"], kwargs["job_type"]) == ("toy-corr", "lvae")
    assert kwargs["tags"] == ["bf16", "NVIDIA H200", "toy-corr/lvae"]
    swept = resolve(
        "toy-corr", "lvae", overrides=["output.sweep=seeds", "wandb.tags=[paper]"]
    )
    kwargs = init_kwargs(swept, tmp_path, "r2", "cpu")
    assert kwargs["group"] == "seeds" and kwargs["tags"][-1] == "paper"
    grouped = resolve("toy-corr", "lvae", overrides=["wandb.group=ablation"])
    assert init_kwargs(grouped, tmp_path, "r3", "cpu")["group"] == "ablation"


def test_history_survives_a_resume_and_a_torn_line(tmp_path: Path) -> None:
    cfg = resolve(config_file=SMOKE)  # wandb.mode disabled: only the run folder's history
    tracker = Tracker(cfg, tmp_path, "r", torch.device("cpu"), enabled=True)
    for step in (10, 20, 30):
        tracker.log({"train/loss": float(step)}, step)
    tracker.log({"train/loss": 99.0, "val/elbo_nats": float("nan")}, 20)  # logged again on resume
    with open(tmp_path / "history.jsonl", "a") as f:
        f.write('{"step": 40, "train/lo')  # killed mid-line
    rows = read_history(tmp_path)
    assert [r["step"] for r in rows] == [10, 20, 30]
    assert rows[1] == {"step": 20, "train/loss": 99.0, "val/elbo_nats": None}
    assert Tracker(cfg, tmp_path, "r", torch.device("cpu"), enabled=False).history is None


def test_auto_mode_is_offline_without_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"
