"""The leaderboard over seeds: the runs of one configuration read as one result, mean ± std.

Runs belong together when they share task, model and configuration, the seed
and the bookkeeping keys (where a run is written and logged, how often it
checkpoints) aside, and report the same split and IWAE k. Which keys those are
is declared on the config fields (`hvbench/options.py`). A number is only a
result with its spread: the sample standard deviation over seeds (n − 1), shown
only from two seeds on.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from hvbench.config import MAX_VALUES, config_part, expanded_size
from hvbench.options import names_configuration

# row fields that identify a group rather than measure it; `eval` is a re-evaluation's
# changed eval settings, so differently evaluated seeds are never averaged together
GROUP_BY = ("task", "model", "config", "split", "iwae_k", "eval")


class Spread(NamedTuple):
    """A metric over seeds: mean and sample standard deviation."""

    mean: float
    std: float


def columns(per_run: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """The over-seeds table's (key, title) columns: the per-run ones, the run id replaced by
    the config hash, the number of runs and their seeds (one run's seed column dropped)."""
    out: list[tuple[str, str]] = []
    for key, title in per_run:
        if key == "seed":
            continue
        out += [("config", "config"), ("n", "n"), ("seeds", "seeds")] if key == "run_id" else [(key, title)]
    return tuple(out)


def config_hash(config: dict[str, Any]) -> str:
    """Eight hex digits naming what a run computes: the fields of its config that name the
    configuration (`options.names_configuration`: neither the seed nor bookkeeping)."""
    kept = config_part(config, names_configuration)
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def run_config(run_dir: Path) -> dict[str, Any] | None:
    """The config a run saved, or None when it has none that can be read."""
    try:
        text = (Path(run_dir) / "config.yaml").read_text()
        config = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # fast
    except (OSError, yaml.YAMLError, ValueError, RecursionError):  # ValueError: not UTF-8
        return None
    if expanded_size(config) > MAX_VALUES:  # an alias bomb: hashing it would expand it
        return None
    return config if isinstance(config, dict) else None


def evaluated_config(run_dir: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The config a run's numbers were computed with: its config.yaml, with the eval settings
    its latest metrics record was computed with (`hvbench eval --set eval.X=..` changes those
    without touching config.yaml). A record from before `run.eval` existed gets its
    re-evaluation's overrides applied instead."""
    config = run_config(run_dir)
    if config is None:
        return None
    saved = config.get("eval") if isinstance(config.get("eval"), dict) else {}
    recorded = (record.get("run") or {}).get("eval")
    if isinstance(recorded, dict):
        return {**config, "eval": recorded}
    changed = dict(saved)
    reevaluation = record.get("reevaluation")
    overrides = reevaluation.get("overrides") if isinstance(reevaluation, dict) else None
    for text in overrides if isinstance(overrides, list) else []:
        name, sep, value = str(text).removeprefix("eval.").partition("=")
        if sep:
            try:
                changed[name] = yaml.safe_load(value)
            except yaml.YAMLError:
                changed[name] = value
    return {**config, "eval": changed}


def over_seeds(
    rows: Iterable[dict[str, Any]], configs: dict[tuple[str, str, str], dict[str, Any] | None]
) -> list[dict[str, Any]]:
    """One row per (task, model, config, split, k) from the leaderboard's per-run rows.

    `configs` maps (task, model, run_id) to the run's saved config; a run without
    one stands alone. Every field that varies over the group is aggregated: numbers
    to a `Spread`, "a/b" counts to the mean count over the same b, anything else to
    its distinct values. Fields equal over the group keep their value.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        config = configs.get((row["task"], row["model"], row["run_id"]))
        key = config_hash(config) if config is not None else f"run {row['run_id']}"
        train = (config or {}).get("train")
        row = {**row, "config": key, "seed": train.get("seed") if isinstance(train, dict) else None}
        groups.setdefault(tuple(row.get(k) for k in GROUP_BY), []).append(row)
    out = []
    for members in groups.values():
        merged = {k: _combine([m.get(k) for m in members]) for k in members[0]}
        seeds = sorted((m["seed"] for m in members if m["seed"] is not None), key=str)
        runs = [m["run_id"] for m in members]
        merged.update(n=len(members), seeds=seeds, runs=runs, config=_name(runs, merged["config"]))
        del merged["run_id"], merged["seed"]
        out.append(merged)
    return sorted(out, key=lambda r: (r["task"], -rank_value(r.get("elbo_nats"))))


def _name(run_ids: list[str], config_key: str) -> str:
    """What a row of seeds is called: its runs' shared id without the seed (a sweep names its
    runs `<sweep>[-<variant>]-s<seed>`, so this reads `toy-study-weak-kl`), else the hash."""
    stems = {re.sub(r"-s[0-9]+$", "", run_id) for run_id in run_ids}
    (stem,) = stems if len(stems) == 1 else (None,)
    return stem if stem and stem not in run_ids else config_key


def flat(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows for CSV, with the same columns in every row: a field that is a Spread in any row
    becomes <key>_mean and <key>_std everywhere (std 0 where all seeds agreed, empty for n = 1)."""
    spread = {k for r in rows for k, v in r.items() if isinstance(v, Spread)}
    out = []
    for row in rows:
        record: dict[str, Any] = {}
        for key, value in row.items():
            if key in spread:
                mean, std = value if isinstance(value, Spread) else (value, None)
                if std is None and value is not None and row["n"] > 1:
                    std = 0.0
                record[f"{key}_mean"], record[f"{key}_std"] = mean, std
            elif isinstance(value, list):
                record[key] = " ".join(map(str, value))
            else:
                record[key] = value
        out.append(record)
    return out


def _combine(values: list[Any]) -> Any:
    if all(v == values[0] for v in values):
        return values[0]
    if any(v is None for v in values):
        return None  # a metric a seed could not compute: the per-run table shows which
    if all(_is_number(v) for v in values):
        return _spread(values)
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        # a non-finite seed makes the mean non-finite: shown as such, never ranked
        return Spread(sum(map(float, values)) / len(values), math.nan)
    counts = [_count(v) for v in values]
    if all(counts) and len({d for _, d in counts}) == 1:
        numerators = [n for n, _ in counts]
        return f"{statistics.fmean(numerators):.1f} ± {statistics.stdev(numerators):.1f}/{counts[0][1]}"
    return ", ".join(dict.fromkeys(map(str, values)))


def _spread(values: list[float]) -> Spread:
    """Mean and sample std, computed exactly (statistics' fractions): float sums of values
    near 1e308 overflow, and a board must not crash on a record's extreme but finite number."""
    try:
        return Spread(float(statistics.mean(values)), float(statistics.stdev(values)))
    except OverflowError:
        return Spread(math.inf, math.nan)


def _count(value: Any) -> tuple[int, int] | None:
    """'3/10' → (3, 10): the active/units column."""
    if isinstance(value, str) and value.count("/") == 1:
        a, b = value.split("/")
        if a.isdigit() and b.isdigit():
            return int(a), int(b)
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def ranked_value(value: Any) -> float | None:
    """The number a row is ranked by (a finite value or mean), or None: a row whose ELBO is
    missing, NaN or infinite is shown as such but never ranked above any other."""
    mean = value.mean if isinstance(value, Spread) else value
    return float(mean) if _is_number(mean) else None


def rank_value(value: Any) -> float:
    """What rows are sorted by, best first under `-`: the ranked value, -inf for none."""
    ranked = ranked_value(value)
    return -math.inf if ranked is None else ranked
