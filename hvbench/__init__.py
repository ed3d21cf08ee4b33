"""hvbench: a benchmark harness for hierarchical variational autoencoders."""

from pathlib import Path

__version__ = "0.1.0"

# A wheel ships `tasks/` and `baselines/` as hvbench.tasks and hvbench.baselines
# (pyproject's package-dir). `python -m hvbench` run inside a clone imports this
# folder instead of the installed copy (the working directory comes first on
# sys.path), and there they are siblings of it, not subpackages: searching the
# clone's root as well makes the same names resolve to them.
_CLONE = Path(__file__).resolve().parent.parent
if not (_CLONE / "hvbench" / "tasks").is_dir() and (_CLONE / "tasks" / "__init__.py").is_file():
    __path__.append(str(_CLONE))
