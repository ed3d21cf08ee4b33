"""Disentanglement against ground-truth factors (docs/design.md §6): MIG, DCI with a lasso, |Spearman|.

Pure torch, so the harness needs no scikit-learn. Conventions:
- *codes* are (N, D): every latent unit of every group, groups in their dict
  order; a spatial group (N, C, H, W) gives one unit per channel, its mean
  over positions (a choice: the same "unit = channel" as the collapse metrics).
- *factors* are (N, K); `discrete` marks the categorical ones, whose values
  are used as classes. So, for MIG, are the factors with at most GRID_CLASSES
  distinct values: a factor grid's levels (dSprites' 40 orientations, 32
  positions) are its classes in disentanglement_lib, and 20 equal-width bins
  would merge some of them unevenly. Continuous factors are binned like the codes.
- A number that is undefined for the data (too few units, every factor
  constant) is NaN, never a made-up 0 or 1; each function says when.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

BINS = 20  # disentanglement_lib's MIG discretisation
LASSO_ALPHA = 0.02  # on standardised codes and targets: |corr| below this gets no weight
LASSO_MAX_ITER = 5000
LASSO_TOL = 1e-6
# a column whose values span less than this fraction of their magnitude is constant (DCI)
CONSTANT_TOLERANCE = 1e-9
HOLDOUT_EVERY = 5  # DCI: examples 4, 9, 14, … (every fifth) are its held-out part
GRID_CLASSES = 64  # MIG: a factor with at most this many distinct values is used by class
ENTROPY_EPS = 1e-11  # as disentanglement_lib adds to importances before taking entropies
# DCI: a factor whose held-out R² is at or below r2_floor(n) is not predicted by the codes, so
# its lasso weights are noise and it enters neither disentanglement nor completeness
MIN_R2 = 0.05


def r2_floor(held_out: int) -> float:
    """The held-out R² a factor must beat: MIN_R2, or three standard errors of the R² that
    pure noise reaches on `held_out` examples (≈ √(2/n) for Gaussian residuals), if larger."""
    return max(MIN_R2, 3 * math.sqrt(2 / held_out))


def latent_units(post_means: dict[str, Tensor]) -> Tensor:
    """group → (N, units[, H, W]) posterior means → (N, D) float64 codes, groups in order."""
    return torch.cat(
        [m.flatten(2).mean(-1) if m.dim() > 2 else m for m in post_means.values()], 1
    ).double()


def unit_names(post_means: dict[str, Tensor]) -> list[str]:
    """`group[i]` for every column of `latent_units`, in the same order."""
    return [f"{g}[{i}]" for g, m in post_means.items() for i in range(m.shape[1])]


def histogram_discretize(x: Tensor, bins: int = BINS) -> Tensor:
    """(N, D) → (N, D) bin indices in 0..bins−1: equal-width bins between each column's min and max.

    Matches disentanglement_lib's `np.digitize(x, np.histogram(x, bins)[1][:-1])`
    (minus one): the maximum falls in the last bin, and a constant column is
    widened by ±0.5 as numpy does, so it lands in one bin.
    """
    x = x.double()
    lo, hi = x.min(0).values, x.max(0).values
    flat = lo == hi
    lo, hi = torch.where(flat, lo - 0.5, lo), torch.where(flat, hi + 0.5, hi)
    steps = torch.linspace(0, 1, bins + 1, dtype=torch.float64)[:-1]
    left_edges = lo[:, None] + (hi - lo)[:, None] * steps  # (D, bins)
    index = torch.searchsorted(left_edges.contiguous(), x.T.contiguous(), right=True) - 1
    return index.T.clamp(0, bins - 1)


def factor_classes(factors: Tensor, discrete: Sequence[bool], bins: int = BINS) -> Tensor:
    """(N, K) factors → (N, K) class indices: discrete and grid factors by value, the rest binned."""
    binned = histogram_discretize(factors, bins)
    columns = []
    for k, is_discrete in enumerate(discrete):
        values, classes = torch.unique(factors[:, k], return_inverse=True)
        columns.append(classes if is_discrete or len(values) <= GRID_CLASSES else binned[:, k])
    return torch.stack(columns, 1) if columns else binned


def _check_mask(factors: Tensor, discrete: Sequence[bool]) -> None:
    if len(discrete) != factors.shape[1]:
        raise ValueError(f"{len(discrete)} discrete flags for {factors.shape[1]} factors")


def _entropy(counts: Tensor, dim: int) -> Tensor:
    """Entropy in nats of the distributions `counts` holds along `dim` (0 log 0 = 0)."""
    p = counts.double() / counts.sum(dim, keepdim=True)
    return -torch.special.xlogy(p, p).sum(dim)


def mutual_information(codes: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(N, D) code bins, (N, K) factor classes → (D, K) MI(code_j; factor_k) and (K,) H(factor_k).

    In nats. One bincount per factor builds the joint histograms of all units
    at once: I = H(code) + H(factor) − H(code, factor).
    """
    d = codes.shape[1]
    bins = int(codes.max()) + 1
    # (D, N), contiguous: unit j's bin b is cell j·bins + b
    cells = (torch.arange(d)[:, None] * bins + codes.T).int().contiguous()
    h_code = _entropy(torch.bincount(cells.flatten(), minlength=d * bins).view(d, bins), 1)
    mi, h_factor = [], []
    for label in labels.T.int().contiguous():
        classes = int(label.max()) + 1
        joint = torch.bincount(
            torch.add(label, cells, alpha=classes).flatten(), minlength=d * bins * classes
        )
        h = _entropy(torch.bincount(label, minlength=classes), 0)
        mi.append(h_code + h - _entropy(joint.view(d, -1), 1))
        h_factor.append(h)
    return torch.stack(mi, 1), torch.stack(h_factor)


def mig(codes: Tensor, factors: Tensor, discrete: Sequence[bool], bins: int = BINS) -> float:
    """Mutual Information Gap (Chen et al. 2018), discretised as in disentanglement_lib.

    Mean over factors of (largest − second largest MI with a unit) / H(factor).
    Factors with zero entropy carry no information to encode and are left out.
    NaN with fewer than two units (no second-best unit, so no gap) or when
    every factor is constant.
    """
    _check_mask(factors, discrete)
    if codes.shape[1] < 2:
        return math.nan
    mi, entropy = mutual_information(
        histogram_discretize(codes, bins), factor_classes(factors, discrete, bins)
    )
    top = mi.topk(2, dim=0).values
    informative = entropy > 0
    if not informative.any():
        return math.nan
    return float(((top[0] - top[1])[informative] / entropy[informative]).mean())


@dataclass(frozen=True)
class DCI:
    """Eastwood & Williams (2018) scores from a lasso's importance matrix (units × factors)."""

    disentanglement: float
    completeness: float
    informativeness: float
    importance: Tensor  # (D, K') |lasso weights|, K' = the non-constant factors
    r2: Tensor  # (K',) held-out R² of each non-constant factor
    reason: str = ""  # why D and C are NaN, when they are


def lasso(gram: Tensor, cross: Tensor, alpha: float = LASSO_ALPHA) -> Tensor:
    """argmin_W ½ tr(WᵀGW) − tr(WᵀC) + α‖W‖₁ by FISTA, every target column at once.

    With G = XᵀX/n and C = XᵀY/n this is the lasso (1/2n)‖Y − XW‖² + α‖W‖₁ of
    scikit-learn's `Lasso`; working on G keeps each step (D × D) whatever N is.
    """
    lipschitz = float(torch.linalg.eigvalsh(gram)[-1]) if len(gram) else 0.0
    w = torch.zeros_like(cross)
    if lipschitz <= 0:
        return w
    v, t = w, 1.0
    for _ in range(LASSO_MAX_ITER):
        step = v - (gram @ v - cross) / lipschitz
        w_next = step.sign() * (step.abs() - alpha / lipschitz).clamp(min=0)
        t_next = (1 + math.sqrt(1 + 4 * t * t)) / 2
        v = w_next + (t - 1) / t_next * (w_next - w)
        done = float((w_next - w).abs().max()) < LASSO_TOL
        w, t = w_next, t_next
        if done:
            break
    return w


def _varies(x: Tensor) -> Tensor:
    """Per column, whether its values differ by more than rounding: a column holding one value
    can have a std of 1e-16 (its mean rounds), and standardising that by its std would turn
    rounding noise into a target or a code of unit variance."""
    spread = x.amax(0) - x.amin(0)
    return spread > CONSTANT_TOLERANCE * x.abs().amax(0)


def _standardise(x: Tensor, train: Tensor) -> Tensor:
    """Centre and scale by the training rows' statistics; a column constant there becomes 0."""
    mean, std, varies = x[train].mean(0), x[train].std(0), _varies(x[train])
    return torch.where(varies, (x - mean) / std.where(varies, torch.ones_like(std)), 0.0)


def _targets(factors: Tensor, discrete: Sequence[bool], train: Tensor) -> tuple[Tensor, Tensor]:
    """Regression targets and the factor each belongs to.

    A categorical factor with more than two classes becomes one indicator per
    class (regressing its arbitrary class codes would reward an arbitrary
    order); a target constant on the training rows is dropped.
    """
    columns, owners = [], []
    for k, is_discrete in enumerate(discrete):
        values = factors[:, k].double()
        classes = torch.unique(values)
        if is_discrete and len(classes) > 2:
            parts = [(values == c).double() for c in classes]
        else:
            parts = [values]
        for part in parts:
            if _varies(part[train]):
                columns.append(part)
                owners.append(k)
    owner = torch.tensor(owners, dtype=torch.long)
    if not columns:
        return factors.new_zeros(len(factors), 0).double(), owner
    return _standardise(torch.stack(columns, 1), train), owner


def _one_minus_entropy(weights: Tensor, dim: int) -> Tensor:
    """1 − entropy with base = size of `dim`, of `weights` normalised along `dim`."""
    return 1 - _entropy(weights + ENTROPY_EPS, dim) / math.log(weights.shape[dim])


def dci_lasso(
    codes: Tensor, factors: Tensor, discrete: Sequence[bool], alpha: float = LASSO_ALPHA
) -> DCI:
    """DCI with a lasso per factor on standardised codes and targets (not the GBT DCI).

    Every fifth example is held out; the rest fit the lasso. Importance
    R = |weights|. Disentanglement = Σ_j ρ_j (1 − H_K(P_j·)), ρ_j = Σ_k R_jk / ΣR;
    completeness = mean_k (1 − H_D(P̃_·k)) (unweighted, as Eastwood & Williams
    average it; disentanglement_lib weights factors by importance);
    informativeness = mean over factors of the held-out R² relative to the
    training mean and variance (averaged over a categorical factor's class
    indicators). Constant factors are left out.
    D and C only use the factors the codes predict (held-out R² > r2_floor): the
    lasso's weights for a factor it cannot predict are noise, and their
    relative sizes alone would make pure noise codes look disentangled.
    NaN (with `reason`): D and C when no factor is predicted or the lasso kept
    no weight, disentanglement with fewer than two predicted factors,
    completeness with fewer than two units, everything with no factor left or
    fewer than 2·HOLDOUT_EVERY examples.
    """
    _check_mask(factors, discrete)
    n, d = codes.shape
    empty = torch.zeros(d, 0, dtype=torch.float64)
    if n < 2 * HOLDOUT_EVERY:
        reason = f"fewer than {2 * HOLDOUT_EVERY} examples"
        return DCI(math.nan, math.nan, math.nan, empty, empty[0], reason)
    test = torch.arange(n) % HOLDOUT_EVERY == HOLDOUT_EVERY - 1
    train = ~test
    y, owners = _targets(factors, discrete, train)
    kept = owners.unique()
    if len(kept) == 0:
        return DCI(math.nan, math.nan, math.nan, empty, empty[0], "every factor is constant")
    x = _standardise(codes.double(), train)
    x_train, y_train = x[train], y[train]
    weights = lasso(x_train.T @ x_train / len(x_train), x_train.T @ y_train / len(x_train), alpha)
    slot = torch.searchsorted(kept, owners)
    importance = torch.zeros(d, len(kept), dtype=torch.float64).index_add_(1, slot, weights.abs())
    squared_error = (x[test] @ weights - y[test]).square().mean(0)
    error = torch.zeros(len(kept), dtype=torch.float64).index_add_(0, slot, squared_error)
    r2 = 1 - error / torch.bincount(slot).double()
    informativeness = float(r2.mean())
    floor = r2_floor(int(test.sum()))
    predicted = importance[:, r2 > floor]
    if predicted.shape[1] == 0:
        reason = f"no factor is predicted by the codes (held-out R² ≤ {floor:.3f} for every factor)"
        return DCI(math.nan, math.nan, informativeness, importance, r2, reason)
    if float(predicted.sum()) <= 1e-12:
        return DCI(math.nan, math.nan, informativeness, importance, r2, "the lasso kept no weight")
    dis, com = _disentanglement(predicted), _completeness(predicted)
    reason = "" if not math.isnan(dis) else "fewer than 2 predicted factors"
    if math.isnan(com):
        reason = "fewer than 2 units"
    return DCI(dis, com, informativeness, importance, r2, reason)


def _disentanglement(importance: Tensor) -> float:
    if importance.shape[1] < 2:
        return math.nan
    total = importance.sum()
    weights = importance if total > 0 else torch.ones_like(importance)
    rho = weights.sum(1) / weights.sum()
    return float((rho * _one_minus_entropy(importance, 1)).sum())


def _completeness(importance: Tensor) -> float:
    if importance.shape[0] < 2:
        return math.nan
    return float(_one_minus_entropy(importance, 0).mean())


def _ranks(x: Tensor) -> Tensor:
    """Ranks of every column of (N, M), ties sharing their average rank."""
    columns = []
    for column in x.T:
        _, inverse, counts = torch.unique(column, return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        columns.append((ends - (counts - 1) / 2)[inverse])
    return torch.stack(columns, 1)


def spearman_matrix(codes: Tensor, factors: Tensor) -> Tensor:
    """(K, D) |Spearman ρ| between every factor and every unit; a constant column gives 0."""
    f, c = [_unit_columns(_ranks(a.double())) for a in (factors, codes)]
    return (f.T @ c).abs().clamp(max=1.0)


def _unit_columns(x: Tensor) -> Tensor:
    """Centre every column and scale it to norm 1; a constant column stays all zeros."""
    centred = x - x.mean(0)
    return centred / centred.norm(dim=0).clamp(min=1e-300)
