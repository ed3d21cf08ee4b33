"""Weights & Biases logging that never blocks a run.

`auto` honours $WANDB_MODE when set, otherwise goes online only when
credentials exist (env or ~/.netrc), else offline. An online start that fails
(no network) falls back to offline with a warning, so a run never hangs on W&B.
Metric names are exactly those of metrics.json.
"""

from __future__ import annotations

import math
import netrc
import os
import warnings
from pathlib import Path
from typing import Any

import wandb

INIT_TIMEOUT_S = 30


def has_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env in ("online", "offline", "disabled"):
        return env
    return "online" if has_credentials() else "offline"


class Tracker:
    """A W&B run on the main process; a no-op elsewhere or when disabled."""

    def __init__(
        self,
        mode: str,
        project: str,
        entity: str | None,
        run_dir: Path,
        run_id: str,
        config: dict[str, Any],
        enabled: bool,
    ):
        self.mode = resolve_mode(mode) if enabled else "disabled"
        self.run = None
        if self.mode == "disabled":
            return
        kwargs = dict(
            project=project,
            entity=entity,
            dir=str(run_dir),
            name=run_id,
            config=config,
            reinit="finish_previous",
        )
        try:
            self.run = wandb.init(mode=self.mode, settings=self._settings(), **kwargs)
        except Exception as err:
            if self.mode != "online":
                raise
            warnings.warn(f"W&B online start failed ({err}); logging offline instead", stacklevel=2)
            self.mode = "offline"
            self.run = wandb.init(mode="offline", settings=self._settings(), **kwargs)

    @staticmethod
    def _settings() -> wandb.Settings:
        return wandb.Settings(
            silent=True, init_timeout=INIT_TIMEOUT_S, x_disable_stats=True, console="off"
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if _loggable(v)}, step=step)

    def log_figures(self, figures: dict[str, Path], step: int) -> None:
        if self.run is not None and figures:
            self.run.log(
                {f"figures/{name}": wandb.Image(str(path)) for name, path in figures.items()},
                step=step,
            )

    def summarise(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in metrics.items() if _loggable(v)})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None


def _loggable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
