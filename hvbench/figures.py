"""The pictures a run leaves behind: what people look at before the numbers.

Reconstructions, prior samples, histograms of posterior means (with the
prior for reference), KL per unit (grouped, with the collapse threshold
drawn), training curves, and the factor × unit |Spearman| matrix (inactive
units marked). Units are named `group[i]` in every figure. Each function
writes one PNG atomically (small: the report inlines them) and returns its
path.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import einops
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.layout_engine import ConstrainedLayoutEngine
from matplotlib.patches import Rectangle
from torch import Tensor

from hvbench.atomic import write_atomic

MAX_UNIT_LABELS = 64  # factor × unit matrix: more unit names than this would overlap
# pixel values (C·H·W summed over images) one mosaic shows: 32×32 grey images fill 4 rows of 8
# twice over, 64×64 colour ones 2 rows; keeps each PNG near or under 150 KB, since the report
# inlines them and W&B stores them per run
MOSAIC_VALUES = 2**18


def to_display(x: Tensor, likelihood: str) -> Tensor:
    """Raw task data → float images in [0, 1]."""
    x = x.float()
    return (x / 255.0 if likelihood == "dlogistic" else x).clamp(0, 1).cpu()


def _save(fig: plt.Figure, path: Path) -> Path:
    """The PNG, written atomically. A constrained layout already fits the figure to its
    contents; trimming it again ("tight") would draw every text twice, the dearest part of a
    run's figures."""
    buffer = io.BytesIO()
    fitted = isinstance(fig.get_layout_engine(), ConstrainedLayoutEngine)
    fig.savefig(buffer, format="png", dpi=100, bbox_inches=None if fitted else "tight")
    plt.close(fig)
    write_atomic(path, lambda f: f.write(buffer.getvalue()))
    return path


def _tile(images: Tensor, columns: int) -> Tensor:
    """(N, C, H, W) → one (rows·(H+1), columns·(W+1), C) mosaic: a 1-pixel white gap after
    every image, blank cells after the last."""
    n, c, h, w = images.shape
    cells = torch.ones(-(-n // columns) * columns, c, h + 1, w + 1)
    cells[:n, :, :h, :w] = images
    return einops.rearrange(cells, "(rows cols) c h w -> (rows h) (cols w) c", cols=columns)


def _show(ax: plt.Axes, mosaic: Tensor) -> None:
    if mosaic.shape[-1] == 1:
        ax.imshow(mosaic[..., 0].numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(mosaic.numpy(), interpolation="nearest")
    ax.axis("off")


def _mosaic_figure(mosaic: Tensor) -> tuple[plt.Figure, plt.Axes]:
    """A figure showing `mosaic` at a whole number of screen pixels per image pixel, about 520
    wide: sharp without interpolation, and a small PNG (upscaled blur compresses badly)."""
    height, width = mosaic.shape[:2]
    scale = max(1, round(520 / width))
    dpi = 100
    fig, ax = plt.subplots(figsize=(width * scale / dpi, height * scale / dpi + 0.3), dpi=dpi)
    return fig, ax


def reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: Path, columns: int = 8
) -> Path:
    """Rows of originals, each followed by its row of reconstructions (at most four pairs,
    fewer for large images)."""
    pairs_fit = max(1, MOSAIC_VALUES // (2 * columns * originals[0].numel()))
    n = (min(len(originals), min(4, pairs_fit) * columns) // columns) * columns or len(originals)
    pairs = []
    for start in range(0, n, columns):
        pairs += [originals[start : start + columns], reconstructions[start : start + columns]]
    mosaic = _tile(torch.cat(pairs), columns)
    fig, ax = _mosaic_figure(mosaic)
    _show(ax, mosaic)
    ax.set_title("originals (odd rows) and reconstructions (even rows)", fontsize=9)
    return _save(fig, path)


def sample_grid(samples: Tensor, path: Path, columns: int = 8) -> Path:
    """Rows of prior samples: at most four, fewer for large images."""
    rows = max(1, min(4, MOSAIC_VALUES // (columns * samples[0].numel())))
    mosaic = _tile(samples[: rows * columns], columns)
    fig, ax = _mosaic_figure(mosaic)
    _show(ax, mosaic)
    ax.set_title("samples from the prior (decoder means)", fontsize=9)
    return _save(fig, path)


def latent_histograms(post_means: dict[str, Tensor], path: Path, max_panels: int = 24) -> Path:
    """Histogram of E_q[z_u | x] over the split for the first units of each group, with the
    standard normal drawn for reference (a root group's prior; scaled to each panel's peak):
    a unit whose means sit in a narrow spike barely moves with x."""
    panels = []
    for group, means in post_means.items():
        flat = means.flatten(2).mean(-1) if means.dim() > 2 else means
        per_group = max(1, max_panels // len(post_means))
        panels += [(f"{group}[{u}]", flat[:, u]) for u in range(min(flat.shape[1], per_group))]
    columns = min(6, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(2.3 * columns, 2.0 * rows + 0.6), squeeze=False, layout="constrained"
    )
    for ax, (name, values) in zip(axes.flat, panels, strict=False):
        v = values.float().numpy()
        low, high = min(float(v.min()), -3.0), max(float(v.max()), 3.0)
        # bins over the panel's range, which holds ±3: a unit whose means are all equal (a
        # collapsed one) is a spike in one bin, not a range too narrow for 40 bins
        heights, edges = np.histogram(v, bins=40, range=(low, high), density=True)
        ax.stairs(heights, edges, fill=True, color="tab:blue", zorder=2)  # one artist, not 40 bars
        grid = torch.linspace(low, high, 200)
        prior = torch.exp(-0.5 * grid**2)  # N(0, 1) up to its constant: scaled to the peak below
        ax.plot(grid.numpy(), (prior * float(max(heights.max(), 1e-12))).numpy(), color="0.5", lw=1)
        ax.set_xlim(low, high)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("E_q[z_u | x]", fontsize=6, labelpad=1)
        ax.tick_params(labelsize=6)
    for ax in axes[:, 0]:
        ax.set_ylabel("density", fontsize=7)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        "posterior means over the evaluation split (blue); grey: N(0, 1), a root group's prior, "
        "scaled to the peak",
        fontsize=9,
    )
    return _save(fig, path)


def kl_per_unit(
    units: dict[str, dict[str, Any]], threshold: float, path: Path, max_labels: int = 64
) -> Path:
    """Bars of mean KL per unit, named `group[i]` as in the other figures, one colour per
    group; units under the threshold are collapsed.

    The y axis is logarithmic down to a floor a decade under the smallest unit (linear below
    it, so a zero or a negative rate term still shows): no unit's bar hides at the bottom. A
    group whose term is a single-sample rate (not a KL: it can be negative) is drawn hatched
    and labelled as a rate, so no reader takes it for a KL.
    """

    def terms(stats: dict[str, Any]) -> list[float]:
        return stats["kl_nats"] if "kl_nats" in stats else stats["rate_nats"]

    def unit_names(group: str, stats: dict[str, Any]) -> list[str]:
        whole = len(terms(stats)) == 1 and len(stats.get("activity", [0])) > 1
        return [group] if whole else [f"{group}[{i}]" for i in range(len(terms(stats)))]

    # a group whose density does not factor over its units has one term, named by the group
    names = [name for g, stats in units.items() for name in unit_names(g, stats)]
    fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names) + 2), 3.2))
    offset, smallest = 0, threshold
    for i, (group, stats) in enumerate(units.items()):
        values, rate = terms(stats), "kl_nats" not in stats
        ax.bar(
            range(offset, offset + len(values)),
            values,
            color=f"C{i % 10}",
            hatch="//" if rate else None,
            label=f"{group} (rate term, not a KL)" if rate else group,
        )
        offset += len(values)
        smallest = min([smallest, *(abs(v) for v in values if v)])
    floor = 10 ** math.floor(math.log10(max(smallest, 1e-8))) / 10
    ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8, label=f"collapse < {threshold}")
    ax.set_yscale("symlog", linthresh=floor)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    every = -(-len(names) // max_labels)
    ax.set_xticks(range(0, len(names), every), names[::every], rotation=90, fontsize=7)
    ax.set_xlabel("latent unit (a spatial group's unit is a channel)")
    ax.set_ylabel("KL or rate term (nats)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    steps = [h["step"] for h in history]
    for ax, key, title in zip(
        axes,
        ("train/loss", "train/elbo_nats", "train/kl_nats"),
        ("training loss (β, w_rec, free bits applied)", "ELBO", "KL, all groups"),
        strict=True,
    ):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], label="train")
        if key == "train/elbo_nats":
            val = [(h["step"], h["val/elbo_nats"]) for h in history if "val/elbo_nats" in h]
            if val:
                ax.plot(*zip(*val, strict=True), "o-", label="val")
                ax.legend(fontsize=7)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel("nats per example")
    fig.tight_layout()
    return _save(fig, path)


def factor_unit_matrix(
    matrix: Tensor,
    factor_names: list[str],
    unit_names: list[str],
    path: Path,
    inactive: list[bool] | None = None,
) -> Path:
    """Heatmap of |Spearman| between every ground-truth factor and every latent unit.

    The "which unit encodes which concept" picture: a disentangled model shows
    one bright cell per row. An inactive unit (Burda's criterion: its E_q[z|x]
    barely moves with x) can still rank with a factor, |ρ| ≈ 0.9 on a tiny
    range, so its column is hatched and its name greyed: read it as "no code".
    """
    k, d = matrix.shape
    inactive = inactive or [False] * d
    fig, ax = plt.subplots(figsize=(min(24, max(4, 0.35 * d + 2)), min(16, max(2.4, 0.4 * k + 1.4))))
    image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    for j in (j for j, off in enumerate(inactive) if off):
        ax.add_patch(Rectangle((j - 0.5, -0.5), 1, k, fill=False, hatch="//", ec=(1, 1, 1, 0.5), lw=0))
    ax.set_yticks(range(k), factor_names, fontsize=8)
    ax.set_ylabel("factor")
    every = -(-d // MAX_UNIT_LABELS)  # past that many units, label every n-th
    ax.set_xticks(range(0, d, every), unit_names[::every], rotation=90, fontsize=7)
    for label, off in zip(ax.get_xticklabels(), inactive[::every], strict=True):
        if off:
            label.set_color("0.55")
    ax.set_xlabel("latent unit" + (" (hatched, grey: inactive)" if any(inactive) else ""))
    fig.colorbar(image, ax=ax, label="|Spearman ρ|")
    return _save(fig, path)
