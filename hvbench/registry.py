"""Name → entry registries for tasks and models (timm-style).

An entry is declared where it is implemented, with a decorator, so adding a
model or a task touches one module plus its config. Built-in entries are found
by importing every module of the built-in packages (`hvbench.tasks`;
`hvbench.baselines` and `hvbench.dagvae`); third-party packages add theirs
through the entry-point groups `hvbench.tasks` / `hvbench.models`.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from hvbench.errors import UserError, shown


@dataclass(frozen=True)
class Entry:
    """One registered task or model."""

    name: str
    description: str
    config: type  # the frozen dataclass holding this entry's options
    build: Callable[..., Any]
    # tasks only: builds the on-disk cache once (`hvbench data prepare`); None when
    # the task needs no preparation
    prepare: Callable[..., Any] | None = None
    # tasks only: `sample(folder)` → the `task` config section of a tiny instance (any files
    # it needs written into `folder`), so the tests train every model on every task the moment
    # either is registered, with no test written for it
    sample: Callable[[Path], dict[str, Any]] | None = None


class Registry:
    """A named collection of entries that refuses duplicates and suggests close names."""

    def __init__(self, kind: str, builtin_packages: tuple[str, ...], entry_point_group: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}
        self._builtin_packages = builtin_packages
        self._entry_point_group = entry_point_group
        self._loaded = False

    def register(
        self,
        name: str,
        *,
        config: type,
        description: str,
        prepare: Callable | None = None,
        sample: Callable[[Path], dict[str, Any]] | None = None,
    ) -> Callable:
        """Decorator: register `build(cfg, ...)` under `name`."""

        def decorate(build: Callable) -> Callable:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = Entry(name, description, config, build, prepare, sample)
            return build

        return decorate

    def get(self, name: str) -> Entry:
        self._load()
        if name not in self._entries:
            # a name from a hand-edited file can be any length: no fuzzy match of a 10 MB string
            close = difflib.get_close_matches(name, self._entries, n=1) if len(name) < 100 else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(
                f"unknown {self.kind} {shown(name)}{hint}; choose from: {', '.join(self.names())}"
            )
        return self._entries[name]

    def names(self) -> list[str]:
        self._load()
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def _load(self) -> None:
        """Import built-in modules and plug-ins once, on first use."""
        if self._loaded:
            return
        self._loaded = True
        for package_name in self._builtin_packages:
            package = importlib.import_module(package_name)
            for info in pkgutil.iter_modules(package.__path__, package_name + "."):
                if not info.name.rsplit(".", 1)[-1].startswith("_"):
                    importlib.import_module(info.name)
        for ep in entry_points(group=self._entry_point_group):
            ep.load()


TASKS = Registry("task", ("hvbench.tasks",), "hvbench.tasks")
MODELS = Registry("model", ("hvbench.baselines", "hvbench.dagvae"), "hvbench.models")
register_task = TASKS.register
register_model = MODELS.register
