"""What a task hands the harness: in-memory splits plus what the metrics need to know.

A task is declared, not subclassed (lm-evaluation-harness): a module in
`tasks/` registers a loader `load(cfg, cache_dir) -> TaskData` with
`@register_task`. A split is a whole tensor, so that on a GPU it lives on the
device and a batch is one index gather, or anything indexed like one (`Split`):
a 🤗 dataset larger than memory stays memory-mapped on disk (`tasks/_arrow.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch

Likelihood = Literal["bernoulli", "gaussian", "dlogistic"]


class Split(Protocol):
    """What the training loop and the evaluation use of a split: a (N, C, H, W) tensor has it,
    and so has a split left on disk (`MappedSplit`, tasks/_arrow.py)."""

    @property
    def shape(self) -> torch.Size: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def __len__(self) -> int: ...

    def __getitem__(self, index: Any) -> torch.Tensor:
        """Rows as a tensor, for an index tensor, array, slice or int."""
        ...

    def to(self, device: torch.device | str) -> Split:
        """The split for a device (a split on disk stays there; its batches are moved)."""
        ...


@dataclass(frozen=True)
class TaskSpec:
    """The part of a task a model is built from: nothing data-sized."""

    shape: tuple[int, int, int]  # (C, H, W)
    likelihood: Likelihood
    # ground-truth causal graph over factors: factor -> its parents (toy tasks)
    dag: dict[str, tuple[str, ...]] | None = None

    @property
    def dims(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True)
class TaskData:
    """A loaded task.

    `splits[name]` is (N, C, H, W), a tensor or a `Split` indexed like one: uint8 for
    binary ({0, 1}) and 8-bit ({0..255}) images, float32 for continuous data. `factors[name]` is (N, K)
    float32 ground truth in the order of `factor_names`. `source` records where
    the numbers came from (a generator version or a file hash), and
    `eval_splits` which splits the final evaluation reports.
    """

    name: str
    spec: TaskSpec
    splits: dict[str, Split]
    source: str
    factor_names: tuple[str, ...] = ()
    factors: dict[str, torch.Tensor] = field(default_factory=dict)
    eval_splits: tuple[str, ...] = ("test",)
    # factors that are categorical (e.g. dSprites shape), for disentanglement metrics
    discrete_factors: tuple[str, ...] = ()
    # the split published numbers are reported on, when it is not the ranked (last) one:
    # the leaderboard shows −IWAE bits/dim there, beside the ranked split's numbers
    reference_split: str | None = None

    def __post_init__(self) -> None:
        for split, x in self.splits.items():
            if tuple(x.shape[1:]) != self.spec.shape:
                raise ValueError(
                    f"split {split!r} has shape {tuple(x.shape)}, not (N, *{self.spec.shape})"
                )
            if split in self.factors and len(self.factors[split]) != len(x):
                raise ValueError(
                    f"split {split!r}: {len(self.factors[split])} factor rows for {len(x)} images"
                )

    @property
    def discrete_data(self) -> bool:
        """Bits/dim only means something for a discrete likelihood on quantised data."""
        return self.spec.likelihood == "dlogistic"
