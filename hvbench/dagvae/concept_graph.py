"""The concept DAG a `dagvae` follows: nodes with a name, a latent size and parents.

A graph is checked before any network is built, so a typo in a config costs
one line of error, not a traceback from a layer constructor: an empty graph,
duplicate names, sizes below one, unknown parents and cycles (named node by
node) are refused as `UserError`s.
"""

from __future__ import annotations

import graphlib
import heapq
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
    """Parents first; among nodes ready at the same time, the one listed first in the config.

    `graphlib` finds the order; taking one ready node at a time by config position keeps the
    order (and so the order in which parameters are built) deterministic.
    """
    sorter = graphlib.TopologicalSorter({n.name: n.parents for n in nodes})
    try:
        sorter.prepare()
    except graphlib.CycleError:
        raise UserError(f"model.nodes has a cycle: {' → '.join(_cycle(nodes))}") from None
    position = {n.name: i for i, n in enumerate(nodes)}
    ready: list[int] = []
    placed: list[ConceptNode] = []
    while sorter.is_active():
        for name in sorter.get_ready():
            heapq.heappush(ready, position[name])
        node = nodes[heapq.heappop(ready)]
        placed.append(node)
        sorter.done(node.name)
    return placed


def _cycle(nodes: Sequence[ConceptNode]) -> list[str]:
    """A cycle as `graphlib` names it when it follows parent links, written parent → child from
    the node listed first and closed on it.

    graphlib walks from a node to its successors; with every node's children given as its
    predecessors, those are the node's parents, so the cycle named is the one met by following
    the `parents` the config lists (a node a with `parents: [c]` gives "a → c → a", not a
    longer cycle through a's children).
    """
    children = {n.name: [c.name for c in nodes if n.name in c.parents] for n in nodes}
    try:
        graphlib.TopologicalSorter(children).prepare()
    except graphlib.CycleError as err:
        ring = err.args[1][:-1][::-1]  # child → parent reversed: parent → child
    position = {n.name: i for i, n in enumerate(nodes)}
    first = min(range(len(ring)), key=lambda i: position[ring[i]])
    ring = ring[first:] + ring[:first]
    return [*ring, ring[0]]


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
