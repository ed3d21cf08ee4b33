"""What a run logs, kept twice: in the run folder (`history.jsonl`) and in Weights & Biases.

The run folder's copy is what the HTML report draws curves from, so a run
compared on disk needs no W&B account. W&B is never allowed to block a run:
`auto` honours $WANDB_MODE when set, otherwise goes online only when
credentials exist (env or ~/.netrc), else offline; an online start that fails
(no network) falls back to offline with a warning.

In W&B a run is grouped as its users compare runs: `group` = the sweep (or the
task), `job_type` = the model, tags for precision, device kind and config name.
Every curve shares one step axis (`step`, declared with `define_metric`; the
validation ELBO's summary is its best value). The final test and perf numbers
are in the summary only, under the same names as metrics.json, never in the
history (where each would be a one-point chart); the figures are logged once,
as media. `wandb.log_model: true` adds the final weights as a model artifact.

A resumed run continues its W&B run: the W&B id is drawn once, kept in the run
folder (`wandb-id`), and handed back with `resume="allow"`; offline, each resume
is another folder of the same id, which `wandb sync` uploads in order as one run.
"""

from __future__ import annotations

import json
import math
import netrc
import os
import re
import secrets
import string
import warnings
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import torch

from hvbench.atomic import write_text
from hvbench.config import PRECISION_NAMES, RunConfig

INIT_TIMEOUT_S = 30
STEP = "step"  # the x axis every logged curve shares
HISTORY = "history.jsonl"
WANDB_ID = "wandb-id"  # the run's W&B id, so a resume logs into the same W&B run
_WANDB_ID_CHARS = re.compile(r"[a-z0-9_-]{1,64}")
MAX_TAG = 64  # W&B refuses longer tags
_ARTIFACT_CHARS = re.compile(r"[^A-Za-z0-9_.-]")  # what W&B allows in an artifact's name
# the curves whose summary is their best value, not their last (the runs table sorts by it)
SUMMARIES = {"val/elbo_nats": "max", "train/loss": "min"}


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


def device_kind(device: torch.device) -> str:
    """`cpu`, or the accelerator's model (`NVIDIA H200`): what people filter runs by."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return device.type


def group_name(cfg: RunConfig) -> str:
    return cfg.wandb.group or cfg.output.sweep or cfg.task_name


def wandb_id(run_dir: Path) -> str:
    """The run's W&B id: the one its first start drew, else a new one, kept for resumes.

    Not derived from the run id: sweep run ids repeat across tasks and models in one project,
    and W&B ids allow fewer characters than run folders do.
    """
    path = Path(run_dir) / WANDB_ID
    if path.is_file():
        stored = path.read_text().strip()
        if _WANDB_ID_CHARS.fullmatch(stored):
            return stored
    new = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    write_text(path, new + "\n")
    return new


def init_kwargs(cfg: RunConfig, run_dir: Path, run_id: str, device: str) -> dict[str, Any]:
    """The arguments of `wandb.init` for one run (tested offline; nothing here needs a network)."""
    tags = [PRECISION_NAMES[cfg.train.precision], device, cfg.output.config_name or "defaults"]
    tags += list(cfg.wandb.tags)
    return {
        "project": cfg.wandb.project,
        "entity": cfg.wandb.entity,
        "dir": str(run_dir),
        "name": cfg.wandb.name or run_id,
        "notes": cfg.wandb.notes,
        "id": wandb_id(run_dir),
        "resume": "allow",
        "group": group_name(cfg),
        "job_type": cfg.model_name,
        "tags": list(dict.fromkeys(tag[:MAX_TAG] for tag in tags)),
        "config": cfg.to_dict(),
        "reinit": "finish_previous",
    }


if TYPE_CHECKING:
    import wandb


def _wandb() -> ModuleType:
    """W&B, imported where a run logs to it: a run with W&B disabled (every test and smoke
    run) never pays for its import."""
    import wandb

    return wandb


class Tracker:
    """Logs of one run on the main process: history.jsonl always, W&B unless disabled.

    A no-op on the other processes (`enabled` False).
    """

    def __init__(
        self, cfg: RunConfig, run_dir: Path, run_id: str, device: torch.device, enabled: bool
    ):
        self.history = Path(run_dir) / HISTORY if enabled else None
        self.mode = resolve_mode(cfg.wandb.mode) if enabled else "disabled"
        self.run = None
        if self.mode == "disabled":
            return
        kwargs = init_kwargs(cfg, run_dir, run_id, device_kind(device))
        try:
            self.run = _wandb().init(mode=self.mode, settings=self._settings(), **kwargs)
        except Exception as err:
            if self.mode != "online":
                raise
            warnings.warn(f"W&B online start failed ({err}); logging offline instead", stacklevel=2)
            self.mode = "offline"
            self.run = _wandb().init(mode="offline", settings=self._settings(), **kwargs)
        self.run.define_metric(STEP)
        self.run.define_metric("*", step_metric=STEP)
        for name, summary in SUMMARIES.items():  # the runs table shows the best, not the last
            self.run.define_metric(name, step_metric=STEP, summary=summary)

    @staticmethod
    def _settings() -> wandb.Settings:
        return _wandb().Settings(
            silent=True, init_timeout=INIT_TIMEOUT_S, x_disable_stats=True, console="off"
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.history is not None:
            row = {STEP: step, **{k: _finite_or_none(v) for k, v in metrics.items()}}
            with open(self.history, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.run is not None:
            self.run.log({**{k: v for k, v in metrics.items() if _loggable(v)}, STEP: step})

    def final(self, metrics: dict[str, Any], figures: dict[str, Path], step: int) -> None:
        """The run's result: one row of history.jsonl; in W&B the numbers go to the summary
        only (one value each, not a one-point chart) and the figures are logged once, as
        media at the last step."""
        if self.history is not None:
            row = {STEP: step, **{k: _finite_or_none(v) for k, v in metrics.items()}}
            with open(self.history, "a") as f:
                f.write(json.dumps(row) + "\n")
        if self.run is None:
            return
        if figures:
            images = {f"figures/{name}": _wandb().Image(str(path)) for name, path in figures.items()}
            self.run.log({**images, STEP: step})
        self.run.summary.update({k: v for k, v in metrics.items() if _loggable(v)})

    def log_model(self, weights: Path, metadata: dict[str, Any]) -> None:
        """The final weights as a W&B model artifact (`wandb.log_model`, off by default:
        every run would upload its weights)."""
        if self.run is None:
            return
        artifact = _wandb().Artifact(
            _ARTIFACT_CHARS.sub("-", f"{self.run.job_type}-{self.run.name}")[:128],
            type="model",
            metadata={k: v for k, v in metadata.items() if _loggable(v) or isinstance(v, str)},
        )
        artifact.add_file(str(weights))
        self.run.log_artifact(artifact, aliases=["final"])

    def where(self) -> str | None:
        """Where the W&B run went: its URL online; offline, its folder and the upload command
        (the run's console output is off, so W&B itself says nothing)."""
        if self.run is None:
            return None
        if self.mode == "offline":
            folder = self.run.settings.sync_dir
            return f"W&B offline run {folder}; upload it with: wandb sync {folder}"
        return f"W&B run {self.run.url}"

    def finish(self, exit_code: int = 0) -> str | None:
        """End the W&B run; returns `where` it went (None without one)."""
        if self.run is None:
            return None
        where = self.where()
        self.run.finish(exit_code=exit_code)
        self.run = None
        return where


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    """A run's logged rows, one per step in step order.

    Rows of one step are merged, later lines winning: a resumed run logs again
    the steps between its last checkpoint and the interruption. A line cut
    short by a kill is skipped.
    """
    by_step: dict[int, dict[str, Any]] = {}
    path = Path(run_dir) / HISTORY
    if not path.is_file():
        return []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get(STEP), int):
            by_step.setdefault(row[STEP], {}).update(row)
    return [by_step[step] for step in sorted(by_step)]


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _loggable(value: Any) -> bool:
    return isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value))
