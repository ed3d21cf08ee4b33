"""The concept DAG a `dagvae` follows: nodes with a name, a latent size and parents.

A graph is checked before any network is built, so a typo in a config costs
one line of error, not a traceback from a layer constructor: an empty graph,
duplicate names, sizes below one, unknown parents and cycles (named node by
node) are refused as `UserError`s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hvbench.errors import UserError


@dataclass(frozen=True)
class ConceptNode:
    """One concept: `dims` Gaussian units whose prior reads the `parents`' samples.

    `scale` picks which trunk resolution the node's head reads (an index into
    the trunk's scales, negative counts from the deepest); None takes the
    model's default.
    """

    name: str
    dims: int = 2
    parents: tuple[str, ...] = ()
    scale: int | None = None


def validate(nodes: Sequence[ConceptNode]) -> list[ConceptNode]:
    """The nodes in a topological order (parents first, config order among equals)."""
    if not nodes:
        raise UserError("model.nodes is empty: a DAG-VAE needs at least one concept node")
    names = [n.name for n in nodes]
    for node in nodes:
        if names.count(node.name) > 1:
            raise UserError(f"duplicate node name {node.name!r} in model.nodes")
        if node.dims < 1:
            raise UserError(f"node {node.name!r} has dims {node.dims}; dims must be at least 1")
        for parent in node.parents:
            if parent not in names:
                raise UserError(
                    f"node {node.name!r} has unknown parent {parent!r}; nodes: {', '.join(names)}"
                )
        if len(set(node.parents)) != len(node.parents):
            raise UserError(f"node {node.name!r} lists a parent twice: {list(node.parents)}")
    return _topological_order(nodes)


def _topological_order(nodes: Sequence[ConceptNode]) -> list[ConceptNode]:
    """Kahn's algorithm, taking ready nodes in config order so the order is deterministic."""
    by_name = {n.name: n for n in nodes}
    placed: list[ConceptNode] = []
    done: set[str] = set()
    while len(placed) < len(nodes):
        ready = [n for n in nodes if n.name not in done and set(n.parents) <= done]
        if not ready:
            cycle = _find_cycle({n.name: n.parents for n in nodes if n.name not in done})
            raise UserError(f"model.nodes has a cycle: {' → '.join(cycle)}")
        placed.append(ready[0])
        done.add(ready[0].name)
    return [by_name[n.name] for n in placed]


def _find_cycle(parents: Mapping[str, Sequence[str]]) -> list[str]:
    """A cycle among nodes none of which can be placed: walk parent links until one repeats.

    Every such node has an unplaced parent, so the walk never stops and must
    revisit a node; the path from that node's first visit is the cycle. It is
    reported in edge direction (parent → child) from the node listed first in the
    config, and closed on it.
    """
    path = [next(iter(parents))]
    while True:
        parent = next(p for p in parents[path[-1]] if p in parents)
        if parent in path:
            cycle = path[path.index(parent) :][::-1]
            first = min(range(len(cycle)), key=lambda i: list(parents).index(cycle[i]))
            cycle = cycle[first:] + cycle[:first]
            return [*cycle, cycle[0]]
        path.append(parent)


def levels(order: Sequence[ConceptNode]) -> dict[str, int]:
    """Depth of every node: 0 for roots, else one more than its deepest parent."""
    depth: dict[str, int] = {}
    for node in order:
        depth[node.name] = 1 + max((depth[p] for p in node.parents), default=-1)
    return depth


def from_task_dag(
    dag: Mapping[str, Sequence[str]], dims: int, node_dims: Mapping[str, int]
) -> list[ConceptNode]:
    """Concept nodes mirroring a task's ground-truth DAG, `dims` each unless `node_dims` says."""
    for name in node_dims:
        if name not in dag:
            raise UserError(
                f"model.node_dims names {name!r}, not a node of the task's DAG; "
                f"nodes: {', '.join(dag)}"
            )
    return [
        ConceptNode(name, node_dims.get(name, dims), tuple(parents))
        for name, parents in dag.items()
    ]
