"""One benchmark run end to end: config → task → model → train → evaluate → results.

This is the only place that wires the pieces together; each piece stays
testable on its own. Only the main process writes files or talks to W&B.
"""

from __future__ import annotations

import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, set_seed

from hvbench import disentanglement, figures
from hvbench.atomic import write_json
from hvbench.config import RunConfig
from hvbench.device import device_name, peak_memory_mb
from hvbench.errors import UserError
from hvbench.evaluate import SplitEvaluation, evaluate_split, mean_elbo
from hvbench.paths import cache_dir
from hvbench.registry import MODELS, TASKS
from hvbench.results import create_run_dir, new_run_id, provenance, save_config
from hvbench.task import TaskData
from hvbench.tracking import Tracker
from hvbench.train import train


def execute(cfg: RunConfig) -> Path:
    """Train and evaluate one (task, model, config, seed); return the run folder."""
    started = time.time()
    accelerator = make_accelerator(cfg.train.precision)
    set_seed(cfg.train.seed)
    task = TASKS.get(cfg.task_name).build(cfg.task, cache_dir())
    _check_splits(task)
    model = MODELS.get(cfg.model_name).build(cfg.model, task.spec)
    parameters = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    model, optimizer = accelerator.prepare(model, optimizer)
    set_seed(cfg.train.seed, device_specific=True)  # each process draws its own noise

    run_id = broadcast_object_list([cfg.output.run_id or new_run_id(cfg.train.seed)])[0]
    run_dir = Path(cfg.output.root) / "runs" / cfg.task_name / cfg.model_name / run_id
    if accelerator.is_main_process:
        create_run_dir(Path(cfg.output.root), cfg.task_name, cfg.model_name, run_id)
        save_config(run_dir, cfg.to_dict())
    accelerator.wait_for_everyone()
    tracker = Tracker(cfg, run_dir, run_id, accelerator.device, accelerator.is_main_process)
    try:
        train_images = task.splits["train"].to(accelerator.device)
        val_images = task.splits["val"].to(accelerator.device)

        def validate() -> dict[str, float]:
            return {
                "val/elbo_nats": mean_elbo(
                    model, val_images, cfg.train.val_examples, accelerator, cfg.eval.batch_size
                )
            }

        result = train(
            model, optimizer, train_images, cfg.train, accelerator, validate, tracker.log
        )
        evaluations = {
            split: evaluate_split(model, task, split, accelerator, cfg.eval)
            for split in task.eval_splits
        }
        metrics: dict[str, Any] = {k: v for e in evaluations.values() for k, v in e.metrics.items()}
        metrics.update(
            {
                "perf/train_images_per_s": result.images_per_s,
                "perf/parameters": parameters,
                "perf/peak_memory_mb": peak_memory_mb(accelerator.device),
                "train/skipped_steps": result.skipped_steps,
            }
        )
        if accelerator.is_main_process:
            figure_paths = (
                _figures(
                    accelerator.unwrap_model(model), task, evaluations, result.history, run_dir, cfg
                )
                if cfg.output.figures
                else {}
            )
            record = {
                "task": cfg.task_name,
                "model": cfg.model_name,
                "run_id": run_id,
                "metrics": {k: _json_number(v) for k, v in metrics.items()},
                "units": {split: e.units for split, e in evaluations.items()},
                "factor_unit": _factor_unit_record(task, evaluations),
                "run": _run_info(cfg, task, accelerator, result.steps, started),
            }
            write_json(run_dir / "metrics.json", record)
            tracker.log(metrics, result.steps)
            tracker.log_figures(figure_paths, result.steps)
            tracker.summarise(metrics)
        tracker.finish()
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    accelerator.wait_for_everyone()
    accelerator.print(f"run finished: {run_dir}")
    accelerator.end_training()
    return run_dir


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


def _run_info(
    cfg: RunConfig, task: TaskData, accelerator: Accelerator, steps: int, started: float
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
        "estimators": {
            "elbo": "single-sample ELBO averaged over the split",
            "iwae": f"IWAE-{cfg.eval.iwae_k}",
            "mig": (
                f"{disentanglement.BINS} equal-width bins per unit and continuous factor; "
                f"factors with at most {disentanglement.GRID_CLASSES} levels used by level"
            ),
            "dci": (
                f"lasso alpha={disentanglement.LASSO_ALPHA} on standardised E_q[z|x] and factors, "
                f"every {disentanglement.HOLDOUT_EVERY}th example held out"
            ),
        },
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


@torch.no_grad()
def _figures(
    model: torch.nn.Module,
    task: TaskData,
    evaluations: dict[str, SplitEvaluation],
    history: list[dict[str, float]],
    run_dir: Path,
    cfg: RunConfig,
) -> dict[str, Path]:
    split = task.eval_splits[-1]
    folder = run_dir / "figures"
    device = next(model.parameters()).device
    x = task.splits[split][:32].to(device)
    model.eval()
    recon = model.head.mean(model(x).px_params)
    paths = {
        "reconstructions": figures.reconstruction_grid(
            figures.to_display(x, task.spec.likelihood), recon.cpu(), folder / "reconstructions.png"
        ),
        "samples": figures.sample_grid(model.sample(32).float().cpu(), folder / "samples.png"),
        "latent_histograms": figures.latent_histograms(
            evaluations[split].post_means, folder / "latent_histograms.png"
        ),
        "kl_per_unit": figures.kl_per_unit(
            evaluations[split].units, cfg.eval.kl_collapse_threshold, folder / "kl_per_unit.png"
        ),
    }
    if history:
        paths["training_curves"] = figures.training_curves(history, folder / "training_curves.png")
    for name, e in evaluations.items():
        if e.factor_unit is not None:
            paths[f"factor_unit_{name}"] = figures.factor_unit_matrix(
                e.factor_unit,
                list(task.factor_names),
                disentanglement.unit_names(e.post_means),
                folder / f"factor_unit_{name}.png",
            )
    return paths
