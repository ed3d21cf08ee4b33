"""`train.ema_rate`: the weights' moving average is what an EMA run scores and saves, it
survives a SIGKILL and `--resume` bit for bit, and it changes a run's numbers only through the
weights (a rate whose average equals the raw weights gives the raw run's numbers exactly)."""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hvbench.checkpoint import EMA_FILE, fingerprint
from hvbench.config import resolve
from hvbench.ema import EMA
from hvbench.errors import UserError
from tests.conftest import ONE_THREAD
from tests.conftest import SMOKE_VAE as SMOKE
from tests.test_resume import (
    hvbench,
    in_process,
    kill_tree,
    measured,
    outcome,
    status,
    wait_for_checkpoint,
)

STEPS = 40
SETS = ["train.steps=40", "train.checkpoint_every=2", "output.figures=false"]


def run_args(run_id: str, rate: float, root: Path) -> list[str]:
    sets = [*SETS, f"train.ema_rate={rate}", f"output.run_id={run_id}", f"output.root={root}"]
    return ["run", "--config", SMOKE, *(arg for s in sets for arg in ("--set", s))]


def run_dir(root: Path, run_id: str) -> Path:
    return root / "runs" / "toy-corr" / "vae" / run_id


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three uninterrupted runs: raw weights, an average of 0.9, and a rate of 1e-20 (1 − rate
    rounds to 1, so the average is the raw weights exactly)."""
    root = tmp_path_factory.mktemp("ema") / "results"
    for run_id, rate in (("raw", 0.0), ("ema", 0.9), ("same", 1e-20)):
        in_process(*run_args(run_id, rate, root))
    return root


def test_an_ema_run_scores_and_saves_the_average(root: Path) -> None:
    ema, raw = run_dir(root, "ema"), run_dir(root, "raw")
    assert json.loads((ema / "metrics.json").read_text())["run"]["weights"] == "ema"
    assert json.loads((raw / "metrics.json").read_text())["run"]["weights"] == "raw"
    final = ema / "checkpoints" / f"step-{STEPS:08d}"
    average, last = load_file(str(final / EMA_FILE)), load_file(str(final / "model.safetensors"))
    saved = load_file(str(ema / "model.safetensors"))
    assert saved.keys() == average.keys()
    assert all(torch.equal(saved[k], average[k]) for k in saved)
    assert any(not torch.equal(average[k], last[k]) for k in last)  # it is an average
    assert all(v.dtype == torch.float32 for v in average.values())
    assert not (raw / "checkpoints" / f"step-{STEPS:08d}" / EMA_FILE).exists()
    scored = json.loads((ema / "metrics.json").read_text())["metrics"]
    unaveraged = json.loads((raw / "metrics.json").read_text())["metrics"]
    # the same training (the average draws no random numbers), other weights scored
    assert scored["test/elbo_nats"] != unaveraged["test/elbo_nats"]


def test_ema_changes_the_numbers_only_through_the_weights(root: Path) -> None:
    same, raw = run_dir(root, "same"), run_dir(root, "raw")
    assert outcome(same) == outcome(raw)  # every metric, per-unit record and weight byte
    assert json.loads((same / "metrics.json").read_text())["run"]["weights"] == "ema"


def test_sigkill_then_resume_with_ema_is_identical(root: Path) -> None:
    step = random.randrange(2, STEPS)
    killed = run_dir(root, "killed")
    proc = subprocess.Popen(
        hvbench(1, *run_args("killed", 0.9, root)),
        env={**os.environ, **ONE_THREAD},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_checkpoint(proc, killed, step)
    assert proc.poll() is None, f"the run ended before step {step}: {proc.stderr.read()[-2000:]}"
    kill_tree(proc)
    assert status(killed)["status"] == "running"
    in_process("run", "--resume", str(killed))
    assert outcome(killed) == outcome(run_dir(root, "ema")), f"killed after checkpoint {step}"


def test_eval_of_an_ema_run_gives_its_numbers_back(root: Path) -> None:
    ema = run_dir(root, "ema")
    in_process("eval", str(ema))
    first = json.loads((ema / "metrics.json").read_text())
    again = json.loads(sorted(ema.glob("metrics.v*.json"))[-1].read_text())
    assert measured(again) == measured(first)


def test_the_average_is_vdvae_s_update_kept_in_fp32() -> None:
    model = torch.nn.Linear(3, 2).to(torch.bfloat16)
    start = [p.detach().float().clone() for p in model.parameters()]
    ema = EMA(model, 0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    for average, before, p in zip(ema.average, start, model.parameters(), strict=True):
        assert average.dtype == torch.float32
        assert torch.allclose(average, 0.75 * before + 0.25 * p.float())
    with pytest.raises(UserError, match="another model"):
        ema.load_state_dict({"weight": ema.average[0]}, "checkpoint X")


def test_checkpoints_of_runs_without_an_average_keep_their_fingerprint() -> None:
    """Runs checkpointed before train.ema_rate existed resume: the key at 0 is left out."""
    cfg = resolve(config_file=Path(SMOKE)).to_dict()
    before = {**cfg, "train": {k: v for k, v in cfg["train"].items() if k != "ema_rate"}}
    assert fingerprint(cfg) == fingerprint(before)
    assert fingerprint({**cfg, "train": {**cfg["train"], "ema_rate": 0.9}}) != fingerprint(cfg)


def test_eval_of_an_ema_checkpoint_scores_its_average(root: Path) -> None:
    """`hvbench eval --checkpoint` of the final step scores that checkpoint's average, with its
    RNGs: the run's own numbers come back (the raw weights would give others)."""
    ema = run_dir(root, "ema")
    in_process("eval", str(ema), "--checkpoint", str(STEPS))
    step = measured(json.loads((ema / f"metrics.step-{STEPS:08d}.json").read_text()))
    final = measured(json.loads((ema / "metrics.json").read_text()))
    assert step == {k: v for k, v in final.items() if not k.startswith("train/")}
    record = json.loads((ema / f"metrics.step-{STEPS:08d}.json").read_text())
    assert record["run"]["weights"] == "ema"
