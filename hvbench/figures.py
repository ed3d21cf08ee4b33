"""The pictures a run leaves behind: what people look at before the numbers.

Reconstructions, prior samples, histograms of posterior means, KL per unit
(grouped, with the collapse threshold drawn), training curves, and the
factor × unit |Spearman| matrix. Each function writes one PNG atomically and
returns its path.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import einops
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from torch import Tensor

from hvbench.atomic import write_atomic

MAX_UNIT_LABELS = 64  # factor × unit matrix: more unit names than this would overlap


def to_display(x: Tensor, likelihood: str) -> Tensor:
    """Raw task data → float images in [0, 1]."""
    x = x.float()
    return (x / 255.0 if likelihood == "dlogistic" else x).clamp(0, 1).cpu()


def _save(fig: plt.Figure, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
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
        ax.imshow(mosaic[..., 0].numpy(), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(mosaic.numpy())
    ax.axis("off")


def reconstruction_grid(
    originals: Tensor, reconstructions: Tensor, path: Path, columns: int = 8
) -> Path:
    """Rows of originals, each followed by its row of reconstructions."""
    n = (min(len(originals), 4 * columns) // columns) * columns or len(originals)
    pairs = []
    for start in range(0, n, columns):
        pairs += [originals[start : start + columns], reconstructions[start : start + columns]]
    fig, ax = plt.subplots(figsize=(columns, len(pairs)))
    _show(ax, _tile(torch.cat(pairs), columns))
    ax.set_title("originals (odd rows) and reconstructions (even rows)")
    return _save(fig, path)


def sample_grid(samples: Tensor, path: Path, columns: int = 8) -> Path:
    fig, ax = plt.subplots(figsize=(columns, -(-len(samples) // columns)))
    _show(ax, _tile(samples, columns))
    ax.set_title("samples from the prior (decoder means)")
    return _save(fig, path)


def latent_histograms(post_means: dict[str, Tensor], path: Path, max_panels: int = 24) -> Path:
    """Histogram of E_q[z_u | x] over the split for the first units of each group."""
    panels = []
    for group, means in post_means.items():
        flat = means.flatten(2).mean(-1) if means.dim() > 2 else means
        per_group = max(1, max_panels // len(post_means))
        panels += [(f"{group}[{u}]", flat[:, u]) for u in range(min(flat.shape[1], per_group))]
    columns = min(6, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 1.8 * rows), squeeze=False)
    for ax, (name, values) in zip(axes.flat, panels, strict=False):
        ax.hist(values.float().numpy(), bins=40, color="tab:blue")
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    fig.suptitle("posterior means over the evaluation split")
    return _save(fig, path)


def kl_per_unit(units: dict[str, dict[str, Any]], threshold: float, path: Path) -> Path:
    """Bars of mean KL per unit, one colour per group; units under the threshold are collapsed.

    A group whose term is a single-sample rate (not a KL: it can be negative) is drawn
    hatched and labelled as a rate, so no reader takes it for a KL.
    """

    def terms(stats: dict[str, Any]) -> list[float]:
        return stats["kl_nats"] if "kl_nats" in stats else stats["rate_nats"]

    fig, ax = plt.subplots(figsize=(max(6, 0.12 * sum(len(terms(u)) for u in units.values())), 3))
    offset = 0
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
    ax.axhline(threshold, color="k", linestyle="--", linewidth=0.8, label=f"collapse < {threshold}")
    ax.set_yscale("symlog", linthresh=threshold)
    ax.set_xlabel("latent unit (spatial groups: one bar per channel)")
    ax.set_ylabel("KL or rate term (nats)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, path)


def training_curves(history: list[dict[str, float]], path: Path) -> Path:
    fig, axes = plt.subplots(1, 3, figsize=(12, 3))
    steps = [h["step"] for h in history]
    for ax, key, title in zip(
        axes,
        ("train/loss", "train/elbo_nats", "train/kl_nats"),
        ("loss", "ELBO (nats)", "KL (nats)"),
        strict=True,
    ):
        ax.plot(steps, [h.get(key, float("nan")) for h in history], label="train")
        if key == "train/elbo_nats":
            val = [(h["step"], h["val/elbo_nats"]) for h in history if "val/elbo_nats" in h]
            if val:
                ax.plot(*zip(*val, strict=True), "o-", label="val")
                ax.legend(fontsize=7)
        ax.set_title(title)
        ax.set_xlabel("step")
    return _save(fig, path)


def factor_unit_matrix(
    matrix: Tensor, factor_names: list[str], unit_names: list[str], path: Path
) -> Path:
    """Heatmap of |Spearman| between every ground-truth factor and every latent unit.

    The "which unit encodes which concept" picture: a disentangled model shows
    one bright cell per row; a collapsed unit is a dark column.
    """
    k, d = matrix.shape
    fig, ax = plt.subplots(figsize=(min(24, max(4, 0.35 * d + 2)), min(16, max(2, 0.4 * k + 1))))
    image = ax.imshow(matrix.numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(k), factor_names, fontsize=8)
    every = -(-d // MAX_UNIT_LABELS)  # past that many units, label every n-th
    ax.set_xticks(range(0, d, every), unit_names[::every], rotation=90, fontsize=7)
    ax.set_xlabel("latent unit")
    fig.colorbar(image, ax=ax, label="|Spearman ρ|")
    return _save(fig, path)
