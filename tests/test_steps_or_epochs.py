"""A run's length is given once: a step count asked for while the config counts epochs is an
error, not silently ignored (a short CPU run of a 10-epoch dSprites config trains for days)."""

from __future__ import annotations

import pytest

from hvbench.config import resolve
from hvbench.errors import UserError


def test_steps_asked_for_while_the_config_counts_epochs_is_refused() -> None:
    with pytest.raises(UserError, match=r"train.epochs=10.*--set train.epochs=null"):
        resolve("dsprites", "vae", overrides=["train.steps=800"])


def test_steps_with_epochs_cleared_or_on_a_steps_config_is_taken() -> None:
    cfg = resolve("dsprites", "vae", overrides=["train.epochs=null", "train.steps=800"])
    assert (cfg.train.epochs, cfg.train.steps) == (None, 800)
    assert resolve("toy-corr", "vae", overrides=["train.steps=7"]).train.steps == 7
