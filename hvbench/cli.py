"""Command line: `hvbench run | list | leaderboard | sweep | report | wandb-report | bench |
data prepare`.

Works the same as `python -m hvbench`, under `accelerate launch -m hvbench`
and under `torchrun -m hvbench`. Bad input (a `UserError`) prints one line and
exits with status 2 before anything is written. Anything else that reaches `main` (a full
disk, a bug) is one line too, exit status 1, its traceback in a log file the line names.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from hvbench.errors import UserError
from hvbench.results import RunFailed, RunInterrupted
from hvbench.signals import Terminated

if TYPE_CHECKING:
    from hvbench.config import RunConfig


def _run(args: argparse.Namespace) -> None:
    from hvbench.config import resolve
    from hvbench.run import execute

    shortcuts = {
        "precision": "train.precision",
        "seed": "train.seed",
        "steps": "train.steps",
        "wandb": "wandb.mode",
        "out": "output.root",
    }
    overrides = [
        f"{key}={getattr(args, name)}"
        for name, key in shortcuts.items()
        if getattr(args, name) is not None
    ]
    # W&B words as JSON strings, which YAML reads back as strings whatever they hold
    overrides += [
        f"wandb.{name}={json.dumps(getattr(args, name))}"
        for name in ("name", "notes")
        if getattr(args, name) is not None
    ]
    if args.tags is not None:
        overrides.append(f"wandb.tags={json.dumps([t for t in args.tags.split(',') if t])}")
    if args.resume is not None:
        from hvbench.run import resume

        given = [f"--{name}" for name in ("task", "model", "config") if getattr(args, name)]
        if given:
            raise UserError(f"--resume continues a run with its saved config; drop {given[0]}")
        if args.print_config:
            from hvbench.run import RESUME_SAFE, saved_config

            _print_config(saved_config(args.resume, overrides + args.set, RESUME_SAFE, "--resume"))
            return
        resume(args.resume, overrides + args.set)
        return
    cfg = resolve(args.task, args.model, args.config, overrides + args.set)
    if args.print_config:
        _print_config(cfg)
        return
    execute(cfg)


def _print_config(cfg: RunConfig) -> None:
    """The resolved config as the run would save it (config.yaml), nothing run."""
    import yaml

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True), end="")


def _eval(args: argparse.Namespace) -> None:
    from hvbench.run import reevaluate

    for text in args.set:
        if not text.startswith("eval."):
            raise UserError(f"hvbench eval only takes eval.KEY=VALUE overrides, got {text!r}")
    reevaluate(args.run_dir, args.set, args.checkpoint)


def _list(args: argparse.Namespace) -> None:
    from hvbench import listing

    if args.what is None:
        listing.names(Console())
    elif args.what == "configs":
        listing.configs(Console())
    else:
        listing.options(args.what, Console())


def _leaderboard(args: argparse.Namespace) -> None:
    from hvbench.leaderboard import SEED_COLUMNS, build, print_table, print_unranked, unranked_runs

    try:
        main, _, seeds = build(Path(args.root))
    except OSError as err:  # e.g. a read-only root: the records were read, nothing was written
        raise UserError(f"cannot write the leaderboard into {args.root}: {err.strerror}") from None
    if not main:
        print(
            f"no finished runs under {args.root}/runs yet: start with `hvbench sweep "
            "configs/sweeps/smoke.yaml` (seconds) or `hvbench run --task toy-corr --model vae`"
        )
    else:
        print_table(
            seeds, columns=SEED_COLUMNS, title="over seeds (mean ± std)", wide=args.wide
        )
        print_table(main, title="runs", wide=args.wide)
    if args.all:
        print_unranked(unranked_runs(Path(args.root)))
    Console().print(f"wrote {Path(args.root) / 'leaderboard.md'} and .csv ({len(main)} runs)")


def _sweep(args: argparse.Namespace) -> None:
    from hvbench.leaderboard import print_sweep
    from hvbench.sweep import dry_run, load, only, run_here, shard, submit

    given = [*args.set, *([f"wandb.mode={args.wandb}"] if args.wandb else [])]
    sweep = load(args.file, args.out, tuple(given))
    if args.only:
        sweep = only(sweep, args.only)
    if args.shard:
        sweep = shard(sweep, args.shard)
    if args.dry_run:
        dry_run(sweep)
    elif args.executor == "here":
        counts = run_here(sweep)
        print_sweep(sweep.root, [e.run_dir for e in sweep.entries], f"sweep {sweep.name}")
        print(f"sweep {sweep.name}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
        if counts["failed"] or counts["interrupted"]:
            sys.exit(1)
    else:
        folder = sweep.root / "sweeps" / sweep.name / "submitit"
        submit(sweep, args.executor, folder, args.wait)
        print(f"sweep {sweep.name}: job logs in {folder}")


def _report(args: argparse.Namespace) -> None:
    from hvbench.leaderboard import run_dirs
    from hvbench.report import build
    from hvbench.results import run_status

    path = build(Path(args.root), Path(args.out) if args.out else None)
    Console().print(f"wrote [bold]{path}[/bold]")
    if not any(run_status(d) == "finished" for d in run_dirs(Path(args.root))):
        print(
            f"no finished runs under {args.root}/runs yet: start with `hvbench sweep "
            "configs/sweeps/smoke.yaml` (seconds) or `hvbench run --task toy-corr --model vae`"
        )


def _wandb_report(args: argparse.Namespace) -> None:
    from hvbench.wandb_report import (
        build,
        describe,
        describe_runs,
        publish,
        runs_on_disk,
        sweep_tasks,
    )

    tasks = sweep_tasks(Path(args.root), args.sweep)
    tasks.update({task: {} for task in args.task if task not in tasks})
    if not tasks:
        raise UserError(
            f"no finished runs of sweep {args.sweep!r} under {args.root}; give --root RESULTS "
            "where the sweep wrote them (hvbench sweep --out), or name its tasks with --task"
        )
    runs = runs_on_disk(Path(args.root), args.sweep)
    if args.dry_run:
        report = build(args.project, args.entity or "<your entity>", args.sweep, tasks)
        print("\n".join([*describe(report), *describe_runs(runs, args.sweep)]))
        return
    for line in describe_runs(runs, args.sweep):
        print(line, file=sys.stderr if line.startswith("warning") else sys.stdout)
    if args.entity is None:
        import wandb

        args.entity = wandb.Api().default_entity
    print(publish(build(args.project, args.entity, args.sweep, tasks)))


def _prepare(args: argparse.Namespace) -> None:
    from hvbench.config import build, section_overrides
    from hvbench.paths import cache_dir
    from hvbench.registry import TASKS

    entry = TASKS.get(args.task)
    if entry.prepare is None:
        raise UserError(f"task {args.task!r} needs no preparation (it is generated in memory)")
    overrides = args.set + ([f"task.source={args.source}"] if args.source else [])
    raw = section_overrides(overrides, "task", "data prepare")
    path = entry.prepare(build(entry.config, raw, "task"), cache_dir())
    Console().print(f"prepared {args.task}: [bold]{path}[/bold]")


def _bench(args: argparse.Namespace) -> None:
    import json

    import torch

    from hvbench.bench import (
        COLUMNS,
        PROFILE_COLUMNS,
        bench_models,
        probe_lines,
        profile_rows,
        run_matrix,
        table_rows,
        write,
    )

    models = bench_models(args.model, args.config, args.set, args.shape, args.likelihood)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = run_matrix(
        models,
        args.precision,
        args.batch,
        args.options,
        train=not args.eval,
        steps=args.steps,
        warmup=args.warmup,
        rounds=args.rounds,
        device=torch.device(args.device) if args.device else None,
        probe_seconds=args.probe_seconds,
        probe_batch=args.probe_batch,
        clock=args.clock,
        profile=args.profile,
    )
    record = report.as_dict()
    console = Console(width=None if sys.stdout.isatty() else 160)  # a log keeps every column
    table = Table(title=f"hvbench bench ({record['settings']['mode']}): {record['machine']['device']}")
    for name, _ in COLUMNS:
        table.add_column(name, justify="left" if name in ("model", "option") else "right")
    for row in table_rows(record):
        table.add_row(*row)
    console.print(table)
    for line in probe_lines(record):
        console.print(f"machine {line}")
    if args.profile:
        profile = Table(title=f"step time by category of op ({args.profile} profiled steps)")
        for name, _ in PROFILE_COLUMNS:
            profile.add_column(name, justify="left" if name in ("model", "option") else "right")
        for row in profile_rows(record):
            profile.add_row(*row)
        console.print(profile)
    if args.out:
        paths = write(record, Path(args.out))
        console.print(f"wrote {paths[0]} and {paths[1]}")
    for cell in record["cells"]:  # one JSON line per cell, last, for scripts
        print(json.dumps({**cell, "device": record["machine"]["device"]}))


def parser() -> argparse.ArgumentParser:
    from hvbench import __version__

    top = argparse.ArgumentParser(
        prog="hvbench", description="Benchmark hierarchical VAEs.", formatter_class=_Help
    )
    top.add_argument("--version", action="version", version=f"hvbench {__version__}")
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train and evaluate one model on one task")
    run.add_argument("--task", help="task name (see `hvbench list`)")
    run.add_argument("--model", help="model name (see `hvbench list`)")
    run.add_argument(
        "--config", type=Path, help="YAML run config (default: configs/<task>/<model>.yaml)"
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. train.steps=500 (repeatable)",
    )
    run.add_argument(
        "--precision", choices=("no", "bf16", "fp16"), help="mixed precision (train.precision)"
    )
    run.add_argument("--seed", type=int, help="training seed (train.seed)")
    run.add_argument("--steps", type=int, help="training steps (train.steps)")
    run.add_argument(
        "--wandb", choices=("auto", "online", "offline", "disabled"), help="W&B mode (wandb.mode)"
    )
    run.add_argument("--out", help="results root (output.root, default: results)")
    run.add_argument("--name", help="W&B run name (wandb.name, default: the run id)")
    run.add_argument("--tags", metavar="TAG,TAG", help="extra W&B tags (wandb.tags)")
    run.add_argument("--notes", help="W&B run notes (wandb.notes)")
    run.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved config (what config.yaml would hold) and run nothing",
    )
    run.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue a stopped run from its latest checkpoint, with its saved config",
    )
    run.set_defaults(func=_run)

    evaluate = sub.add_parser(
        "eval", help="evaluate a finished run's weights again; adds a new metrics version"
    )
    evaluate.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    evaluate.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="eval.KEY=VALUE",
        help="change an evaluation key, e.g. eval.iwae_k=5000 (repeatable)",
    )
    evaluate.add_argument(
        "--checkpoint",
        type=int,
        metavar="STEP",
        help="evaluate the kept checkpoint of this step instead of the final weights (into "
        "metrics.step-STEP.json and figures.step-STEP/, never ranked)",
    )
    evaluate.set_defaults(func=_eval)

    listing = sub.add_parser(
        "list",
        help="list tasks and models; `list configs`: the shipped configs; `list NAME`: the "
        "options (type, default) of a task, model or section (train, eval, wandb, output)",
    )
    listing.add_argument("what", nargs="?", metavar="configs|NAME", help="what to list")
    listing.set_defaults(func=_list)

    board = sub.add_parser(
        "leaderboard", help="rebuild results/leaderboard.{md,csv} from every run"
    )
    board.add_argument(
        "--root", default="results", help="results root holding runs/ (default: results)"
    )
    board.add_argument(
        "--all", action="store_true", help="also list runs that are not ranked (not finished)"
    )
    board.add_argument(
        "--wide",
        action="store_true",
        help="every column, however wide (default: the compact board, plus what the terminal's "
        "or $COLUMNS' width holds)",
    )
    board.set_defaults(func=_leaderboard)

    sweep = sub.add_parser(
        "sweep", help="run a grid of runs (tasks × models × variants × seeds) from a YAML file"
    )
    sweep.add_argument("file", type=Path, help="sweep file, e.g. configs/sweeps/smoke.yaml")
    sweep.add_argument("--dry-run", action="store_true", help="print the run commands only")
    sweep.add_argument(
        "--executor",
        choices=("here", "local", "slurm"),
        default="here",
        help="here: one run after another in this shell (default); slurm: one SLURM job per "
        "run through submitit; local: submitit's local executor (jobs on this machine)",
    )
    sweep.add_argument("--wait", action="store_true", help="local/slurm: wait for the jobs")
    sweep.add_argument("--out", help="results root of every run (output.root)")
    sweep.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key in every run, after the sweep file's own (repeatable)",
    )
    sweep.add_argument(
        "--wandb",
        choices=("auto", "online", "offline", "disabled"),
        help="W&B mode of every run (wandb.mode; the smoke configs say disabled)",
    )
    sweep.add_argument(
        "--only",
        metavar="TASK/MODEL/VARIANT",
        help="only the entries of these rows (a glob, e.g. toy-corr/vae/weak-kl or '*/dagvae/*'; "
        "'-' is the variant of a sweep without variants)",
    )
    sweep.add_argument(
        "--shard",
        metavar="I/N",
        help="only every N-th entry, starting at entry I (0-based): N shells with shards "
        "0/N … N-1/N run one sweep N runs at a time without starting any run twice",
    )
    sweep.set_defaults(func=_sweep)

    report = sub.add_parser("report", help="write results/report.html: every run on one page")
    report.add_argument("--root", default="results", help="results root holding runs/")
    report.add_argument("--out", help="output file (default: ROOT/report.html)")
    report.set_defaults(func=_report)

    wandb_report = sub.add_parser(
        "wandb-report", help="publish a W&B Report comparing a sweep's models (needs an account)"
    )
    wandb_report.add_argument("--project", required=True, help="W&B project the runs logged to")
    wandb_report.add_argument("--entity", help="W&B entity (default: your default entity)")
    wandb_report.add_argument("--sweep", required=True, help="sweep name (the runs' W&B group)")
    wandb_report.add_argument(
        "--task", action="append", default=[], help="a task to include (default: the sweep's tasks "
        "found under --root)",
    )
    wandb_report.add_argument("--root", default="results", help="results root holding runs/")
    wandb_report.add_argument("--dry-run", action="store_true", help="print the report's panels")
    wandb_report.set_defaults(func=_wandb_report)

    bench = sub.add_parser(
        "bench",
        help="time models' train or eval steps on synthetic data: models × precisions × batch "
        "sizes × options, beside the machine's own conv and matmul rates",
    )
    bench.add_argument(
        "--model", nargs="+", default=[], help="model names, built with their defaults"
    )
    bench.add_argument(
        "--config",
        type=Path,
        nargs="+",
        default=[],
        help="YAML files whose model sections build models (one --model with one --config: "
        "that config under another model name)",
    )
    bench.add_argument(
        "--set", action="append", default=[], metavar="model.KEY=VALUE", help="model options"
    )
    bench.add_argument("--shape", default="1,28,28", help="input C,H,W (default 1,28,28)")
    bench.add_argument(
        "--likelihood",
        choices=("bernoulli", "gaussian", "dlogistic"),
        default="bernoulli",
        help="the decoder's likelihood head",
    )
    bench.add_argument("--batch", type=int, nargs="+", default=[64], help="batch sizes")
    bench.add_argument(
        "--precision",
        nargs="+",
        choices=("no", "bf16", "fp16"),
        default=["no"],
        help="precisions, each its own row (no: fp32)",
    )
    bench.add_argument(
        "--options",
        nargs="+",
        choices=("plain", "channels_last", "compile", "channels_last+compile"),
        default=["plain"],
        help="speed options, each its own row (train.channels_last, train.compile, both)",
    )
    bench.add_argument("--steps", type=int, default=5, help="timed steps per cell and round")
    bench.add_argument("--warmup", type=int, default=2, help="untimed steps per cell")
    bench.add_argument("--rounds", type=int, default=2, help="interleaved passes over the matrix")
    bench.add_argument(
        "--probe-seconds", type=float, default=0.5, help="seconds per machine-rate probe shape"
    )
    bench.add_argument(
        "--probe-batch", type=int, default=64, help="batch of the conv probe (default 64)"
    )
    bench.add_argument("--eval", action="store_true", help="time forward passes without gradients")
    bench.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="cpu: time by the process's CPU time (with --threads 1, a busy machine's other "
        "processes barely move it)",
    )
    bench.add_argument(
        "--profile",
        type=int,
        nargs="?",
        const=2,
        default=0,
        metavar="STEPS",
        help="after timing, profile STEPS steps of each cell (2 if not given) and give its time "
        "by category of op: convolution, matmul, casts, random, optimiser, element-wise, other",
    )
    bench.add_argument("--threads", type=int, help="torch CPU threads")
    bench.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    bench.add_argument(
        "--out", help="write OUT/bench.json and OUT/bench.md (e.g. --out results)"
    )
    bench.set_defaults(func=_bench)

    data = sub.add_parser("data", help="dataset utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prepare = data_sub.add_parser("prepare", help="build a task's on-disk cache once")
    prepare.add_argument("--task", required=True, help="task name (see `hvbench list`)")
    prepare.add_argument("--source", help="path to the original data (sets task.source)")
    prepare.add_argument(
        "--set", action="append", default=[], metavar="task.KEY=VALUE", help="task options"
    )
    prepare.set_defaults(func=_prepare)
    for command in (*sub.choices.values(), *data_sub.choices.values()):
        command.formatter_class = _Help
    return top


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's defaults in every --help, except where there is nothing to say (an unset
    option, a flag that is off) or the help already names its default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in help_text:
            return help_text
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from hvbench.cpu import configure

    try:
        configure()  # this process's share of the cores under any launcher; a steady allocator
        args.func(args)
    except UserError as err:
        _fail(f"hvbench: error: {err}", 2)
    except RunFailed as err:
        _fail(f"hvbench: run failed: {err} (run {err.run_dir})", 1)
    except RunInterrupted as stop:
        resume = f"hvbench run --resume {stop.run_dir}"
        where = f"after step {stop.step} (checkpoint saved)" if stop.step else "before step 1"
        _fail(f"hvbench: interrupted {where}; resume with: {resume}", 128 + stop.signum)
    except KeyboardInterrupt:
        _fail("hvbench: interrupted before the run started; nothing to resume", 130)
    except Terminated as stop:  # SIGTERM outside a run: loading, a sweep, the board
        _fail(f"hvbench: stopped by {stop}; nothing was left half-written", 128 + stop.signum)
    except Exception as err:  # the guard: whatever nobody listed is one line, never a traceback
        if os.environ.get("HVBENCH_DEBUG") == "1":
            raise
        _fail(_unexpected(err), 1)


def _unexpected(err: Exception) -> str:
    """One line for an exception nothing else handled, its traceback in a log file: a fault of
    the machine (an OSError: disk full, a lost mount) names its cause, anything else is a bug."""
    lines = str(err).strip().splitlines()
    what = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        what = f"{err.strerror}{where}"
    what = what if len(what) <= 300 else what[:297] + "..."
    kind = "failed" if isinstance(err, OSError) else "internal error"
    return f"hvbench: {kind}: {what} ({_log_traceback(err)}; HVBENCH_DEBUG=1 prints it)"


def _log_traceback(err: BaseException) -> str:
    """Write `err`'s traceback to a new file under the cache folder (else the temp folder) and
    say where; a disk too full for even that is said instead."""
    import tempfile
    import traceback
    from datetime import datetime, timezone

    from hvbench.paths import cache_dir

    text = "".join(traceback.format_exception(err))
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    problem = "no folder to write it to"
    for folder in (cache_dir() / "logs", Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(
                "w", dir=folder, prefix=f"hvbench-error-{stamp}-", suffix=".log", delete=False
            ) as log:
                log.write(" ".join(sys.argv) + "\n" + text)
            return f"traceback in {log.name}"
        except OSError as failed:
            problem = failed.strerror or type(failed).__name__
    return f"no traceback log: {problem}"


def _fail(line: str, code: int) -> None:
    """One line on stderr, from rank 0 only under torchrun / accelerate launch (every process
    fails alike), and the exit status."""
    if code > 128:  # stopped by a signal: a second one from now on ends the process at once
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, _exit_now(code))
    if os.environ.get("RANK", "0") == "0":
        print(" ".join(line.split()), file=sys.stderr)  # one line, whatever a message holds
    sys.exit(code)


def _exit_now(code: int) -> Callable[[int, FrameType | None], None]:
    """A handler for a signal received after the one-line report: W&B and Accelerate may take
    a while to shut down, and a KeyboardInterrupt in their exit hooks would print a traceback."""

    def handler(signum: int, frame: FrameType | None) -> None:
        os._exit(code)

    return handler
