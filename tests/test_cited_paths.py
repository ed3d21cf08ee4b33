"""Every repository path the documents cite exists: README.md, docs/*.md, and the docstrings
and comments of the code, so a renamed or deleted file cannot leave a reader at a dead end.

A cited path is a relative path starting at a top-level folder of the repository
(`configs/paper/vae.yaml`, `tests/model_checks.py`) or a relative markdown link. Patterns are
read as users read them: `<task>` is any name, `{a,b}` both, `*` a glob, each of which must
match something. Paths the harness or a script writes when it runs (results/runs/..., the
leaderboard) are outputs, not files of the repository, and are not checked.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

from tests.conftest import REPO

TOP = r"(?:hvbench|tasks|baselines|configs|tests|scripts|docs|results|\.ci)"
CITED = re.compile(r"(?<![\w./$~-])(" + TOP + r"/[\w./<>{}*,+-]*)")
LINK = re.compile(r"\]\(([^)#\s]+)")
# written by `hvbench run`, `leaderboard`, `report` and the scripts when they run
OUTPUTS = (
    "results/runs/",
    "results/leaderboard",
    "results/report.html",
    "results/gpu/",
    "results/vdvae-side-by-side.",
    "results/metric-ceilings",
    "results/studies.md",
    "results/figures/",
)
# where a wheel ships the top-level folders of a checkout (pyproject's package-dir)
SHIPPED = {"hvbench/baselines/": "baselines/", "hvbench/tasks/": "tasks/", "hvbench/configs/": "configs/"}


def _documents() -> Iterator[tuple[Path, str]]:
    """(file, the text of it that cites): whole markdown files, a module's comments and
    docstrings."""
    for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        yield path, path.read_text()
    for folder in ("hvbench", "tasks", "baselines", "tests", "scripts"):
        for path in sorted((REPO / folder).rglob("*.py")):
            source = path.read_text()
            tokens = tokenize.generate_tokens(io.StringIO(source).readline)
            parts = [t.string for t in tokens if t.type == tokenize.COMMENT]
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    parts.append(ast.get_docstring(node, clean=False) or "")
            yield path, "\n".join(parts)


def _expanded(path: str) -> list[str]:
    """`a/{b,c}.md` → [`a/b.md`, `a/c.md`]."""
    brace = re.search(r"\{([^{}]*)\}", path)
    if brace is None:
        return [path]
    return [
        p
        for choice in brace.group(1).split(",")
        for p in _expanded(path[: brace.start()] + choice + path[brace.end() :])
    ]


def _exists(path: str) -> bool:
    """Whether a cited path or pattern names something in the repository."""
    return all(_one_exists(p) for p in _expanded(path))


def _one_exists(path: str) -> bool:
    for shipped, here in SHIPPED.items():
        if path.startswith(shipped):
            path = here + path[len(shipped) :]
    pattern = re.sub(r"<[^<>]*>", "*", path).rstrip("/")
    if "*" in pattern:
        return any(REPO.glob(pattern))
    return (REPO / pattern).exists()


def cited(text: str, markdown: bool) -> set[str]:
    """The repository paths a text cites, trailing punctuation dropped."""
    found = set(CITED.findall(text))
    if markdown:
        found |= {link for link in LINK.findall(text) if not re.match(r"[a-z]+:", link)}
    return {path.rstrip(".,:;)") for path in found}


def test_every_cited_repository_path_exists() -> None:
    missing = []
    for document, text in _documents():
        for path in sorted(cited(text, document.suffix == ".md")):
            if path.startswith(OUTPUTS):
                continue
            if not _exists(path):
                missing.append(f"{document.relative_to(REPO)}: {path}")
    assert missing == []


def test_patterns_are_read_as_users_read_them() -> None:
    assert _exists("configs/<task>/<model>.yaml") and _exists("configs/paper/{vae,lvae,biva}.yaml")
    assert not _exists("configs/paper/stacked-vae.yaml") and not _exists("configs/{vae,nope}.yaml")
    assert _exists("hvbench/baselines/published.yaml")  # a wheel's path of baselines/
    text = "see `tests/model_checks.py`, [the design](docs/design.md) and https://x.org/tests/a."
    assert cited(text, markdown=True) == {"tests/model_checks.py", "docs/design.md"}
