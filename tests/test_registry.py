"""Registries: discoverable names, refused duplicates, close-match hints."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from hvbench.errors import UserError
from hvbench.registry import MODELS, TASKS, Registry


def test_builtins_are_registered() -> None:
    assert {"toy-corr", "toy-uncorr"} <= set(TASKS.names())
    assert "vae" in MODELS.names()
    assert all(e.description for e in TASKS.entries() + MODELS.entries())


def test_duplicate_names_are_refused() -> None:
    registry = Registry("thing", (), "hvbench.test-none")

    @dataclass(frozen=True)
    class Cfg:
        pass

    registry.register("a", config=Cfg, description="first")(lambda cfg: None)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("a", config=Cfg, description="second")(lambda cfg: None)


def test_unknown_name_suggests_close_match() -> None:
    with pytest.raises(UserError, match=r"did you mean 'vae'\?"):
        MODELS.get("vaee")
