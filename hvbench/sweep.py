"""Sweeps: a grid of runs (tasks × models × variants × seeds) declared in one YAML file.

Every entry is resolved with the same code as `hvbench run` before the first
run starts, so a typo in the fortieth entry stops the sweep before anything is
trained. Each entry has a run id derived from the sweep's name, its variant and
its seed (task and model are already in the run folder's path), which makes a
sweep re-runnable: a finished run is skipped, an interrupted one resumed with
`hvbench run --resume RUN_DIR`.

Each run is the ordinary `hvbench run` command, launched by `launcher`
(`accelerate launch -m hvbench` for several GPUs). Runs go one after another
here, or one job each through submitit (SLURM, or submitit's local executor):
an existing scheduler, not a queue of our own.

```yaml
name: seeds                       # run ids: <name>[-<variant>]-s<seed>
tasks: [toy-corr, toy-uncorr]
models: [vae, lvae]
seeds: [0, 1, 2]                  # or a count: 3
config: smoke/toy-{model}.yaml    # optional; default configs/<task>/<model>.yaml
set: {train.steps: 500}           # optional; overrides for every run
variants:                         # optional; named override sets, one more axis
  beta1: {}
  beta4: {train.beta: 4}
launcher: [accelerate, launch, -m, hvbench]   # optional; default: this python -m hvbench
executor: {timeout_min: 240, gpus_per_node: 1, slurm_partition: gpu}  # submitit's parameters
```
"""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import string
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from hvbench.config import config_part, configs_dir, load_yaml, read_yaml, resolve
from hvbench.errors import UserError, shown
from hvbench.options import changes_numbers
from hvbench.registry import MODELS, TASKS
from hvbench.results import run_dir_of, run_status

KEYS = ("name", "tasks", "models", "seeds", "config", "set", "variants", "launcher", "executor")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")  # one safe path component (fullmatch)
# A sweep's runs go one after another or one job each; more than this is a typo (a count of
# seeds with extra zeros), refused before a list of that many entries is built.
MAX_RUNS = 10_000
RESUMABLE = ("running", "interrupted")


@dataclass(frozen=True)
class Entry:
    """One run of a sweep."""

    task: str
    model: str
    seed: int
    variant: str | None
    config: Path | None
    overrides: tuple[str, ...]  # --set KEY=VALUE, seed, run id and sweep name included
    run_dir: Path

    @property
    def row(self) -> str:
        """task/model/variant: the board row this entry is one seed of."""
        return f"{self.task}/{self.model}/{self.variant or '-'}"

    @property
    def label(self) -> str:
        variant = f" {self.variant}" if self.variant else ""
        return f"{self.task}/{self.model}{variant} seed {self.seed}"

    def run_args(self) -> list[str]:
        """The `hvbench run` arguments that start this run."""
        args = ["run", "--task", self.task, "--model", self.model]
        if self.config is not None:
            args += ["--config", str(self.config)]
        for text in self.overrides:
            args += ["--set", text]
        return args

    def resume_args(self) -> list[str]:
        return ["run", "--resume", str(self.run_dir)]


@dataclass(frozen=True)
class Sweep:
    name: str
    root: Path  # output.root of every run
    entries: tuple[Entry, ...]
    launcher: tuple[str, ...]
    executor: dict[str, Any]


def load(path: Path, root: str | None = None, given: tuple[str, ...] = ()) -> Sweep:
    """Read a sweep file and resolve every entry; any bad entry is a `UserError` here.
    `given` overrides (`hvbench sweep --set/--wandb`) apply to every run, after the file's."""
    spec = read_yaml(Path(path))
    unknown = sorted(set(spec) - set(KEYS))
    if unknown:
        raise UserError(f"unknown sweep key {unknown[0]!r} in {path}; allowed: {', '.join(KEYS)}")
    name = spec.get("name", Path(path).stem)
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise UserError(
            f"sweep name {shown(name)} must be one path component of at most 100 letters, "
            "digits, '-', '_', '.'"
        )
    tasks, models = _names(spec, "tasks"), _names(spec, "models")
    for task in tasks:
        TASKS.get(task)  # an unknown name is named before its config file is looked for
    for model in models:
        MODELS.get(model)
    seeds = _seeds(spec.get("seeds", [0]))
    shared = _overrides(spec.get("set") or {}, "set")
    variants = spec.get("variants") or {None: {}}
    if not isinstance(variants, dict) or not all(
        v is None or (isinstance(v, str) and NAME.fullmatch(v)) for v in variants
    ):
        raise UserError("sweep key 'variants' must map names (letters, digits, '-', '_') to overrides")
    runs = len(tasks) * len(models) * len(variants) * len(seeds)
    if runs > MAX_RUNS:
        raise UserError(f"sweep {name!r} would start {runs:,} runs; at most {MAX_RUNS:,} per file")
    entries = []
    for task in tasks:
        for model in models:
            config = _config_file(spec.get("config"), task, model)
            for variant, extra in variants.items():
                for seed in seeds:
                    run_id = "-".join([name, *([variant] if variant else []), f"s{seed}"])
                    overrides = [
                        *shared,
                        *_overrides(extra or {}, f"variants.{variant}"),
                        *given,
                        f"train.seed={seed}",
                        f"output.run_id={run_id}",
                        f"output.sweep={name}",
                        *([f"output.root={root}"] if root else []),
                    ]
                    cfg = resolve(task, model, config, overrides)
                    run_dir = run_dir_of(Path(cfg.output.root), task, model, run_id)
                    _check_unchanged(run_dir, cfg.to_dict())
                    entries.append(
                        Entry(task, model, seed, variant, config, tuple(overrides), run_dir)
                    )
    launcher = spec.get("launcher") or [sys.executable, "-m", "hvbench"]
    if not isinstance(launcher, list) or not all(isinstance(a, str) for a in launcher):
        raise UserError(f"sweep key 'launcher' must be a list of strings, got {launcher!r}")
    executor = spec.get("executor") or {}
    if not isinstance(executor, dict):
        raise UserError(f"sweep key 'executor' must be a mapping, got {executor!r}")
    return Sweep(name, Path(cfg.output.root), tuple(entries), tuple(launcher), executor)


def shard(sweep: Sweep, text: str) -> Sweep:
    """The entries I, I+N, I+2N, … of `sweep` for `--shard I/N`: shards are disjoint and together
    cover the sweep, so N sweep processes share one grid (and one results root) safely."""
    match = re.fullmatch(r"([0-9]+)/([0-9]+)", text.strip())
    index, count = (int(match.group(1)), int(match.group(2))) if match else (-1, 0)
    if not 0 <= index < count:
        raise UserError(f"--shard {text!r} must be I/N with 0 <= I < N, e.g. 0/2 or 1/2")
    return replace(sweep, entries=sweep.entries[index::count])


def only(sweep: Sweep, pattern: str) -> Sweep:
    """The entries whose `task/model/variant` matches the glob `pattern` (`--only`), e.g.
    `toy-corr/vae/weak-kl` for one row of a board, `*/dagvae/*` for one model's rows."""
    kept = [e for e in sweep.entries if fnmatch.fnmatchcase(e.row, pattern)]
    if not kept:
        rows = sorted({e.row for e in sweep.entries})
        listed = ", ".join(rows[:12]) + (f", … ({len(rows)} rows)" if len(rows) > 12 else "")
        raise UserError(
            f"--only {shown(pattern)} matches no entry of sweep {sweep.name!r}; its rows: {listed}"
        )
    return replace(sweep, entries=tuple(kept))


def state(run_dir: Path) -> str:
    """new, or the run folder's status (hvbench.results.run_status): finished, failed,
    running, interrupted or unknown. Only running (a run killed mid-way still says so) and
    interrupted ones are resumed; the others are left as they are."""
    return run_status(run_dir) if run_dir.is_dir() else "new"


def plan(sweep: Sweep) -> list[tuple[Entry, str, list[str] | None]]:
    """Each entry with its state and the command that brings it to finished (None: nothing)."""
    out = []
    for entry in sweep.entries:
        now = state(entry.run_dir)
        args = {"new": entry.run_args(), **dict.fromkeys(RESUMABLE, entry.resume_args())}.get(now)
        out.append((entry, now, [*sweep.launcher, *args] if args else None))
    return out


def dry_run(sweep: Sweep, echo: Callable[[str], None] = print) -> None:
    for entry, now, command in plan(sweep):
        if command is None:
            echo(f"# {entry.label}: {now}, not started again ({entry.run_dir})")
        else:
            echo(shlex.join(command))


def run_here(sweep: Sweep, echo: Callable[[str], None] = print) -> dict[str, int]:
    """Run the sweep's pending entries one after another; returns how many ended how.

    A failed run does not stop the sweep (the others still say something); a
    Ctrl-C does, after the run in progress has saved itself.
    """
    counts = {"skipped": 0, "finished": 0, "failed": 0, "interrupted": 0}
    steps = plan(sweep)
    for i, (entry, now, command) in enumerate(steps, 1):
        if command is None:
            counts["skipped"] += 1
            echo(f"[{i}/{len(steps)}] {entry.label}: {now}, skipped")
            continue
        verb = "starting" if now == "new" else f"resuming ({now})"
        echo(f"[{i}/{len(steps)}] {entry.label}: {verb}")
        try:
            code = subprocess.run(command).returncode
        except KeyboardInterrupt:
            echo(f"sweep {sweep.name!r} interrupted at {entry.label}; the same command resumes it")
            raise SystemExit(130) from None
        ended = state(entry.run_dir)  # what the run folder says, whatever the exit status
        counts[ended if ended in ("finished", "interrupted") else "failed"] += 1
        if code != 0:
            echo(f"[{i}/{len(steps)}] {entry.label}: {ended}, exit status {code}")
    return counts


def submit(
    sweep: Sweep, cluster: str, folder: Path, wait: bool, echo: Callable[[str], None] = print
) -> list[Any]:
    """One submitit job per pending entry, each the ordinary `hvbench run` command."""
    import submitit

    executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    try:
        executor.update_parameters(name=f"hvbench-{sweep.name}", **sweep.executor)
    except (TypeError, ValueError) as err:
        raise UserError(f"sweep {sweep.name!r}: bad executor parameters: {err}") from None
    jobs = []
    for entry, now, command in plan(sweep):
        if command is None:
            echo(f"{entry.label}: {now}, skipped")
            continue
        job = executor.submit(submitit.helpers.CommandFunction(command, cwd=Path.cwd()))
        echo(f"{entry.label}: submitted job {job.job_id} ({shlex.join(command)})")
        jobs.append(job)
    if wait:
        for job in jobs:
            try:
                job.result()
            except Exception as err:  # the job's own log holds the run's error
                echo(f"job {job.job_id} failed: {str(err).strip().splitlines()[-1]}")
    return jobs


def _names(spec: dict[str, Any], key: str) -> list[str]:
    value = spec.get(key)
    if isinstance(value, str):
        value = [value]
    if not value or not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise UserError(f"sweep key {key!r} must be a non-empty list of names, got {shown(value)}")
    seen: set[str] = set()
    for name in value:  # the same runs twice would write one folder and be counted twice
        if name in seen:
            raise UserError(f"sweep key {key!r} names {shown(name)} twice")
        seen.add(name)
    return value


def _seeds(value: Any) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_RUNS:
        return list(range(value))
    if (
        isinstance(value, list)
        and value
        and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
        and len(set(value)) == len(value)
    ):
        return value
    raise UserError(
        f"sweep key 'seeds' must be a count in [1, {MAX_RUNS:,}] or a list of distinct ints, "
        f"got {shown(value)}"
    )


def _overrides(mapping: Any, where: str) -> list[str]:
    """{'train.steps': 500} → ['train.steps=500'], values written so `--set` reads them back."""
    if not isinstance(mapping, dict):
        raise UserError(f"sweep key {where!r} must map config keys to values, got {shown(mapping)}")
    return [f"{key}={_scalar(value)}" for key, value in mapping.items()]


def _scalar(value: Any) -> str:
    if isinstance(value, str) and load_yaml(value or "''") == value:
        return value
    return json.dumps(value)  # JSON is YAML: lists, numbers, booleans, null, quoted strings


def _config_file(pattern: Any, task: str, model: str) -> Path | None:
    if pattern is None:
        return None
    if not isinstance(pattern, str):
        raise UserError(f"sweep key 'config' must be a path pattern, got {shown(pattern)}")
    text = _fill(pattern, task, model)
    shipped = configs_dir() / text
    return shipped if not Path(text).is_absolute() and shipped.is_file() else Path(text)


def _fill(pattern: str, task: str, model: str) -> str:
    """`pattern` with {task} and {model} filled in. Only those two fields: str.format would
    also index and read attributes of them (`{task.__class__}`) and raise on any other."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(pattern)]
    except ValueError as err:
        raise UserError(
            f"sweep key 'config' {shown(pattern)} is not a path pattern ({err}); "
            "write {task} and {model}, and {{ or }} for a brace"
        ) from None
    bad = [field for field in fields if field is not None and field not in ("task", "model")]
    if bad:
        raise UserError(
            f"sweep key 'config' {shown(pattern)} has the field {{{shown(bad[0])[1:-1]}}}; "
            "choose from: {task}, {model}"
        )
    return pattern.format(task=task, model=model)


def _check_unchanged(run_dir: Path, wanted: dict[str, Any]) -> None:
    """Refuse to skip or resume a run whose saved config no longer matches the sweep's entry."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = load_yaml(saved_path.read_text()) or {}
    except yaml.YAMLError:
        return  # unreadable: the run itself will say so when resumed
    if isinstance(saved, dict):  # where and how a run is recorded may differ, nothing else
        saved = config_part(saved, changes_numbers, older_match=False)
        wanted = config_part(wanted, changes_numbers, older_match=False)
    differences = _differences(saved, wanted)
    if differences:
        key, old, new = differences[0]
        raise UserError(
            f"{run_dir} was run with {key}={old!r} but the sweep now asks for {new!r}; "
            "give the sweep a new name, or remove that run folder"
        )


def _differences(saved: Any, wanted: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Keys present in both configs whose values differ."""
    if not (isinstance(saved, dict) and isinstance(wanted, dict)):
        same = _plain(saved) == _plain(wanted)
        return [] if same else [(prefix, saved, wanted)]
    out = []
    for key in saved.keys() & wanted.keys():
        out += _differences(saved[key], wanted[key], f"{prefix}.{key}" if prefix else key)
    return sorted(out, key=lambda d: d[0])


def _plain(value: Any) -> Any:
    """A config value as YAML gives it back: tuples as lists, at any depth (a DAG's nodes are
    a tuple of mappings whose parents are tuples; config.yaml holds lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value
