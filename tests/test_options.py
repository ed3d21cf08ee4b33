"""What a config field is, declared once on the field: every rule derived from it follows it.

The config hash (seeds of one configuration), the checkpoint fingerprint, what `--resume` and
`hvbench eval` may change, what a sweep may find changed in a run it skips or resumes, the
range checks and `hvbench list` all read the declaration (`hvbench/options.py`); changing one
field's declaration must move every one of them, with no list to edit beside it.
"""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest

from hvbench import sweep
from hvbench.aggregate import config_hash
from hvbench.checkpoint import fingerprint
from hvbench.config import TrainConfig, resolve
from hvbench.errors import UserError
from hvbench.listing import option_rows
from hvbench.options import AT_LEAST_0, KEY, Option, may_reevaluate
from hvbench.results import save_config
from hvbench.run import RESUME_SAFE, saved_config


def _declare(monkeypatch: pytest.MonkeyPatch, cls: type, name: str, what: Option) -> None:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    monkeypatch.setattr(field, "metadata", types.MappingProxyType({KEY: what}))


def _run_folder(tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save_config(run_dir, resolve("toy-corr", "vae").to_dict())
    return run_dir


def test_one_declaration_moves_hash_fingerprint_resume_and_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _run_folder(tmp_path)
    base = resolve("toy-corr", "vae").to_dict()
    other = resolve("toy-corr", "vae", overrides=["train.log_every=7"]).to_dict()
    # as shipped, train.log_every counts as changing the weights (the safe default)
    assert config_hash(other) != config_hash(base)
    assert fingerprint(other) != fingerprint(base)
    with pytest.raises(UserError, match=r"--resume cannot change train\.log_every"):
        saved_config(run_dir, ["train.log_every=7"], RESUME_SAFE, "--resume")
    with pytest.raises(UserError, match=r"was run with train\.log_every=100 but the sweep now asks for 7"):
        sweep._check_unchanged(run_dir, other)  # a sweep would not skip or resume it
    with pytest.raises(UserError, match=r"'train\.log_every' must be an integer >= 1, got 0"):
        resolve("toy-corr", "vae", overrides=["train.log_every=0"])
    (row,) = [r for r in option_rows(TrainConfig) if r[0] == "log_every"]
    assert row[3] == "must be an integer >= 1"  # `hvbench list train` shows the declaration

    _declare(
        monkeypatch, TrainConfig, "log_every", Option(affects="nothing", resume=True, range=AT_LEAST_0)
    )
    assert config_hash(other) == config_hash(base)
    assert fingerprint(other) == fingerprint(base)
    assert saved_config(run_dir, ["train.log_every=7"], RESUME_SAFE, "--resume").train.log_every == 7
    sweep._check_unchanged(run_dir, other)
    assert resolve("toy-corr", "vae", overrides=["train.log_every=0"]).train.log_every == 0
    (row,) = [r for r in option_rows(TrainConfig) if r[0] == "log_every"]
    assert row[3] == "must be an integer >= 0; changes no number (--resume may change it)"


def test_a_field_declared_as_a_score_is_what_hvbench_eval_may_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = _run_folder(tmp_path)
    with pytest.raises(UserError, match=r"hvbench eval may change: eval\.\*$"):
        saved_config(run_dir, ["train.val_examples=64"], may_reevaluate, "hvbench eval")
    _declare(monkeypatch, TrainConfig, "val_examples", Option(affects="scores"))
    cfg = saved_config(run_dir, ["train.val_examples=64"], may_reevaluate, "hvbench eval")
    assert cfg.train.val_examples == 64
    base = resolve("toy-corr", "vae").to_dict()
    other = resolve("toy-corr", "vae", overrides=["train.val_examples=64"]).to_dict()
    assert fingerprint(other) == fingerprint(base)  # a score: not in the weights' fingerprint
    assert config_hash(other) != config_hash(base)  # but another configuration's numbers


def test_a_field_added_later_matches_records_from_before_it_at_its_absent_value() -> None:
    new = resolve("toy-corr", "vae").to_dict()
    old = {**new, "train": {k: v for k, v in new["train"].items() if k != "ema_rate"}}
    assert fingerprint(new) == fingerprint(old) and config_hash(new) == config_hash(old)
    averaged = resolve("toy-corr", "vae", overrides=["train.ema_rate=0.9"]).to_dict()
    assert fingerprint(averaged) != fingerprint(old) and config_hash(averaged) != config_hash(old)



def test_a_sweep_still_sees_a_field_added_later_change(tmp_path: Path) -> None:
    run_dir = _run_folder(tmp_path)  # saved with train.ema_rate: 0.0
    averaged = resolve("toy-corr", "vae", overrides=["train.ema_rate=0.9"]).to_dict()
    with pytest.raises(UserError, match=r"was run with train\.ema_rate=0\.0"):
        sweep._check_unchanged(run_dir, averaged)


def test_only_a_field_that_changes_nothing_may_change_on_resume() -> None:
    with pytest.raises(ValueError, match="only a field that affects nothing"):
        Option(affects="scores", resume=True)
