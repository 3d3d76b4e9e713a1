"""proxy_study/stats.py: rank statistics against hand-computed values, ties included; the bootstrap."""
import math

import numpy as np
import pytest

from proxy_study import stats as S


def test_kendall_tau_b_by_hand():
    # pairs of (1, 2, 3, 4) vs (1, 3, 2, 4): 5 concordant, 1 discordant -> (5 - 1) / 6
    assert S.kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(2 / 3)
    # ties: x has one tied pair, y one; 4 concordant, 0 discordant -> 4 / sqrt((6 - 1) * (6 - 1))
    assert S.kendall_tau([1, 1, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert S.kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_spearman_rho_by_hand():
    # rank differences 0, 1, 1, 0 -> 1 - 6 * 2 / (4 * 15)
    assert S.spearman_rho([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    # ties get average ranks (1.5, 1.5, 3, 4) and (1, 2, 3.5, 3.5): Pearson of the ranks = 4 / 4.5
    assert S.spearman_rho([1, 1, 2, 3], [1, 2, 3, 3]) == pytest.approx(4 / 4.5)


def test_constant_input_is_nan_not_an_error():
    assert math.isnan(S.kendall_tau([1, 1, 1], [1, 2, 3]))
    assert math.isnan(S.spearman_rho([1, 2, 3], [5, 5, 5]))


def test_precision_at_top_by_hand():
    truth = list(range(10, 0, -1))                     # best cells: 0, 1
    assert S.top_k(10, 0.2) == 2 and S.top_k(45, 0.1) == 5 and S.top_k(3, 0.1) == 1
    assert S.precision_at_top([9, 0, 8, 1, 2, 3, 4, 5, 6, 7], truth, 0.2) == 0.5     # top by score: 0, 2
    assert S.precision_at_top(truth, truth, 0.2) == 1.0
    # three cells tie for the top two places by score: each is in with probability 2/3
    assert S.precision_at_top([5, 5, 5, 0, 0, 0, 0, 0, 0, 0], truth, 0.2) == pytest.approx((2 / 3 + 2 / 3) / 2)
    assert list(S.top_membership([5, 5, 5, 0], 2)) == pytest.approx([2 / 3] * 3 + [0])


def test_mean_pairwise_tau_by_hand():
    table = np.array([[1, 1, 4], [2, 3, 3], [3, 2, 2], [4, 4, 1]])
    taus = [S.kendall_tau(table[:, a], table[:, b]) for a, b in ((0, 1), (0, 2), (1, 2))]
    assert taus == pytest.approx([2 / 3, -1, -2 / 3])
    assert S.mean_pairwise_tau(table) == pytest.approx(np.mean(taus))
    assert math.isnan(S.mean_pairwise_tau(table[:, :1]))


def test_bootstrap_is_reproducible_and_contains_the_estimate():
    rng = np.random.default_rng(0)
    x = np.arange(30.0)
    y = x + rng.normal(0, 8, 30)
    stat = S.paired(S.kendall_tau, x, y)
    a = S.estimate(stat, 30, resamples=1000, seed=4)
    b = S.estimate(stat, 30, resamples=1000, seed=4)
    c = S.estimate(stat, 30, resamples=1000, seed=5)
    assert (a.lo, a.hi) == (b.lo, b.hi) and (a.lo, a.hi) != (c.lo, c.hi)
    assert a.value == S.kendall_tau(x, y)
    assert -1 <= a.lo < a.value < a.hi <= 1


def test_bootstrap_leaves_out_undefined_resamples():
    # 3 cells: some resamples repeat one cell three times (constant, NaN tau); the interval is still finite
    lo, hi = S.bootstrap_ci(S.paired(S.kendall_tau, [1, 2, 3], [1, 3, 2]), 3, resamples=1000, seed=0)
    assert -1 <= lo <= hi <= 1
    assert S.bootstrap_ci(lambda idx: math.nan, 3, resamples=1000) == (pytest.approx(math.nan, nan_ok=True),) * 2
