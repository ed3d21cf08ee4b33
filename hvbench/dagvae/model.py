"""`dagvae`: latents that follow a concept DAG, read from a spatial trunk by conceptual heads.

The problem this model answers (docs/design.md §4): a bottom-up network whose layers
mirror the latent DAG squeezes the image through layers as narrow as the
DAG's levels (two units for a single two-dimensional root) and loses it. Here
the hierarchical *image features* and the *conceptual latents* are separate:

- a **spatial trunk**, a CNN with the usual width progression over
  resolutions, computes multi-scale features once per image, whatever the
  DAG looks like;
- every node v has a **conceptual head** q(z_v | x, z_pa(v)) that reads the
  pooled trunk features of a chosen scale and its parents' samples, in
  topological order; its prior p(z_v | z_pa(v)) is a small network of the
  parents (roots: standard normal). Parents are drawn before their children,
  so every node's KL is analytic;
- the **decoder** reads every node; an optional **spatial residual** latent
  group (Ladder-VAE style: the precision-weighted merge of a bottom-up
  estimate and a top-down prior given the concepts) carries the detail the
  concepts need not encode.

`trunk: mirrored` builds the design that failed, as an ablation: the same
convolutional stem, then dense layers whose widths are the DAG's levels
(leaves next to the image, roots last), each node reading its level's layer.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from hvbench.blocks import (
    ACTIVATIONS,
    Activation,
    ConvStack,
    LatentMLP,
    LatentParams,
    LatentToFeatures,
    Shape,
    output_layer,
)
from hvbench.dagvae.concept_graph import ConceptNode, from_task_dag, levels, validate
from hvbench.errors import UserError
from hvbench.latents import (
    AncestralModel,
    DiagonalGaussian,
    LatentSample,
    draw,
    merge_precision_weighted,
)
from hvbench.likelihoods import get_likelihood
from hvbench.options import AT_LEAST_1, option
from hvbench.registry import register_model
from hvbench.task import TaskSpec

RESIDUAL_GROUP = "residual"
# Used when a config gives no graph and the task has none: one global concept that two
# others refine (documented in the README; real tasks ship their own graph in configs/).
DEFAULT_NODES = (
    ConceptNode("global", 4),
    ConceptNode("shape", 4, ("global",)),
    ConceptNode("appearance", 4, ("global",)),
)


@dataclass(frozen=True)
class DAGVAEConfig:
    """`dag: nodes` uses `nodes`; `dag: task` the task's ground-truth DAG with `dims` units per
    node (`node_dims` overrides single nodes). Scales index the trunk's resolutions (0 = first
    downsampling, −1 = deepest)."""

    dag: Literal["nodes", "task"] = "nodes"
    nodes: tuple[ConceptNode, ...] = DEFAULT_NODES
    dims: int = 2
    node_dims: dict[str, int] = field(default_factory=dict)
    trunk: Literal["spatial", "mirrored"] = "spatial"
    widths: tuple[int, ...] = (32, 64, 128)  # trunk channels per resolution (each halves H, W)
    blocks: int = 1  # gated residual blocks per resolution
    kernel: int = 3
    head_scale: int = -1  # the scale a node's head reads unless the node says
    pool: int = 4  # heads read a pool×pool average-pooled map: coarse position survives
    head_hidden: int = 128
    prior_hidden: int = 64
    residual: int = 0  # channels of the spatial residual latent group (0: none)
    residual_scale: int = -1
    activation: Activation = "elu"
    mixtures: int = option(10, range=AT_LEAST_1)  # logistic mixture components (dlogistic tasks only)

    def __post_init__(self) -> None:
        if self.dag == "nodes":
            validate(self.nodes)
        rules = [
            ("widths", len(self.widths) > 0 and min(self.widths) > 0, "positive channel counts"),
            ("blocks", self.blocks > 0, "positive"),
            ("kernel", self.kernel % 2 == 1, "odd"),
            ("dims", self.dims > 0, "positive"),
            ("pool", self.pool > 0, "positive"),
            ("head_hidden", self.head_hidden > 0, "positive"),
            ("prior_hidden", self.prior_hidden > 0, "positive"),
            ("residual", self.residual >= 0, "0 (none) or a positive channel count"),
        ]
        for name, ok, rule in rules:
            if not ok:
                raise UserError(f"model.{name} must be {rule}, got {getattr(self, name)!r}")


def concept_nodes(cfg: DAGVAEConfig, spec: TaskSpec) -> list[ConceptNode]:
    """The validated graph in topological order, from the config or from the task."""
    if cfg.dag == "nodes":
        return validate(cfg.nodes)
    if spec.dag is None:
        raise UserError(
            "model.dag is 'task' but this task has no ground-truth DAG; "
            "set model.dag=nodes and give model.nodes"
        )
    return validate(from_task_dag(spec.dag, cfg.dims, cfg.node_dims))


def _mlp(in_features: int, hidden: int, out_features: int, activation: Activation) -> nn.Module:
    """A conceptual head or conditional prior: in fp32 under autocast (blocks.LatentMLP)."""
    return LatentMLP(
        nn.Linear(in_features, hidden), ACTIVATIONS[activation](), nn.Linear(hidden, out_features)
    )


class SpatialTrunk(nn.Module):
    """Gated residual conv stacks, one per resolution; each halves the map and sets its width."""

    def __init__(self, image: Shape, cfg: DAGVAEConfig):
        super().__init__()
        stacks, shape = [], image
        for i, width in enumerate(cfg.widths):
            size = shape[1:]
            half = tuple(-(-s // 2) for s in size)
            stack = ConvStack(
                shape,
                width,
                cfg.kernel,
                [size] * (cfg.blocks - 1) + [half],
                first_residual=i > 0,
                activation=cfg.activation,
            )
            stacks.append(stack)
            shape = stack.out_shape
        self.stacks = nn.ModuleList(stacks)
        self.shapes: list[Shape] = [s.out_shape for s in stacks]

    def forward(self, x: Tensor) -> list[Tensor]:
        maps = []
        for stack in self.stacks:
            x, _ = stack(x)
            maps.append(x)
        return maps


def _pooled(h: Tensor, pool: int) -> Tensor:
    """A pool×pool average of a map (smaller maps kept whole), flattened: coarse position
    survives."""
    return F.adaptive_avg_pool2d(h, (min(h.shape[2], pool), min(h.shape[3], pool))).flatten(1)


def _pooled_width(shape: Shape, pool: int) -> int:
    c, h, w = shape
    return c * min(h, pool) * min(w, pool)


class PooledScales(nn.Module):
    """`trunk: spatial`: every trunk scale pooled; a node's head reads the scale it is given."""

    def __init__(self, shapes: Sequence[Shape], pool: int, node_scales: list[int]):
        super().__init__()
        self.pool = pool
        self.sources = node_scales  # per node (topological order): the entry it reads
        self.widths = [_pooled_width(shape, pool) for shape in shapes]

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        return [_pooled(m, self.pool) for m in maps]


class MirroredLevels(nn.Module):
    """`trunk: mirrored`, the ablation: the deepest pooled map through dense layers as wide as
    the DAG's levels, deepest level first (next to the image); a node reads its level's layer."""

    def __init__(
        self,
        deepest: Shape,
        pool: int,
        level_widths: list[int],
        node_levels: list[int],
        activation: Activation,
    ):
        super().__init__()
        self.pool = pool
        self.sources = node_levels
        self.widths = level_widths
        widths = [_pooled_width(deepest, pool), *reversed(level_widths)]
        self.layers = nn.ModuleList(
            nn.Sequential(nn.Linear(a, b), ACTIVATIONS[activation]())
            for a, b in itertools.pairwise(widths)
        )

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        h, by_level = _pooled(maps[-1], self.pool), []
        for layer in self.layers:
            h = layer(h)
            by_level.append(h)
        return by_level[::-1]  # index = level, roots first


class Decoder(nn.Module):
    """All concepts → the deepest trunk shape → stacks mirroring the trunk, back to the image.

    `up[j]` takes the map of trunk scale j to the shape of scale j − 1 (the image's size for
    j = 0), so a spatial latent group of scale j joins after the stacks deeper than j and before
    `up[j]`.
    """

    def __init__(self, image: Shape, shapes: list[Shape], concept_dims: int, cfg: DAGVAEConfig):
        super().__init__()
        self.project = LatentToFeatures(concept_dims, shapes[-1], spatial=False)
        targets = [(cfg.widths[0], *image[1:]), *shapes[:-1]]
        self.up = nn.ModuleList(
            ConvStack(
                shape,
                target[0],
                cfg.kernel,
                [shape[1:]] * (cfg.blocks - 1) + [target[1:]],
                activation=cfg.activation,
            )
            for shape, target in zip(shapes, targets, strict=True)
        )

    def upsample(self, d: Tensor, scales: Iterable[int]) -> Tensor:
        """Run the stacks `up[j]` for j in `scales` (deepest first)."""
        for j in scales:
            d, _ = self.up[j](d)
        return d


class DAGVAE(AncestralModel):
    def __init__(self, cfg: DAGVAEConfig, spec: TaskSpec):
        super().__init__()
        self.spec = spec
        self.order = concept_nodes(cfg, spec)
        self.head = get_likelihood(spec.likelihood, spec.shape[0], cfg.mixtures)
        self.trunk = SpatialTrunk(spec.shape, cfg)
        scales = len(cfg.widths)
        self.residual_scale = self._scale(cfg.residual_scale, scales, "model.residual_scale")
        names = [n.name for n in self.order]
        if cfg.residual and RESIDUAL_GROUP in names:
            raise UserError(f"node name {RESIDUAL_GROUP!r} is taken by the residual latent group")
        act = cfg.activation
        depth = levels(self.order)
        # units per DAG level, roots first: the widths of the mirrored trunk's layers
        self.level_widths = [
            sum(n.dims for n in self.order if depth[n.name] == level)
            for level in range(max(depth.values()) + 1)
        ]
        self.reader = self._reader(cfg, scales, depth)
        dims = {n.name: n.dims for n in self.order}
        self.heads = nn.ModuleList()
        self.priors = nn.ModuleList()
        for node, source in zip(self.order, self.reader.sources, strict=True):
            parent_dims = sum(dims[p] for p in node.parents)
            width = self.reader.widths[source]
            self.heads.append(_mlp(width + parent_dims, cfg.head_hidden, 2 * node.dims, act))
            self.priors.append(
                _mlp(parent_dims, cfg.prior_hidden, 2 * node.dims, act)
                if node.parents
                else nn.Identity()
            )
        self.decoder = Decoder(spec.shape, self.trunk.shapes, sum(dims.values()), cfg)
        if cfg.residual:
            shape = self.trunk.shapes[self.residual_scale]
            self.residual_estimate = LatentParams(shape, cfg.residual, True, act)
            self.residual_prior = LatentParams(shape, cfg.residual, True, act)
            self.residual_features = LatentToFeatures(cfg.residual, shape, spatial=True)
        self.residual = cfg.residual
        self.out = output_layer(cfg.widths[0], self.head.out_channels, act)
        # E_q[z | x] is one pass only when no posterior reads a sample
        self.posterior_mean_is_exact = not cfg.residual and all(not n.parents for n in self.order)

    # ---- building -------------------------------------------------------------------------
    @staticmethod
    def _scale(index: int, scales: int, key: str) -> int:
        if not -scales <= index < scales:
            raise UserError(
                f"{key} is {index}, but the trunk has {scales} scales: use 0..{scales - 1} "
                f"or -{scales}..-1"
            )
        return index % scales

    def _reader(
        self, cfg: DAGVAEConfig, scales: int, depth: dict[str, int]
    ) -> PooledScales | MirroredLevels:
        """What the heads read from the trunk: the one place the ablation differs."""
        if cfg.trunk == "mirrored":
            levels_of = [depth[n.name] for n in self.order]
            return MirroredLevels(
                self.trunk.shapes[-1], cfg.pool, self.level_widths, levels_of, cfg.activation
            )
        node_scales = [
            self._scale(
                cfg.head_scale if n.scale is None else n.scale, scales, f"node {n.name!r} scale"
            )
            for n in self.order
        ]
        return PooledScales(self.trunk.shapes, cfg.pool, node_scales)

    # ---- inference ------------------------------------------------------------------------
    def features(self, x: Tensor) -> list[Tensor]:
        """What inference reads from x before anything is sampled: the heads' inputs (per
        trunk scale, or per mirrored level), then the residual scale's map if any."""
        maps = self.trunk(self.head.prepare(x))
        out = self.reader(maps)
        if self.residual:
            out.append(maps[self.residual_scale])
        return out

    def conditionals(
        self, i: int, features: list[Tensor] | None, z: dict[str, Tensor], n: int
    ) -> tuple[DiagonalGaussian | None, DiagonalGaussian]:
        """(q, p) of node `order[i]` given the samples `z` (only its parents are read); q is None
        without features (sampling from the prior)."""
        node = self.order[i]
        parents = torch.cat([z[p] for p in node.parents], 1) if node.parents else None
        if parents is None:
            p = self.standard_prior(n, (node.dims,))
        else:
            p = DiagonalGaussian.from_params(self.priors[i](parents))
        if features is None:
            return None, p
        read = features[self.reader.sources[i]]
        q_in = read if parents is None else torch.cat([read, parents], 1)
        return DiagonalGaussian.from_params(self.heads[i](q_in)), p

    def ancestral_pass(
        self, features: list[Tensor] | None, n: int
    ) -> tuple[Tensor, dict[str, LatentSample]]:
        """Ancestral pass over the concepts in topological order, then the decoder."""
        groups: dict[str, LatentSample] = {}
        z: dict[str, Tensor] = {}
        for i, node in enumerate(self.order):
            q, p = self.conditionals(i, features, z, n)
            if q is None:
                z[node.name] = p.rsample()
            else:
                groups[node.name] = draw(q, p)
                z[node.name] = groups[node.name].z
        concepts = torch.cat([z[node.name] for node in self.order], 1)
        at, deepest = self.residual_scale, len(self.decoder.up) - 1
        d = self.decoder.upsample(self.decoder.project(concepts), range(deepest, at, -1))
        if self.residual:
            d, residual = self._add_residual(d, features)
            if residual is not None:
                groups[RESIDUAL_GROUP] = residual
        d = self.decoder.upsample(d, range(at, -1, -1))
        return self.out(d), groups

    def _add_residual(
        self, d: Tensor, features: list[Tensor] | None
    ) -> tuple[Tensor, LatentSample | None]:
        """The spatial residual group at the decoder's map `d`: its prior reads `d` (the
        concepts), its posterior merges that prior with the bottom-up estimate; None when
        sampling from the prior."""
        p = self.residual_prior(d)
        if features is None:
            return d + self.residual_features(p.rsample()), None
        q = merge_precision_weighted(self.residual_estimate(features[-1]), p)
        residual = draw(q, p)
        return d + self.residual_features(residual.z), residual


@register_model(
    "dagvae",
    config=DAGVAEConfig,
    description="DAG-VAE (this project): concept-DAG latents read from a spatial CNN trunk",
)
def build_dagvae(cfg: DAGVAEConfig, spec: TaskSpec) -> DAGVAE:
    return DAGVAE(cfg, spec)
