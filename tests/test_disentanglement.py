"""Disentanglement metrics against codes whose relation to the factors is known by construction."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hvbench.disentanglement import (
    LASSO_ALPHA,
    dci_lasso,
    factor_classes,
    histogram_discretize,
    lasso,
    latent_units,
    mig,
    spearman_matrix,
    unit_names,
)

N = 5000


@pytest.fixture
def factors() -> torch.Tensor:
    return torch.rand(N, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def noise(columns: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(
        N, columns, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def test_histogram_discretize_matches_disentanglement_lib() -> None:
    x = noise(4)
    x[:, 2] = 3.0  # constant: numpy widens the range by ±0.5, all in one bin
    x[:, 3] = x[:, 3].round()  # many ties at bin edges
    expected = np.stack(
        [np.digitize(c, np.histogram(c, 20)[1][:-1]) - 1 for c in x.T.numpy()], axis=1
    )
    assert torch.equal(histogram_discretize(x), torch.from_numpy(expected))


def test_one_unit_per_factor_is_perfectly_disentangled(factors: torch.Tensor) -> None:
    # a permutation of the factors, rescaled (one flipped), plus two units of pure noise
    codes = torch.cat([factors[:, [2, 0, 1]] * torch.tensor([3.0, -1.0, 0.5]), noise(2)], 1)
    assert mig(codes, factors, [False] * 3) > 0.97
    dci = dci_lasso(codes, factors, [False] * 3)
    assert dci.disentanglement > 0.99 and dci.completeness > 0.99
    assert dci.informativeness > 0.99
    assert dci.importance.argmax(0).tolist() == [1, 2, 0]


def test_noise_codes_score_nothing(factors: torch.Tensor) -> None:
    codes = noise(5)
    assert mig(codes, factors, [False] * 3) < 0.03
    assert abs(dci_lasso(codes, factors, [False] * 3).informativeness) < 0.02


def test_a_unit_mixing_two_factors_lowers_every_score(factors: torch.Tensor) -> None:
    f = (factors - 0.5) / factors.std(0)
    codes = torch.stack([f[:, 0] + f[:, 1], f[:, 0] - f[:, 1], f[:, 2]], 1)
    # f0 and f1 each spread evenly over two units: no gap for them, a full one for f2
    assert mig(codes, factors, [False] * 3) == pytest.approx(1 / 3, abs=0.04)
    dci = dci_lasso(codes, factors, [False] * 3)
    half = 1 - math.log(2) / math.log(3)  # 1 − H_3(½, ½, 0)
    rho = math.sqrt(2) / (2 * math.sqrt(2) + 1)  # share of each mixing unit in ΣR
    assert dci.disentanglement == pytest.approx(2 * rho * half + (1 - 2 * rho), abs=0.02)
    assert dci.completeness == pytest.approx((2 * half + 1) / 3, abs=0.02)
    assert dci.informativeness > 0.99  # mixed, but still linearly decodable


def test_categorical_factor_uses_its_values_as_classes() -> None:
    classes = torch.arange(N) % 3
    values = torch.tensor([0.0, 7.0, 42.0], dtype=torch.float64)[classes]
    assert torch.equal(factor_classes(values[:, None], [True])[:, 0], classes)
    codes = torch.stack([classes.double(), noise(1)[:, 0]], 1)
    assert mig(codes, values[:, None], [True]) > 0.99


def test_grid_factors_are_used_by_level_and_continuous_ones_binned(
    factors: torch.Tensor,
) -> None:
    """dSprites' 32 positions are 32 classes (as in disentanglement_lib), not 20 uneven bins."""
    levels = (torch.arange(N) % 32).double() / 31
    classes = factor_classes(torch.stack([levels, factors[:, 0]], 1), [False, False])
    assert len(classes[:, 0].unique()) == 32
    assert len(classes[:, 1].unique()) == 20


def test_categorical_factor_is_regressed_one_class_at_a_time() -> None:
    # the unit flags the middle class only: useless for regressing the class code 0/1/2,
    # while one indicator per class is predicted with R² 1, ¼ and ¼
    classes = torch.arange(N) % 3
    codes = torch.stack([(classes == 1).double(), noise(1)[:, 0]], 1)
    as_classes = dci_lasso(codes, classes[:, None].double(), [True])
    assert as_classes.informativeness == pytest.approx(0.5, abs=0.03)
    assert math.isnan(as_classes.disentanglement)  # one factor: no spread to measure
    assert abs(dci_lasso(codes, classes[:, None].double(), [False]).informativeness) < 0.02


def test_constant_columns_give_numbers_not_nan(factors: torch.Tensor) -> None:
    codes = torch.cat([factors, torch.zeros(N, 1)], 1)
    with_constant_factor = torch.cat([factors, torch.ones(N, 1)], 1)
    score = mig(codes, with_constant_factor, [False] * 4)
    assert score == pytest.approx(mig(codes, factors, [False] * 3))  # a constant factor is skipped
    dci = dci_lasso(codes, with_constant_factor, [False] * 4)
    assert dci.importance.shape == (4, 3)
    assert all(math.isfinite(v) for v in (dci.disentanglement, dci.completeness))
    matrix = spearman_matrix(codes, with_constant_factor)
    assert torch.isfinite(matrix).all() and matrix[:, 3].eq(0).all() and matrix[3].eq(0).all()


def test_undefined_scores_are_nan(factors: torch.Tensor) -> None:
    assert math.isnan(mig(factors[:, :1], factors, [False] * 3))  # one unit: no second best
    assert math.isnan(mig(factors, torch.ones(N, 2), [False] * 2))  # nothing to encode
    assert math.isnan(dci_lasso(factors, torch.ones(N, 2), [False] * 2).informativeness)
    with pytest.raises(ValueError, match="2 discrete flags for 3 factors"):
        mig(factors, factors, [False] * 2)


def test_spearman_of_monotone_transforms_is_one(factors: torch.Tensor) -> None:
    codes = torch.stack([torch.exp(5 * factors[:, 1]), -(factors[:, 0] ** 3)], 1)
    matrix = spearman_matrix(codes, factors)
    assert matrix.shape == (3, 2)
    assert matrix[1, 0] == pytest.approx(1.0) and matrix[0, 1] == pytest.approx(1.0)
    assert matrix[2].max() < 0.05


def test_spearman_averages_tied_ranks() -> None:
    # ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): ρ = 4.5 / sqrt(4.5 · 5)
    x = torch.tensor([[1.0], [2.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    assert float(spearman_matrix(x, y)) == pytest.approx(4.5 / math.sqrt(22.5))


def test_lasso_meets_its_optimality_conditions() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400, 6, generator=g, dtype=torch.float64) @ torch.randn(
        6, 6, generator=g, dtype=torch.float64
    )
    y = x[:, :2] @ torch.tensor([[1.0, 0.0], [0.5, -0.2]], dtype=torch.float64)
    y = y + 0.3 * torch.randn(400, 2, generator=g, dtype=torch.float64)
    gram, cross = x.T @ x / 400, x.T @ y / 400
    w = lasso(gram, cross)
    gradient = gram @ w - cross  # KKT: = −α·sign(w) where w ≠ 0, within [−α, α] where w = 0
    active = w != 0
    assert active.any() and (~active).any()
    assert torch.allclose(gradient[active], -LASSO_ALPHA * w[active].sign(), atol=1e-4)
    assert gradient[~active].abs().max() <= LASSO_ALPHA + 1e-4


def test_units_flatten_groups_in_order_and_average_spatial_channels() -> None:
    post_means = {"top": torch.arange(6.0).view(3, 2), "map": torch.ones(3, 2, 4, 4)}
    post_means["map"][:, 1] = 5.0
    codes = latent_units(post_means)
    assert codes.shape == (3, 4) and codes[:, 3].eq(5.0).all()
    assert unit_names(post_means) == ["top[0]", "top[1]", "map[0]", "map[1]"]


@pytest.mark.parametrize("units", [3, 10])
def test_pure_noise_codes_are_never_called_disentangled(units: int) -> None:
    """The lasso keeps a few tiny weights for noise; D over their relative sizes alone read 1.0.
    Factors the codes cannot predict are left out, so D is NaN (or low) in 20 of 20 trials."""
    for trial in range(20):
        g = torch.Generator().manual_seed(100 + trial)
        factors = torch.rand(2000, 3, generator=g, dtype=torch.float64)
        codes = torch.randn(2000, units, generator=g, dtype=torch.float64)
        dci = dci_lasso(codes, factors, [False] * 3)
        assert math.isnan(dci.disentanglement) or dci.disentanglement < 0.2, trial
        assert math.isnan(dci.disentanglement) == bool(dci.reason)


def test_codes_equal_to_the_factors_are_disentangled(factors: torch.Tensor) -> None:
    dci = dci_lasso(factors.clone(), factors, [False] * 3)
    assert dci.disentanglement > 0.9 and dci.completeness > 0.9 and not dci.reason


def test_lasso_matches_scikit_learn() -> None:
    """The FISTA lasso on the Gram matrix against scikit-learn's coordinate descent."""
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(7)
    x = torch.randn(800, 6, generator=g, dtype=torch.float64)
    w = torch.tensor([[1.0, 0], [0.5, 0], [0, -2.0], [0, 0], [0.01, 0], [0, 0.3]], dtype=x.dtype)
    y = x @ w + 0.3 * torch.randn(800, 2, generator=g, dtype=torch.float64)
    ours = lasso(x.T @ x / len(x), x.T @ y / len(x), LASSO_ALPHA)
    reference = linear_model.Lasso(alpha=LASSO_ALPHA, fit_intercept=False, tol=1e-10)
    reference.fit(x.numpy(), y.numpy())
    assert np.allclose(ours.numpy(), reference.coef_.T, atol=1e-4)


def test_mig_matches_scikit_learn_mutual_information(factors: torch.Tensor) -> None:
    """MIG as disentanglement_lib computes it: sklearn's mutual_info_score on binned codes."""
    metrics = pytest.importorskip("sklearn.metrics")
    codes = torch.cat([factors[:, :2] + 0.1 * noise(2), noise(2, seed=3)], 1)
    binned = histogram_discretize(codes).numpy()
    classes = factor_classes(factors, [False] * 3).numpy()
    mi = np.array(
        [
            [metrics.mutual_info_score(classes[:, k], binned[:, j]) for k in range(3)]
            for j in range(4)
        ]
    )
    entropy = np.array([metrics.mutual_info_score(c, c) for c in classes.T])
    top = np.sort(mi, axis=0)[::-1]
    expected = float(np.mean((top[0] - top[1]) / entropy))
    assert mig(codes, factors, [False] * 3) == pytest.approx(expected, abs=1e-9)
