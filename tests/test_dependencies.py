"""docs/design.md §10 holds: every import outside the standard library is declared in
pyproject.toml, and nothing is declared that nothing imports.

Imports are read from the source (ast), including `pytest.importorskip("name")`; a module is
mapped to the distribution that installs it (`importlib.metadata.packages_distributions`).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions

import pytest

from tests.conftest import REPO

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the CI's Python has it

OWN = {"hvbench", "tasks", "baselines", "tests"}
# dev tools the README's test command runs rather than imports
TOOLS = {"pytest", "pytest-benchmark", "pytest-xdist", "ruff"}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _distributions(folders: tuple[str, ...]) -> set[str]:
    """The distributions whose modules the .py files under `folders` import."""
    modules: set[str] = set()
    for folder in folders:
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
                elif (
                    isinstance(node, ast.Call)
                    and getattr(node.func, "attr", None) == "importorskip"
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                ):
                    modules.add(str(node.args[0].value).split(".")[0])
    installed = packages_distributions()
    third_party = modules - set(sys.stdlib_module_names) - OWN
    return {_norm(d) for m in third_party for d in installed.get(m, [m])}


def _declared(requirements: list[str]) -> set[str]:
    return {_norm(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in requirements}


PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = _declared(PROJECT["dependencies"])
EXTRAS = {name: _declared(reqs) for name, reqs in PROJECT["optional-dependencies"].items()}


def test_the_package_imports_only_what_it_declares_and_declares_only_what_it_imports() -> None:
    imported = _distributions(("hvbench", "tasks", "baselines"))
    assert imported - RUNTIME - EXTRAS["wandb-report"] == set()
    assert RUNTIME - imported == set()
    assert EXTRAS["wandb-report"] <= imported


def test_the_tests_import_only_what_the_dev_extra_adds() -> None:
    imported = _distributions(("tests",))
    assert imported - RUNTIME - EXTRAS["dev"] == set()
    assert EXTRAS["dev"] - TOOLS - imported - EXTRAS["wandb-report"] == set()
