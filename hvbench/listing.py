"""`hvbench list`: what can be run and which options it takes, read from the code itself.

The option tables are generated from the config dataclasses (field, type,
default and the comment beside the field), so they cannot drift from what
`--set` accepts; the config list is the shipped `configs/` folder with the
first line of each file's header (which states its budget).
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from hvbench.config import _SHARED_SECTIONS, configs_dir
from hvbench.errors import UserError
from hvbench.options import Option, of
from hvbench.registry import MODELS, TASKS

_FIELD_COMMENT = re.compile(r"^\s+(\w+)\s*:[^#]*#\s*(.+)$")


def names(console: Console) -> None:
    """Tasks and models with their descriptions (`hvbench list`)."""
    for registry in (TASKS, MODELS):
        table = Table(title=f"{registry.kind}s")
        table.add_column("name", style="bold", no_wrap=True)
        table.add_column("description")
        for entry in registry.entries():
            table.add_row(entry.name, entry.description)
        console.print(table)
    console.print(
        "hvbench list NAME: a task's, model's or section's (train, eval, wandb, output) options; "
        "hvbench list configs: the shipped configs",
        style="dim",
        highlight=False,
    )


def configs(console: Console) -> None:
    """Every shipped config and sweep file, with the first line of its header."""
    root = configs_dir()
    table = Table(title=f"configs ({root})")
    table.add_column("config", style="bold", no_wrap=True)
    table.add_column("about")
    for path in sorted(root.glob("*/*.yaml")):
        name = path.relative_to(root).with_suffix("").as_posix()
        table.add_row(name, _header(path))
    console.print(table)
    console.print(
        "run one: hvbench run --task TASK --model MODEL (configs/TASK/MODEL.yaml), or --config "
        "FILE; a sweep: hvbench sweep configs/sweeps/NAME.yaml",
        style="dim",
        highlight=False,
    )


def options(name: str, console: Console) -> None:
    """The options of the task, model or shared section called `name`, as `--set` keys."""
    found: list[tuple[str, type]] = []
    if name in TASKS.names():
        found.append((f"task {name}: --set task.KEY=VALUE", TASKS.get(name).config))
    if name in MODELS.names():
        found.append((f"model {name}: --set model.KEY=VALUE", MODELS.get(name).config))
    if name in _SHARED_SECTIONS:
        found.append((f"section {name}: --set {name}.KEY=VALUE", _SHARED_SECTIONS[name]))
    if not found:
        known = [*TASKS.names(), *MODELS.names(), *_SHARED_SECTIONS, "configs"]
        raise UserError(f"no task, model or config section named {name!r}; one of: {', '.join(known)}")
    for title, cls in found:
        table = Table(title=title)
        for column in ("option", "type", "default", "meaning"):
            table.add_column(column, no_wrap=column != "meaning", overflow="fold")
        for row in option_rows(cls):
            table.add_row(*row)
        console.print(table)


def option_rows(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, meaning) of each field of a config dataclass: the comment beside
    the field and what the field declares (hvbench.options: its range, what it changes)."""
    hints = typing.get_type_hints(cls)
    comments = _comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        meaning = "; ".join(filter(None, [comments.get(f.name, ""), *_declared(of(f))]))
        out.append((f.name, _type_name(hints[f.name]), _default(f), meaning))
    return out


def _declared(what: Option) -> list[str]:
    """What a field's declaration adds to its meaning (nothing for the safe default)."""
    facts = [f"must be {what.range.rule}"] if what.range else []
    if what.seed:
        facts.append("a seed: the board averages runs that differ only here")
    if what.affects == "scores":
        facts.append("changes only the scores (hvbench eval may change it)")
    elif what.affects == "nothing":
        facts.append("changes no number" + (" (--resume may change it)" if what.resume else ""))
    return facts


def _comments(cls: type) -> dict[str, str]:
    """The `# comment` beside each field in the class's source (none when it has no source)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    return {m.group(1): m.group(2).strip() for m in map(_FIELD_COMMENT.match, source.splitlines()) if m}


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " | ".join(map(str, args))
    if args:
        inner = [_type_name(a) for a in args if a is not type(None)]
        if origin in (typing.Union, types.UnionType):
            return " | ".join(inner) + (" | None" if type(None) in args else "")
        return f"{getattr(origin, '__name__', str(origin))}[{', '.join(inner)}]"
    return getattr(tp, "__name__", str(tp))


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default) if isinstance(f.default, str) else str(f.default)
    if f.default_factory is not dataclasses.MISSING:
        return str(f.default_factory())
    return "(required)"


def _header(path: Path) -> str:
    """The first comment line of a YAML file: its purpose and budget."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return ""
    for line in lines:
        if line.startswith("#"):
            return line.lstrip("#").strip()
        if line.strip():
            break
    return ""
