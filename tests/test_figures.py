"""The run's figures: a collapsed unit draws, and a figure matplotlib refuses costs no other."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hvbench import figures
from tests.conftest import SMOKE_VAE, in_process


def test_a_collapsed_unit_is_a_spike_not_an_error(tmp_path: Path) -> None:
    """Posterior means equal for every image up to one float32 step (a collapsed unit: numpy
    cannot cut 40 bins out of that range) still draw, beside a unit that moves."""
    flat = torch.full((200, 1), 0.25)
    flat[0] = torch.nextafter(torch.tensor(0.25), torch.tensor(1.0))
    means = torch.cat([flat, torch.randn(200, 1)], 1)
    path = figures.latent_histograms({"z": means, "w": torch.zeros(200, 2)}, tmp_path / "h.png")
    assert path.stat().st_size > 0


def test_a_figure_matplotlib_refuses_costs_only_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(*args: object, **kwargs: object) -> Path:
        raise ValueError("Axis limits cannot be NaN or Inf")

    monkeypatch.setattr(figures, "kl_per_unit", refused)
    root = tmp_path / "results"
    in_process("run", "--config", SMOKE_VAE, "--set", f"output.root={root}", "--set", "output.run_id=r")
    warnings = capsys.readouterr().err.strip().splitlines()
    assert "hvbench: warning: figure kl_per_unit not drawn: Axis limits cannot be NaN or Inf" in warnings
    drawn = {p.name for p in (root / "runs" / "toy-corr" / "vae" / "r" / "figures").iterdir()}
    assert drawn == {
        "reconstructions.png", "samples.png", "latent_histograms.png", "training_curves.png",
        "factor_unit_test.png",
    }  # fmt: skip
