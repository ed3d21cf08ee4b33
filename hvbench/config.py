"""Typed run configuration: frozen dataclasses filled from YAML and `--set` overrides.

A typo in a sweep must never silently run the default, so every key is checked
against the dataclass it lands in and every value against its field's type.
Each task and model declares its own options dataclass in its registry entry;
this module only knows the sections every run shares.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hvbench.errors import UserError, shown
from hvbench.options import (
    AT_LEAST_0,
    AT_LEAST_1,
    FINITE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    Option,
    Range,
    at_absent_value,
    declared,
    of,
    option,
)
from hvbench.registry import MODELS, TASKS
from hvbench.results import run_id_problem


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and the training objective (docs/design.md §5)."""

    steps: int = option(2000, range=AT_LEAST_1)
    epochs: float | None = option(None, range=POSITIVE)  # when set, steps = epochs · len(train) / batch_size
    batch_size: int = option(128, range=AT_LEAST_1)
    lr: float = option(1e-3, range=POSITIVE)
    # Adam; Adamax (Adam's ∞-norm variant), which Efficient-VDVAE trains with at large gradient
    # norms. Runs from before the key existed used Adam.
    optimizer: Literal["adam", "adamax"] = option("adam", absent_means="adam")
    seed: int = option(0, range=SEED, seed=True)
    precision: Literal["no", "bf16", "fp16"] = "no"
    w_rec: float = option(1.0, range=POSITIVE)
    beta: float = option(1.0, range=NON_NEGATIVE)
    beta_schedule: Literal["constant", "linear", "cyclical"] = "constant"
    warmup_steps: int = option(0, range=AT_LEAST_0)  # linear: steps to reach beta; cyclical: ramp length per cycle
    cycle_steps: int = option(0, range=AT_LEAST_0)  # cyclical: period of the schedule
    free_bits: float = option(0.0, range=NON_NEGATIVE)  # nats per latent group, on the batch-mean KL
    grad_clip: float = option(0.0, range=NON_NEGATIVE)  # 0 disables clipping
    eval_every: int = option(500, range=AT_LEAST_1)  # periodic validation ELBO, in steps
    val_examples: int = option(2000, range=AT_LEAST_1)  # examples used by each periodic validation
    log_every: int = option(50, range=AT_LEAST_1)
    checkpoint_every: int = option(1000, range=AT_LEAST_1, affects="nothing", resume=True)  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = option(2, range=AT_LEAST_1, affects="nothing", resume=True)  # the newest this many are kept
    # a step whose gradient norm exceeds this is skipped, as VDVAE's skip_threshold; 0 disables
    skip_threshold: float = option(0.0, range=NON_NEGATIVE)
    max_skip_fraction: float = option(0.01, range=FRACTION)  # more skipped steps than this fails the run
    channels_last: bool = False  # NHWC activations: oneDNN's and tensor cores' preferred layout
    compile: bool = False  # torch.compile the model's forward (minutes of compiling first)
    # weights' moving average (VDVAE: 0.9999), scored by the final evaluation; 0 disables (and
    # is what runs from before the average existed meant)
    ema_rate: float = option(
        0.0, range=Range(lambda v: 0 <= v < 1, "a fraction in [0, 1) (0: no average)"), absent_means=0.0
    )


@dataclass(frozen=True)
class EvalConfig:
    """Final evaluation on the task's evaluation splits (docs/design.md §6): it changes the
    scores, never the trained weights, so `hvbench eval` may change any of it."""

    batch_size: int = option(500, range=AT_LEAST_1, affects="scores")
    max_examples: int | None = option(None, range=AT_LEAST_1, affects="scores")  # cap per split, for smoke runs
    iwae_k: int = option(1000, range=AT_LEAST_0, affects="scores")  # importance samples for the IWAE bound; 0 disables
    iwae_examples: int | None = option(None, range=AT_LEAST_1, affects="scores")  # cap on examples for IWAE (it costs k forward passes)
    # ancestral draws estimating E_q[z|x] of hierarchies, split in two halves: at least one each,
    # as the unbiased activity estimator needs both
    au_samples: int = option(32, range=Range(lambda v: v >= 2, "an integer >= 2"), affects="scores")
    au_threshold: float = option(0.01, range=NON_NEGATIVE, affects="scores")
    kl_collapse_threshold: float = option(0.01, range=NON_NEGATIVE, affects="scores")
    throughput_warmup: int = option(2, range=AT_LEAST_0, affects="scores")  # batches excluded from the images/s measurement


# Where a run is logged changes nothing it computes: every key may change on resume.
_LOGGING: dict[str, Any] = {"affects": "nothing", "resume": True}


@dataclass(frozen=True)
class WandbConfig:
    mode: Literal["auto", "online", "offline", "disabled"] = option("auto", **_LOGGING)
    project: str = option("hvbench", **_LOGGING)
    entity: str | None = option(None, **_LOGGING)
    group: str | None = option(None, **_LOGGING)  # default: the run's sweep, else its task
    tags: tuple[str, ...] = option((), **_LOGGING)  # added to the automatic precision / device / config tags
    name: str | None = option(None, **_LOGGING)  # the W&B run's display name; default: the run id
    notes: str | None = option(None, **_LOGGING)  # the W&B run's description
    log_model: bool = option(False, **_LOGGING)  # upload model.safetensors as a W&B model artifact at the end


@dataclass(frozen=True)
class OutputConfig:
    """Where a run is written: nothing it computes. A resumed run stays where it is, in its
    sweep, under its name; only whether it draws figures may change."""

    root: str = option("results", affects="nothing")
    run_id: str | None = option(None, affects="nothing")  # default: <UTC time>-<seed>-<short random>
    figures: bool = option(True, affects="nothing", resume=True)
    sweep: str | None = option(None, affects="nothing")  # the sweep this run belongs to (`hvbench sweep` sets it)
    config_name: str | None = option(None, affects="nothing")  # the config file it started from; resolve() fills it in


@dataclass(frozen=True)
class RunConfig:
    task_name: str
    model_name: str
    task: Any
    model: Any
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config in the same shape the YAML files use."""
        return {
            "task": {"name": self.task_name, **dataclasses.asdict(self.task)},
            "model": {"name": self.model_name, **dataclasses.asdict(self.model)},
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "wandb": dataclasses.asdict(self.wandb),
            "output": dataclasses.asdict(self.output),
        }


PRECISION_NAMES = {"no": "fp32", "bf16": "bf16", "fp16": "fp16"}  # train.precision as users say it

_SHARED_SECTIONS = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "wandb": WandbConfig,
    "output": OutputConfig,
}
SECTIONS = ("task", "model", *_SHARED_SECTIONS)


def section_options(section: str, name: Any = None) -> dict[str, Option]:
    """Field name → `Option` of a config section; `name` is the task's or model's name (an
    unknown one, e.g. a plug-in no longer installed, declares nothing: every key is kept)."""
    if section in _SHARED_SECTIONS:
        return declared(_SHARED_SECTIONS[section])
    registry = {"task": TASKS, "model": MODELS}.get(section)
    if registry is None or not isinstance(name, str) or name not in registry.names():
        return {}
    return declared(registry.get(name).config)


def config_part(
    config: dict[str, Any], keep: Callable[[Option], bool], older_match: bool = True
) -> dict[str, Any]:
    """The part of a config (config.yaml's shape) whose fields `keep` accepts: what the config
    hash and the checkpoint fingerprint are computed from. A task's and a model's `name` is
    always kept, a key no field declares counts as changing the weights, a section left empty
    is left out, and so, with `older_match`, is a field at its `absent_means` value (a record
    from before the field then gives the same part)."""
    out: dict[str, Any] = {}
    for section, values in config.items():
        if not isinstance(values, dict):
            out[section] = values
            continue
        fields = section_options(section, values.get("name"))
        kept = {}
        for key, value in values.items():
            what = fields.get(key, Option())
            identity = key == "name" and section in ("task", "model")
            older = older_match and at_absent_value(what, value)
            if identity or (keep(what) and not older):
                kept[key] = value
        if kept:
            out[section] = kept
    return out


def key_options(cfg: RunConfig) -> dict[str, Option]:
    """`section.field` → `Option` of every field of a resolved config."""
    return {
        f"{section}.{name}": what
        for section in SECTIONS
        for name, what in declared(type(getattr(cfg, section))).items()
    }


def configs_dir() -> Path:
    """The shipped `configs/`: inside the package in a wheel, beside it in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "configs", here.parent / "configs"):
        if candidate.is_dir():
            return candidate
    return here / "configs"


def default_config_path(task: str, model: str) -> Path | None:
    path = configs_dir() / task / f"{model}.yaml"
    return path if path.is_file() else None


def config_name(path: Path | None) -> str:
    """How a run names the file it started from: `toy-corr/vae` for a shipped config, the file's
    stem for a user's own, `defaults` for none (W&B tags and the report group runs by it)."""
    if path is None:
        return "defaults"
    try:
        return Path(path).resolve().relative_to(configs_dir().resolve()).with_suffix("").as_posix()
    except ValueError:
        return Path(path).stem


class _ConfigLoader(yaml.SafeLoader):
    """YAML with only `true`/`false` as booleans (YAML 1.2's core schema).

    PyYAML follows YAML 1.1, where `no`, `off`, `yes` and `on` are booleans too: the
    precision choice `no` would arrive as False and be refused, in a file and in `--set`.
    A key given twice in one mapping is refused: PyYAML keeps the last silently, so a config
    could say `steps: 500` and run something else further down.
    """

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<:` merges may be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    duplicate = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: PyYAML's own check names it below
                    continue
                if duplicate:
                    raise yaml.constructor.ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"found duplicate key {shown(key)}",
                        key_node.start_mark,
                    )
        return super().construct_mapping(node, deep=deep)


_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


# A config holds hundreds of values; YAML aliases can make a 1 KB file expand to billions
# (a "billion laughs" bomb), which every later step (checks, merges, messages) would walk.
MAX_VALUES = 100_000


def load_yaml(text: str) -> Any:
    """Parse config YAML (files, `--set` values, saved configs) with 1.2 booleans; a document
    that expands to more than MAX_VALUES values through aliases is a yaml.YAMLError."""
    data = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: builds plain data only
    if expanded_size(data) > MAX_VALUES:
        raise yaml.YAMLError(
            f"it expands to more than {MAX_VALUES:,} values (aliases that repeat themselves?)"
        )
    return data


def expanded_size(value: Any, sizes: dict[int, int] | None = None) -> int:
    """How many values `value` would hold written out without aliases, counted without
    expanding it: an alias is the same object, so each object's size is computed once."""
    if not isinstance(value, (dict, list)):
        return 1
    sizes = {} if sizes is None else sizes
    known = sizes.get(id(value))
    if known is None:
        sizes[id(value)] = MAX_VALUES + 1  # a self-referencing alias is too large by itself
        items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
        known = 1
        for item in items:
            known += expanded_size(item, sizes)
            if known > MAX_VALUES:
                break
        sizes[id(value)] = known
    return known


def read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"config file not found: {path}")
    try:
        data = load_yaml(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text (a YAML file is)") from None
    except OSError as err:
        raise UserError(f"config file {path} cannot be read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise UserError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from None
    except RecursionError:
        raise UserError(f"config file {path} is nested too deeply to be a config") from None
    except ValueError as err:  # e.g. an integer of more digits than Python converts
        raise UserError(f"config file {path} holds a value that cannot be read: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of sections, got {shown(data)}")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong and on which line, in one line (PyYAML's own text spans several)."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem:
        mark = err.problem_mark
        text = err.problem + (f" (line {mark.line + 1})" if mark is not None else "")
    else:
        text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if len(text) <= 200 else text[:197] + "..."


def parse_override(text: str) -> tuple[list[str], Any]:
    """`a.b=c` → (['a', 'b'], c parsed as a YAML scalar)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set expects KEY.PATH=VALUE, got {shown(text)}")
    try:
        value = load_yaml(raw) if raw else ""
    except (yaml.YAMLError, ValueError, RecursionError):
        value = raw
    return key.split("."), value


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'train': {'lr': 1}} → {'train.lr': 1}: the keys `--set` names."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; `update` wins."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_overrides(base: dict[str, Any], texts: Iterable[str]) -> dict[str, Any]:
    """`base` (a config file's mapping) with `--set a.b=c` overrides merged in, in order."""
    for text in texts:
        keys, value = parse_override(text)
        for key in reversed(keys):
            value = {key: value}
        base = merge(base, value)
    return base


def section_overrides(
    texts: Sequence[str], section: str, command: str, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`base` (one section's mapping) with the overrides of a command that takes only
    `section.KEY=VALUE` ones (`bench`, `data prepare`)."""
    for text in texts:
        keys, _ = parse_override(text)
        if keys[0] != section or len(keys) != 2:
            raise UserError(f"{command} only takes {section}.KEY=VALUE overrides, got {shown(text)}")
    return apply_overrides({section: base or {}}, texts)[section]


def _check_steps_count(raw: dict[str, Any], overrides: Sequence[str]) -> None:
    """A step count asked for on the command line while the config counts epochs would be
    silently ignored (epochs win): a short CPU run of a GPU config trains for days instead."""
    asked = {text.partition("=")[0].strip() for text in overrides}
    epochs = _section(raw, "train").get("epochs")
    if "train.steps" in asked and epochs is not None:
        raise UserError(
            f"train.steps would be ignored: the config sets train.epochs={shown(epochs)}, which "
            "decides the step count; add --set train.epochs=null to train by steps"
        )


def resolve(
    task: str | None = None,
    model: str | None = None,
    config_file: Path | None = None,
    overrides: list[str] = (),
) -> RunConfig:
    """Build the run config: defaults ← configs/<task>/<model>.yaml or --config ← --set."""
    raw = apply_overrides(read_yaml(config_file) if config_file else {}, overrides)
    unknown = set(raw) - set(SECTIONS)
    if unknown:
        bad = sorted(unknown)[0]
        raise UserError(f"unknown config section {shown(bad)}; allowed: {', '.join(SECTIONS)}")
    for flag, given, section in (("--task", task, "task"), ("--model", model, "model")):
        named = _section(raw, section).get("name")
        if given and named is not None and named != given:  # which one was meant is a guess
            where = f"in {config_file}" if config_file else "from --set"
            raise UserError(
                f"{flag} {given} conflicts with {section}.name {shown(named)} {where}; "
                "give only one of them"
            )
    task_name = task or _section(raw, "task").get("name")
    model_name = model or _section(raw, "model").get("name")
    if not task_name:
        raise UserError(f"no task given: use --task NAME (one of: {', '.join(TASKS.names())})")
    if not model_name:
        raise UserError(f"no model given: use --model NAME (one of: {', '.join(MODELS.names())})")
    task_entry, model_entry = TASKS.get(task_name), MODELS.get(model_name)
    if config_file is None:
        default = default_config_path(task_name, model_name)
        if default is not None:
            raw = merge(read_yaml(default), raw)
    source = config_file or default_config_path(task_name, model_name)
    raw = merge({"output": {"config_name": config_name(source)}}, raw)
    _check_steps_count(raw, overrides)
    task_raw = {k: v for k, v in _section(raw, "task").items() if k != "name"}
    model_raw = {k: v for k, v in _section(raw, "model").items() if k != "name"}
    sections = {
        name: build(cls, _section(raw, name), name) for name, cls in _SHARED_SECTIONS.items()
    }
    cfg = RunConfig(
        task_name=task_name,
        model_name=model_name,
        task=build(task_entry.config, task_raw, "task"),
        model=build(model_entry.config, model_raw, "model"),
        **sections,
    )
    check_ranges(cfg)
    return cfg


def _section(raw: dict[str, Any], name: str) -> dict[str, Any]:
    value = raw.get(name) or {}
    if not isinstance(value, dict):
        raise UserError(f"config section {name!r} must be a mapping, got {shown(value)}")
    return value


def build(cls: type, data: dict[str, Any], path: str) -> Any:
    """Instantiate dataclass `cls` from `data`, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise UserError(f"config key {path!r} must be a mapping, got {shown(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    for key in data:
        if key not in fields:
            raise UserError(
                f"unknown config key {shown(f'{path}.{key}')}; allowed: {', '.join(sorted(fields))}"
            )
    values = {key: coerce(value, hints[key], f"{path}.{key}") for key, value in data.items()}
    return cls(**values)


def coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against type `tp`, converting only where YAML is ambiguous."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args:
            return value
        raise UserError(
            f"config key {path!r} got {shown(value)}; choose from: {', '.join(map(str, args))}"
        )
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, path)
            except UserError as err:
                errors.append(str(err))
        raise UserError(
            errors[0] if len(errors) == 1 else f"config key {path!r}: bad value {shown(value)}"
        )
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"config key {path!r} expects a list, got {shown(value)}")
        item = args[0] if args else Any
        return tuple(coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"config key {path!r} expects a mapping, got {shown(value)}")
        return {k: coerce(v, args[1], f"{path}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    return _scalar(value, tp, path)


def _scalar(value: Any, tp: type, path: str) -> Any:
    if tp is bool and isinstance(value, bool):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and not isinstance(value, bool):
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
    if tp is str and isinstance(value, str):
        return value
    raise UserError(f"config key {path!r} expects {tp.__name__}, got {shown(value)}")


def check_ranges(cfg: RunConfig) -> None:
    """Every value in range before anything is loaded or written: one line naming the key.
    A number's range is its field's (`options.option(range=...)`); a float without one must
    be finite."""
    for section in SECTIONS:
        options = getattr(cfg, section)
        for f in dataclasses.fields(options):
            key, value = f"{section}.{f.name}", getattr(options, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            limit = of(f).range or (FINITE if isinstance(value, float) else None)
            if limit is not None and not limit.holds(value):
                raise UserError(f"config key {key!r} must be {limit.rule}, got {shown(value)}")
    if not cfg.output.root:
        raise UserError("config key 'output.root' must name a folder, got ''")
    if cfg.output.run_id is not None:
        problem = run_id_problem(cfg.output.run_id)
        if problem:
            raise UserError(f"config key 'output.run_id' got {shown(cfg.output.run_id)}: {problem}")
