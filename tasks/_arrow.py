"""A 🤗 dataset's image column left on disk: zero-copy numpy views of its memory-mapped
Arrow chunks, validated and hashed chunk by chunk, and splits indexed like tensors.

`datasets.load_from_disk` memory-maps the Arrow files, so the pages of a column are
the kernel's page cache, read on demand and dropped under memory pressure; only
what is copied out (a batch, one chunk being validated) is the process's own
memory. A `MappedSplit` keeps the contract the training loop and the evaluation
use on a tensor split: `len(split)`, `split.shape`, `split[index]` returning a
tensor (an index tensor, array, slice or int), and `.to(device)`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

# values checked per call: the in-memory check's temporaries (up to 8 bytes a value) stay small
CHECK_VALUES = 2**20


def column_views(data: Any, column: str) -> list[np.ndarray] | None:
    """(rows, *shape) zero-copy views of each Arrow chunk of a numeric column of fixed-shape
    nested lists; None where that is impossible (booleans are bit-packed, nulls, ragged
    rows, an index mapping on the dataset): such a column is read whole instead."""
    import pyarrow as pa

    if getattr(data, "_indices", None) is not None:
        return None
    views = []
    for chunk in data.data.table.column(column).chunks:
        if isinstance(chunk, pa.ExtensionArray):  # 🤗 ArrayND features
            chunk = chunk.storage
        shape: list[int] = []
        while pa.types.is_list(chunk.type) or pa.types.is_large_list(chunk.type):
            if chunk.null_count:
                return None
            lengths = chunk.value_lengths().to_numpy(zero_copy_only=False)
            if len(lengths) and (lengths != lengths[0]).any():
                return None
            shape.append(int(lengths[0]) if len(lengths) else 0)
            chunk = chunk.flatten()
        if not (pa.types.is_integer(chunk.type) or pa.types.is_floating(chunk.type)):
            return None
        if chunk.null_count:
            return None
        values = chunk.to_numpy(zero_copy_only=True)
        views.append(values.reshape(-1, *shape))
    shapes = {v.shape[1:] for v in views if len(v)}
    return views if len(shapes) <= 1 else None


class MappedImages:
    """Every image of the column, as the chunks' views; `dtype` is what a gather returns (the
    source dtype until `validated` fixes the converted one)."""

    def __init__(self, views: list[np.ndarray], dtype: np.dtype | None = None):
        self.views = [v for v in views if len(v)] or views[:1]
        self.starts = np.cumsum([0] + [len(v) for v in self.views])
        self.dtype = np.dtype(dtype or self.views[0].dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return (int(self.starts[-1]), *self.views[0].shape[1:])

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(self) -> np.ndarray:
        """The whole column in memory, as an npz would have it."""
        return np.concatenate(self.views)

    def validated(
        self, check: Callable[[np.ndarray, str], tuple[np.ndarray, str]], origin: str
    ) -> tuple[MappedImages, str]:
        """Run the in-memory `check` (which converts and picks the likelihood) on each chunk;
        the column is binary only if every chunk is. Returns N×C×H×W images of the converted
        dtype and the likelihood."""
        found = {}
        step = max(1, CHECK_VALUES // max(1, int(np.prod(self.shape[1:]))))
        for start, view in zip(self.starts, self.views, strict=False):
            for a in range(0, len(view), step):
                block = view[a : a + step]
                rows = f"{origin} (rows {start + a}-{start + a + len(block) - 1})"
                converted, likelihood = check(block, rows)
                found[likelihood] = converted.dtype
        likelihood = next((k for k in found if k != "bernoulli"), "bernoulli")
        views = [v.reshape(len(v), 1, *v.shape[1:]) if v.ndim == 3 else v for v in self.views]
        return MappedImages(views, found[likelihood]), likelihood

    def chunks(self) -> Iterator[np.ndarray]:
        """The converted images chunk by chunk, in row order (for hashing)."""
        for view in self.views:
            yield view.astype(self.dtype, copy=False)

    def gather(self, rows: np.ndarray) -> np.ndarray:
        """Images at global row positions `rows`, copied out of the mapped chunks."""
        out = np.empty((len(rows), *self.shape[1:]), dtype=self.dtype)
        chunk = np.searchsorted(self.starts, rows, side="right") - 1
        order = np.argsort(chunk, kind="stable")
        first = np.flatnonzero(np.diff(chunk[order], prepend=-1))
        for a, b in zip(first, [*first[1:], len(order)], strict=True):
            picked = order[a:b]
            c = chunk[picked[0]]
            out[picked] = self.views[c][rows[picked] - self.starts[c]]
        return out

    def split(self, rows: np.ndarray) -> MappedSplit:
        return MappedSplit(self, np.asarray(rows, dtype=np.int64))


class MappedSplit:
    """Rows of a `MappedImages`, indexed like the (N, C, H, W) tensor of an in-memory split."""

    def __init__(self, images: MappedImages, rows: np.ndarray):
        self.images, self.rows = images, rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.images.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return torch.from_numpy(np.empty(0, self.images.dtype)).dtype

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, torch.Tensor):
            index = index.cpu().numpy()
        rows = self.rows[index]
        if np.ndim(rows) == 0:
            return torch.from_numpy(self.images.gather(np.array([rows]))[0])
        return torch.from_numpy(self.images.gather(rows))

    def to(self, device: torch.device | str) -> MappedSplit:
        """The split stays on disk whatever the device: each batch is gathered on the host and
        moved by the loop (`split[index].to(device)`), as a tensor split's batch is."""
        return self
