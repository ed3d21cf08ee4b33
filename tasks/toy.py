"""Synthetic tasks with known factors: `toy-corr` and `toy-uncorr`.

The structural causal model (SCM). Five factors, each a number in [0, 1]:

    size ─┬─► x ─┐
          └─► y ─┴─► brightness ─► angle

Every factor v has a latent Gaussian score s_v. Roots: s_v = ε_v. A child:
s_v = ρ · Σ_p s_p / sd(Σ_p s_p) + sqrt(1 − ρ²) · ε_v, with ε_v ~ N(0, 1) and
ρ = `correlation`, so every s_v is exactly N(0, 1) and the factor Φ(s_v) is
exactly Uniform(0, 1). `toy-uncorr` draws every s_v independently: the same
marginals, no dependence. The scores' covariance is known in closed form
(`score_covariance`), hence so is every factor correlation:
corr(Φ(s_a), Φ(s_b)) = (6/π)·arcsin(Σ_ab / 2).

Rendering: one elongated Gaussian blob (aspect 2.5:1) on a black square;
factors set its size, centre, peak brightness and orientation; then seeded
pixel noise of sd `noise` keeps the Gaussian likelihood bounded. Each split
has its own seed, so changing n_train never changes the test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from hvbench.errors import UserError
from hvbench.options import AT_LEAST_1, SEED, Range, option
from hvbench.registry import register_task
from hvbench.task import TaskData, TaskSpec

GENERATOR_VERSION = "toy-v1"
FACTORS = ("size", "x", "y", "brightness", "angle")
DAG: dict[str, tuple[str, ...]] = {
    "size": (),
    "x": ("size",),
    "y": ("size",),
    "brightness": ("x", "y"),
    "angle": ("brightness",),
}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}
MAX_NOISE = 10.0  # the images lie in [0, 1]: beyond this sd there is nothing but noise
NOISE = Range(
    lambda v: math.isfinite(v) and 0 <= v <= MAX_NOISE, f"a finite number in [0, {MAX_NOISE}]"
)


@dataclass(frozen=True)
class ToyConfig:
    n_train: int = option(20_000, range=AT_LEAST_1)
    n_val: int = option(2_000, range=AT_LEAST_1)
    n_test: int = option(5_000, range=AT_LEAST_1)
    image_size: int = option(32, range=AT_LEAST_1)
    # pixel noise sd: finite but huge (1e300) is inf in float32, a run of NaN losses
    noise: float = option(0.05, range=NOISE)
    seed: int = option(1234, range=SEED)


@dataclass(frozen=True)
class ToyCorrConfig(ToyConfig):
    correlation: float = 0.8  # ρ of every edge; |ρ| < 1


def score_covariance(correlation: float, dag: dict[str, tuple[str, ...]] = DAG) -> torch.Tensor:
    """Exact covariance of the Gaussian scores implied by the SCM (factor order = dag order)."""
    names = list(dag)
    cov = torch.eye(len(names), dtype=torch.float64)
    for i, name in enumerate(names):
        parents = [names.index(p) for p in dag[name]]
        if not parents:
            continue
        w = torch.zeros(len(names), dtype=torch.float64)
        w[parents] = 1.0
        weights = correlation * w / torch.sqrt(w @ cov @ w)  # s_i = weights·s + noise
        cross = cov @ weights
        cov[i, :] = cov[:, i] = cross
        cov[i, i] = 1.0
    return cov


def sample_scores(n: int, correlation: float | None, generator: torch.Generator) -> torch.Tensor:
    """(n, K) Gaussian scores in topological order; `correlation=None` → independent."""
    eps = torch.randn(n, len(FACTORS), generator=generator, dtype=torch.float64)
    if correlation is None:
        return eps
    cov = score_covariance(correlation)
    s = torch.zeros_like(eps)
    for i, name in enumerate(FACTORS):
        parents = [FACTORS.index(p) for p in DAG[name]]
        if not parents:
            s[:, i] = eps[:, i]
            continue
        total_sd = torch.sqrt(cov[parents][:, parents].sum())
        s[:, i] = (
            correlation * s[:, parents].sum(1) / total_sd
            + math.sqrt(1 - correlation**2) * eps[:, i]
        )
    return s


def render(
    factors: torch.Tensor, size: int, noise: float, generator: torch.Generator
) -> torch.Tensor:
    """(n, 5) factors in [0, 1] → (n, 1, size, size) float32 images, vectorised."""
    f = factors.to(torch.float32)
    scale, cx, cy, bright, angle = (f[:, i].view(-1, 1, 1) for i in range(5))
    sigma = (0.06 + 0.08 * scale) * size  # short semi-axis in pixels
    cx, cy = (0.25 + 0.5 * cx) * size, (0.25 + 0.5 * cy) * size
    theta = math.pi * angle
    grid = torch.arange(size, dtype=torch.float32) + 0.5
    dy, dx = grid.view(1, -1, 1) - cy, grid.view(1, 1, -1) - cx
    along = dx * torch.cos(theta) + dy * torch.sin(theta)
    across = -dx * torch.sin(theta) + dy * torch.cos(theta)
    blob = torch.exp(-0.5 * ((along / (2.5 * sigma)).square() + (across / sigma).square()))
    images = (0.3 + 0.7 * bright) * blob
    images = images + noise * torch.randn(images.shape, generator=generator)
    return images.unsqueeze(1)


def make_split(
    cfg: ToyConfig, correlation: float | None, split: str, n: int
) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(cfg.seed * 10 + SPLIT_SEEDS[split])
    scores = sample_scores(n, correlation, generator)
    factors = 0.5 * (1 + torch.erf(scores / math.sqrt(2)))  # Φ(s): Uniform(0, 1) marginals
    return render(factors, cfg.image_size, cfg.noise, generator), factors.float()


def build_toy(name: str, cfg: ToyConfig, correlation: float | None) -> TaskData:
    sizes = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}
    made = {split: make_split(cfg, correlation, split, n) for split, n in sizes.items()}
    strength = "independent" if correlation is None else f"correlation={correlation}"
    return TaskData(
        name=name,
        spec=TaskSpec(shape=(1, cfg.image_size, cfg.image_size), likelihood="gaussian", dag=DAG),
        splits={split: images for split, (images, _) in made.items()},
        factors={split: factors for split, (_, factors) in made.items()},
        factor_names=FACTORS,
        source=f"{GENERATOR_VERSION}(seed={cfg.seed}, {strength}, noise={cfg.noise})",
    )


def sample_toy(folder: Path) -> dict[str, object]:
    return {"n_train": 64, "n_val": 32, "n_test": 32}


@register_task(
    "toy-corr",
    config=ToyCorrConfig,
    description="5 factors from a known causal DAG, rendered to 1×32×32 blobs",
    sample=sample_toy,
)
def load_toy_corr(cfg: ToyCorrConfig, cache_dir: Path) -> TaskData:
    if not -1 < cfg.correlation < 1:
        raise UserError(f"task.correlation must lie in (-1, 1), got {cfg.correlation}")
    return build_toy("toy-corr", cfg, cfg.correlation)


@register_task(
    "toy-uncorr",
    config=ToyConfig,
    description="the toy-corr factors drawn independently (same marginals)",
    sample=sample_toy,
)
def load_toy_uncorr(cfg: ToyConfig, cache_dir: Path) -> TaskData:
    return build_toy("toy-uncorr", cfg, None)
