"""One benchmark run end to end: config → task → model → train → evaluate → results.

This is the only place that wires the pieces together; each piece stays
testable on its own. Only the main process writes files or talks to W&B.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed
from safetensors import SafetensorError

from hvbench import disentanglement, outcome
from hvbench.atomic import write_atomic, write_json, write_new
from hvbench.checkpoint import (
    EMA_FILE,
    FOLDER,
    Checkpointer,
    checkpoints,
    fingerprint,
    read_rng,
    set_rng,
)
from hvbench.checkpoint import read_state as read_checkpoint_state
from hvbench.config import RunConfig, flatten, key_options, resolve
from hvbench.device import device_name, peak_memory_mb
from hvbench.errors import UserError, shown
from hvbench.evaluate import SplitEvaluation, evaluate_split, mean_elbo
from hvbench.metric_table import key
from hvbench.options import Option, may_reevaluate, may_resume
from hvbench.paths import cache_dir
from hvbench.registry import MODELS, TASKS
from hvbench.results import (
    METRICS_FILE,
    STATUS_FILE,
    MalformedRecord,
    RunFailed,
    RunInterrupted,
    check_writable_root,
    create_run_dir,
    figures_dir,
    hold_run,
    load_metrics,
    metrics_versions,
    new_run_id,
    provenance,
    read_status,
    run_dir_of,
    save_config,
    unwritable,
    write_new_metrics,
    write_status,
)
from hvbench.signals import Terminated, terminate_raises
from hvbench.task import TaskData
from hvbench.tracking import Tracker
from hvbench.train import (
    Interrupted,
    TrainingDiverged,
    TrainResult,
    make_optimizer,
    total_steps,
    train,
    with_speed_options,
)

# What `--resume` may change: the fields declared so (they never change a run's numbers).
RESUME_SAFE = may_resume
WEIGHTS_FILE = "model.safetensors"  # the final weights, for people who only want the model
# Metrics measured while training: a re-evaluation carries them over from the run's record.
TRAINING_METRICS = (key("train_images_per_s"), "train/skipped_steps", "train/overflow_steps")


def execute(cfg: RunConfig) -> Path:
    """Train and evaluate a new (task, model, config, seed); return the run folder."""
    check_writable_root(Path(cfg.output.root))
    if cfg.output.run_id:
        path = run_dir_of(Path(cfg.output.root), cfg.task_name, cfg.model_name, cfg.output.run_id)
        if path.exists():
            raise UserError(f"run folder {path} already exists; choose another output.run_id")
    return _train_and_evaluate(cfg, None)


def resume(run_dir: Path, overrides: list[str]) -> Path:
    """Continue a stopped run from its latest checkpoint, with its saved config: the final
    numbers are those an uninterrupted run would have given."""
    cfg = saved_config(run_dir, overrides, RESUME_SAFE, "--resume")
    status = read_status(run_dir)
    if status["status"] == "finished":
        raise UserError(
            f"run {run_dir} already finished; re-evaluate it with: hvbench eval {run_dir}"
        )
    return _train_and_evaluate(cfg, Path(run_dir))


def saved_config(
    run_dir: Path, overrides: list[str], allowed: Callable[[Option], bool], how: str
) -> RunConfig:
    """A run folder's saved config with `overrides`, refusing any that would change what the
    run's numbers mean (only fields whose declaration `allowed` accepts may change)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run folder (it has no config.yaml)")
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise UserError(f"run folder {run_dir} is not writable")
    saved = resolve(config_file=run_dir / "config.yaml")
    cfg = resolve(config_file=run_dir / "config.yaml", overrides=overrides)
    before, after = flatten(saved.to_dict()), flatten(cfg.to_dict())
    fields = key_options(cfg)
    for path in sorted(set(before) | set(after)):
        field_key = ".".join(path.split(".")[:2])  # a nested value belongs to its field
        if before.get(path) != after.get(path) and not allowed(fields.get(field_key, Option())):
            raise UserError(
                f"{how} cannot change {path} (the run has {before.get(path)!r}, asked "
                f"{after.get(path)!r}): it would change the run's numbers; {how} may change: "
                f"{_keys_named(fields, allowed)}"
            )
    return cfg


def _keys_named(fields: dict[str, Option], allowed: Callable[[Option], bool]) -> str:
    """The keys `allowed` accepts, a section whose every key it accepts as `section.*`."""
    sections: dict[str, list[str]] = {}
    for path in fields:
        sections.setdefault(path.split(".")[0], []).append(path)
    named: list[str] = []
    for section, keys in sections.items():
        accepted = [k for k in keys if allowed(fields[k])]
        named += [f"{section}.*"] if accepted == keys else accepted
    return ", ".join(named) or "nothing"


def _train_and_evaluate(cfg: RunConfig, run_dir: Path | None) -> Path:
    """Train (from the latest checkpoint when `run_dir` is an existing run) and evaluate."""
    started = time.time()
    accelerator = make_accelerator(cfg.train.precision)
    _announce("run", cfg, accelerator)
    set_seed(cfg.train.seed)
    task = load_task(cfg)
    model = build_model(cfg, task)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = make_optimizer(cfg.train.optimizer, model.parameters(), cfg.train.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_seed(cfg.train.seed, device_specific=True)  # each process draws its own noise

    resuming = run_dir is not None
    if run_dir is None:
        run_id = broadcast_object_list([cfg.output.run_id or new_run_id(cfg.train.seed)])[0]
        run_dir = run_dir_of(Path(cfg.output.root), cfg.task_name, cfg.model_name, run_id)
        if accelerator.is_main_process:
            create_run_dir(Path(cfg.output.root), cfg.task_name, cfg.model_name, run_id)
            save_config(run_dir, cfg.to_dict())
    run_id = run_dir.name
    steps = total_steps(cfg.train, len(task.splits["train"]), accelerator.num_processes)
    # a resume refused for bad input leaves status.json as it found it
    status_path = run_dir / STATUS_FILE
    previous = status_path.read_bytes() if resuming and status_path.is_file() else None
    main = accelerator.is_main_process

    def status(state: str, step: int, reason: str | None = None) -> None:
        if main:
            write_status(run_dir, state, step, steps, reason)

    def last_checkpoint() -> int:
        found = checkpoints(run_dir)
        return found[-1][0] if found else 0

    with terminate_raises(), hold_run(run_dir) if main else contextlib.nullcontext():
        accelerator.wait_for_everyone()
        checkpointer = Checkpointer(
            accelerator,
            run_dir,
            cfg.train.keep_checkpoints,
            fingerprint(cfg.to_dict()),
            on_save=lambda step: status("running", step),
        )
        if checkpointer.latest() is not None:
            checkpointer.check(checkpointer.latest())  # a foreign one is refused before any write
        status("running", last_checkpoint())
        tracker: Tracker | None = None
        try:
            tracker = Tracker(cfg, run_dir, run_id, accelerator.device, main)
            result = _train(cfg, task, model, optimizer, accelerator, tracker, checkpointer)
            if result.ema is not None:  # the averaged weights are the ones scored and saved
                result.ema.copy_to(accelerator.unwrap_model(model))
            save_weights(run_dir, accelerator, model)
            evaluations = {
                split: evaluate_split(model, task, split, accelerator, cfg.eval)
                for split in task.eval_splits
            }
            metrics: dict[str, Any] = {
                k: v for e in evaluations.values() for k, v in e.metrics.items()
            }
            metrics.update(
                {
                    key("train_images_per_s"): result.images_per_s,
                    key("parameters"): parameters,
                    key("peak_memory_mb"): peak_memory_mb(accelerator.device),
                    "train/skipped_steps": result.skipped_steps,
                    "train/overflow_steps": result.overflow_steps,
                }
            )
            if main:
                figure_paths = _safe_figures(
                    accelerator.unwrap_model(model),
                    task,
                    evaluations,
                    result.history,
                    figures_dir(run_dir / METRICS_FILE),
                    cfg,
                )
                record = _record(
                    cfg, task, accelerator, evaluations, metrics, run_id, result.steps, started
                )
                write_json(run_dir / METRICS_FILE, record)
                tracker.final(metrics, figure_paths, result.steps)
                if cfg.wandb.log_model:
                    tracker.log_model(run_dir / WEIGHTS_FILE, record["metrics"])
            status("finished", steps)
            wandb_where = tracker.finish()
        except BaseException as err:
            if tracker is not None:
                tracker.finish(exit_code=1)
            if isinstance(err, UserError) and resuming:
                if main and previous is not None:
                    write_atomic(status_path, lambda f: f.write(previous))
                elif main:
                    status_path.unlink(missing_ok=True)
                raise
            reported = _mark_stopped(err, run_dir, status, last_checkpoint())
            if reported is None:
                raise
            raise reported from None
    accelerator.wait_for_everyone()
    if main:
        print(f"run finished: {run_dir}")
        print("\n".join(outcome.result_lines(record, run_dir / METRICS_FILE, wandb_where)))
    accelerator.end_training()
    return run_dir


def _announce(what: str, cfg: RunConfig, accelerator: Accelerator) -> None:
    """The start line (device, processes, precision, threads) and a launcher warning, once."""
    if accelerator.is_main_process:
        print(outcome.start_line(what, cfg.task_name, cfg.model_name, cfg.train.precision, accelerator))
        warning = outcome.launcher_warning(accelerator.num_processes)
        if warning:
            print(warning, file=sys.stderr)


def _mark_stopped(
    err: BaseException, run_dir: Path, status: Callable[..., None], step: int
) -> Exception | None:
    """Record in status.json how the run stopped; return what the CLI reports in one line, or
    None to let `err` (a bug) reach the CLI's guard. A fault of the machine (an OSError: disk
    full, a lost mount) fails the run with its cause; the checkpoints before it are intact, so
    the run resumes once the cause is gone. The status write itself never raises here: on a
    full disk write_status overwrites status.json in place, and if even that fails, the line
    says so."""
    unsaved: list[str] = []

    def record(state: str, at: int, reason: str) -> None:
        try:
            status(state, at, reason)
        except OSError as failed:
            unsaved.append(f"; status.json not updated ({failed.strerror})")

    if isinstance(err, Interrupted):
        record("interrupted", err.step, f"{signal.Signals(err.signum).name} at step {err.step}")
        return RunInterrupted(run_dir, err.step, err.signum)
    if isinstance(err, (KeyboardInterrupt, Terminated)):  # outside the loop, or a second Ctrl-C
        signum = err.signum if isinstance(err, Terminated) else signal.SIGINT
        name = signal.Signals(signum).name
        record("interrupted", step, f"{name} after the checkpoint of step {step}")
        return RunInterrupted(run_dir, step, signum)
    if isinstance(err, TrainingDiverged):
        record("failed", step, str(err))
        return RunFailed(str(err) + "".join(unsaved), run_dir)
    if isinstance(err, OSError):
        cause = (err.strerror or type(err).__name__) + (f": {err.filename}" if err.filename else "")
        record("failed", step, cause)
        advice = f"; once that is fixed, resume from step {step} with: hvbench run --resume {run_dir}"
        return RunFailed(cause + "".join(unsaved) + advice, run_dir)
    record("failed", step, f"{type(err).__name__}: {shown(str(err))[1:-1]}")
    return None


def _train(
    cfg: RunConfig,
    task: TaskData,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    accelerator: Accelerator,
    tracker: Tracker,
    checkpointer: Checkpointer,
) -> TrainResult:
    train_images = task.splits["train"].to(accelerator.device)
    val_images = task.splits["val"].to(accelerator.device)

    def validate() -> dict[str, float]:
        return {
            "val/elbo_nats": mean_elbo(
                model, val_images, cfg.train.val_examples, accelerator, cfg.eval.batch_size
            )
        }

    return train(
        model, optimizer, train_images, cfg.train, accelerator, validate, tracker.log, checkpointer
    )


def _record(
    cfg: RunConfig,
    task: TaskData,
    accelerator: Accelerator,
    evaluations: dict[str, SplitEvaluation],
    metrics: dict[str, Any],
    run_id: str,
    steps: int,
    started: float,
) -> dict[str, Any]:
    """A metrics record: what metrics.json (and each re-evaluation's version) holds. A model
    with dozens of latent groups also lists its `group_summaries`, [summary, its groups] pairs
    in the model's order (JSON objects come back sorted), whose pooled numbers sit under the
    summary's name beside the groups' own metric keys."""
    summaries = next(iter(evaluations.values())).summaries
    return {
        # one per record written: a copied run folder keeps it whatever else is edited in it,
        # so the board counts that record once
        "record_id": secrets.token_hex(8),
        "task": cfg.task_name,
        "model": cfg.model_name,
        "run_id": run_id,
        "metrics": {k: _json_number(v) for k, v in metrics.items()},
        "units": {split: e.units for split, e in evaluations.items()},
        "notes": {k: v for e in evaluations.values() for k, v in e.notes.items()},
        "factor_unit": _factor_unit_record(task, evaluations),
        **({"group_summaries": [[k, v] for k, v in summaries.items()]} if summaries else {}),
        "run": _run_info(cfg, task, accelerator, steps, started, evaluations),
    }


def reevaluate(run_dir: Path, overrides: list[str], checkpoint: int | None = None) -> Path:
    """Evaluate a finished run's final weights again (e.g. a larger eval.iwae_k) without
    retraining; the metrics go into a new version beside the old ones (returned), never over
    them. The RNGs start where the run's evaluation started, so an unchanged config gives the
    run's own numbers back.

    With `checkpoint` (a step), the weights of that kept checkpoint are evaluated instead, e.g.
    the half-budget one, into `metrics.step-NNNNNNNN.json` and `figures.step-NNNNNNNN/`: numbers
    of a model that is not the run's final one, so the board never reads them."""
    run_dir = Path(run_dir)
    cfg = saved_config(run_dir, overrides, may_reevaluate, "hvbench eval")
    if checkpoint is not None:
        return _evaluate_checkpoint(run_dir, cfg, overrides, checkpoint)
    state = read_status(run_dir)
    if state["status"] == "failed":  # a resume of a diverged run diverges again: no advice
        raise UserError(
            f"run {run_dir} failed ({shown(str(state.get('reason')))[1:-1]}); it has no final "
            "weights to evaluate"
        )
    if state["status"] != "finished":
        raise UserError(
            f"run {run_dir} is {state['status']}, not finished; "
            f"continue it first with: hvbench run --resume {run_dir}"
        )
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise UserError(
            f"run {run_dir} has no {WEIGHTS_FILE} to evaluate (it predates saved weights)"
        )
    try:
        previous = load_metrics(run_dir)  # its training measurements are carried over
    except MalformedRecord as err:
        raise UserError(
            f"cannot re-evaluate {run_dir}: {err}; move that file aside to evaluate the run's "
            "previous record instead"
        ) from None
    started = time.time()
    accelerator = make_accelerator(cfg.train.precision)
    _announce("eval", cfg, accelerator)
    set_seed(cfg.train.seed)
    task = load_task(cfg)
    model = build_model(cfg, task)
    load_weights(model, weights)
    model = accelerator.prepare(model)
    rng = _restore_evaluation_rng(run_dir, accelerator, cfg)
    evaluations = {
        split: evaluate_split(model, task, split, accelerator, cfg.eval)
        for split in task.eval_splits
    }
    metrics: dict[str, Any] = {k: v for e in evaluations.values() for k, v in e.metrics.items()}
    metrics.update({k: v for k, v in previous["metrics"].items() if k in TRAINING_METRICS})
    metrics[key("parameters")] = sum(p.numel() for p in model.parameters())
    metrics[key("peak_memory_mb")] = peak_memory_mb(accelerator.device)
    path = run_dir / METRICS_FILE
    if accelerator.is_main_process:
        steps = previous["run"].get("steps", cfg.train.steps)
        record = _record(cfg, task, accelerator, evaluations, metrics, run_dir.name, steps, started)
        record["reevaluation"] = {
            "overrides": list(overrides),
            "weights": WEIGHTS_FILE,
            "rng": rng,
            "previous": metrics_versions(run_dir)[-1].name,
        }
        try:
            path = write_new_metrics(run_dir, record)
        except OSError as err:
            raise unwritable(err, f"a metrics version into {run_dir}") from None
        # redrawn from the new evaluation into figures.vN; training did not change: no curves
        unwrapped = accelerator.unwrap_model(model)
        _safe_figures(unwrapped, task, evaluations, [], figures_dir(path), cfg)
    path = Path(broadcast_object_list([str(path)])[0])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"re-evaluated {run_dir}: {path.name}")
        print("\n".join(outcome.result_lines(record, path)))
    accelerator.end_training()
    return path


def checkpoint_metrics_path(run_dir: Path, step: int) -> Path:
    """Where `hvbench eval --checkpoint STEP` writes: a name the board's metrics versions never
    match, so a checkpoint's numbers are kept beside the run's without being ranked."""
    return Path(run_dir) / f"metrics.step-{step:08d}.json"


def _evaluate_checkpoint(run_dir: Path, cfg: RunConfig, overrides: list[str], step: int) -> Path:
    """Every test metric and figure of the weights a kept checkpoint holds, with the RNGs that
    checkpoint saved (the same numbers each time it is evaluated)."""
    kept = dict(checkpoints(run_dir))
    if step not in kept:
        steps = ", ".join(str(s) for s in kept) or "none"
        raise UserError(f"run {run_dir} has no checkpoint of step {step}; kept steps: {steps}")
    folder, path = kept[step], checkpoint_metrics_path(run_dir, step)
    if path.exists():
        raise UserError(f"{path} exists already; remove it to evaluate step {step} again")
    started = time.time()
    accelerator = make_accelerator(cfg.train.precision)
    _announce("eval", cfg, accelerator)
    task = load_task(cfg)
    model = build_model(cfg, task)
    # an EMA run is scored on its average, at every checkpoint as at the end
    load_weights(model, folder / (EMA_FILE if cfg.train.ema_rate > 0 else WEIGHTS_FILE))
    model = accelerator.prepare(model)
    record = read_checkpoint_state(folder)
    if record.get("world_size") == accelerator.num_processes:
        set_rng(read_rng(folder, accelerator.process_index))
    else:
        set_seed(cfg.train.seed, device_specific=True)
    evaluations = {
        split: evaluate_split(model, task, split, accelerator, cfg.eval)
        for split in task.eval_splits
    }
    metrics: dict[str, Any] = {k: v for e in evaluations.values() for k, v in e.metrics.items()}
    metrics[key("parameters")] = sum(p.numel() for p in model.parameters())
    if accelerator.is_main_process:
        record = _record(cfg, task, accelerator, evaluations, metrics, run_dir.name, step, started)
        record["checkpoint"] = {"step": step, "folder": f"{FOLDER}/{folder.name}"}
        record["reevaluation"] = {"overrides": list(overrides), "weights": record["checkpoint"]}
        data = (json.dumps(record, indent=2, sort_keys=True) + "\n").encode()
        try:
            write_new(path, data)
        except OSError as err:
            raise unwritable(err, str(path)) from None
        figures = run_dir / f"figures.step-{step:08d}"
        _safe_figures(accelerator.unwrap_model(model), task, evaluations, [], figures, cfg)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        print(f"evaluated step {step} of {run_dir}: {path.name}")
        print("\n".join(outcome.result_lines(record, path)))
    accelerator.end_training()
    return path


def _restore_evaluation_rng(run_dir: Path, accelerator: Accelerator, cfg: RunConfig) -> str:
    """Put each process's RNGs where the final checkpoint left them, i.e. where the run's own
    evaluation began; without that checkpoint (or with another number of processes), reseed."""
    found = checkpoints(run_dir)
    if found:
        folder = found[-1][1]
        state = read_checkpoint_state(folder)
        if state.get("world_size") == accelerator.num_processes:
            set_rng(read_rng(folder, accelerator.process_index))
            return f"restored from {FOLDER}/{folder.name}"
    set_seed(cfg.train.seed, device_specific=True)
    return f"reseeded with train.seed={cfg.train.seed}"


def load_task(cfg: RunConfig) -> TaskData:
    """The task's data; sizes this machine cannot allocate are bad input (one line naming the
    task's options), not a traceback from deep inside the loader."""
    try:
        task = TASKS.get(cfg.task_name).build(cfg.task, cache_dir())
    except (MemoryError, RuntimeError) as err:
        text = str(err)
        if not isinstance(err, MemoryError) and "alloc" not in text:
            raise
        sizes = ", ".join(
            f"task.{k}={v}" for k, v in cfg.to_dict()["task"].items() if isinstance(v, int)
        )
        asked = re.search(r"allocate (?:memory: you tried to allocate )?([0-9]+) bytes", text)
        need = f" ({int(asked.group(1)) / 2**30:,.1f} GiB at once)" if asked else ""
        raise UserError(
            f"task {cfg.task_name!r} needs more memory than this machine can allocate{need} "
            f"with {sizes}"
        ) from None
    _check_splits(task)
    return task


def build_model(cfg: RunConfig, task: TaskData) -> torch.nn.Module:
    """The model, checked to take the task's images with a forward pass on two of them, so
    "this model cannot take images this small" is one line before the run folder exists."""
    shape = "×".join(map(str, task.spec.shape))
    try:
        model = MODELS.get(cfg.model_name).build(cfg.model, task.spec)
        with torch.no_grad():
            model.eval()(task.splits["train"][:2])
    except (RuntimeError, ValueError, IndexError, ZeroDivisionError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise UserError(
            f"model {cfg.model_name!r} cannot take {task.name} images of {shape}: {lines[0]}"
        ) from None
    return with_speed_options(model, cfg.train)


def save_weights(run_dir: Path, accelerator: Accelerator, model: torch.nn.Module) -> None:
    """The final weights as safetensors (no pickle), written atomically by the main process."""
    state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in state.items()}
        data = safetensors.torch.save(tensors)
        write_atomic(run_dir / WEIGHTS_FILE, lambda f: f.write(data))


def load_weights(model: torch.nn.Module, path: Path) -> None:
    """Final weights into a model built from the run's config; a truncated or foreign file is a
    UserError (safetensors holds tensors only, so loading it runs no code)."""
    try:
        state = safetensors.torch.load_file(str(path))
        model.load_state_dict(state, strict=True)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        lines = str(err).strip().splitlines() or [type(err).__name__]
        raise UserError(f"{path} does not hold this run's model: {lines[0]}") from None


def make_accelerator(precision: str) -> Accelerator:
    """Accelerate's own device choice, except that torchrun on a machine without CUDA gets
    CPU processes joined by gloo (Accelerate only does that when told `cpu=True`)."""
    multi_process = int(os.environ.get("WORLD_SIZE", "1")) > 1
    return Accelerator(
        mixed_precision=precision, cpu=multi_process and not torch.cuda.is_available()
    )


def _check_splits(task: TaskData) -> None:
    needed = {"train", "val", *task.eval_splits}
    missing = sorted(needed - set(task.splits))
    if missing:
        raise UserError(
            f"task {task.name!r} has no {missing[0]!r} split; it has: {', '.join(task.splits)}"
        )
    empty = sorted(split for split in needed if len(task.splits[split]) == 0)
    if empty:
        raise UserError(f"task {task.name!r} has no images in its {empty[0]!r} split")


def _run_info(
    cfg: RunConfig,
    task: TaskData,
    accelerator: Accelerator,
    steps: int,
    started: float,
    evaluations: dict[str, SplitEvaluation],
) -> dict[str, Any]:
    return {
        "seed": cfg.train.seed,
        "steps": steps,
        "batch_size": cfg.train.batch_size,
        "world_size": accelerator.num_processes,
        "precision": cfg.train.precision,
        "device": device_name(accelerator.device),
        "data_source": task.source,
        "likelihood": task.spec.likelihood,
        "eval_splits": list(task.eval_splits),
        "reference_split": task.reference_split,
        # the weights scored: "ema" (train.ema_rate's moving average) or "raw" (the last step's)
        "weights": "ema" if cfg.train.ema_rate > 0 else "raw",
        "estimators": next(iter(evaluations.values())).estimators,
        # what these numbers were computed with: a re-evaluation changes it, not config.yaml
        "eval": cfg.to_dict()["eval"],
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_s": round(time.time() - started, 1),
        "provenance": provenance(),
    }


def _factor_unit_record(
    task: TaskData, evaluations: dict[str, SplitEvaluation]
) -> dict[str, dict[str, Any]]:
    """The |Spearman| matrices as numbers, so the concept-to-unit picture outlives its PNG."""
    return {
        split: {
            "factors": list(task.factor_names),
            "units": disentanglement.unit_names(e.post_means),
            "abs_spearman": e.factor_unit.round(decimals=4).tolist(),
        }
        for split, e in evaluations.items()
        if e.factor_unit is not None
    }


def _json_number(value: Any) -> Any:
    """JSON has no NaN/inf: a non-finite metric is written as null (and counted elsewhere)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _safe_figures(
    model: torch.nn.Module,
    task: TaskData,
    evaluations: dict[str, SplitEvaluation],
    history: list[dict[str, float]],
    folder: Path,
    cfg: RunConfig,
) -> dict[str, Path]:
    """The figures (training curves only when `history` is given), unless off. Each is drawn
    on its own: one matplotlib refuses (a model whose outputs are not finite; the metrics say
    so) is a warning naming it, never a traceback after the run's numbers are known, and never
    costs the others."""
    if not cfg.output.figures:
        return {}
    paths = {}
    for name, draw in _figures(model, task, evaluations, history, folder, cfg).items():
        try:
            paths[name] = draw()
        except ValueError as err:  # matplotlib refuses NaN/inf ranges
            print(f"hvbench: warning: figure {name} not drawn: {err}", file=sys.stderr)
    return paths


@torch.no_grad()
def _figures(
    model: torch.nn.Module,
    task: TaskData,
    evaluations: dict[str, SplitEvaluation],
    history: list[dict[str, float]],
    folder: Path,
    cfg: RunConfig,
) -> dict[str, Callable[[], Path]]:
    """Each figure by name, as a function that draws and saves it."""
    from hvbench import figures  # matplotlib: imported by runs that draw, not by every run

    split = task.eval_splits[-1]
    device = next(model.parameters()).device
    x = task.splits[split][:32].to(device)
    model.eval()
    recon = model.head.mean(model(x).px_params).cpu()
    samples = model.sample(32).float().cpu()
    last = evaluations[split]
    drawings: dict[str, Callable[[], Path]] = {
        "reconstructions": lambda: figures.reconstruction_grid(
            figures.to_display(x, task.spec.likelihood), recon, folder / "reconstructions.png"
        ),
        "samples": lambda: figures.sample_grid(samples, folder / "samples.png"),
        "latent_histograms": lambda: figures.latent_histograms(
            last.post_means, folder / "latent_histograms.png"
        ),
        "kl_per_unit": lambda: figures.kl_per_unit(
            last.units, cfg.eval.kl_collapse_threshold, folder / "kl_per_unit.png"
        ),
    }
    if history:
        drawings["training_curves"] = lambda: figures.training_curves(
            history, folder / "training_curves.png"
        )
    for name, e in evaluations.items():
        if e.factor_unit is not None:
            drawings[f"factor_unit_{name}"] = functools.partial(
                figures.factor_unit_matrix,
                e.factor_unit,
                list(task.factor_names),
                disentanglement.unit_names(e.post_means),
                folder / f"factor_unit_{name}.png",
                [a <= cfg.eval.au_threshold for g in e.post_means for a in e.units[g]["activity"]],
            )
    return drawings
