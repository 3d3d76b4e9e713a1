"""Rank statistics of a proxy study, as pure functions of numbers (no files, no models).

    kendall_tau(x, y), spearman_rho(x, y)        scipy.stats: tau-b and rho with ties averaged
    precision_at_top(score, truth, fraction)     overlap of the top fraction by score and by truth
    bootstrap_ci(statistic, n, resamples, seed)  percentile interval over cells resampled with replacement
    mean_pairwise_tau(table)                     agreement between the columns (seeds) of a cells x seeds table

Undefined values (a constant input) are NaN, never an exception: a bootstrap resample of few cells can be
constant, and those resamples are left out of the interval.
"""
import math
from dataclasses import dataclass
from itertools import combinations

import numpy as np
from scipy import stats as sps


@dataclass
class Estimate:
    value: float            # on all cells
    lo: float               # bootstrap percentile interval
    hi: float

    def as_dict(self):
        return {'value': self.value, 'lo': self.lo, 'hi': self.hi}


def _constant(v):
    return len(v) < 2 or np.all(v == v[0])


def kendall_tau(x, y):
    """Kendall's tau-b (ties in x or y handled as scipy's default does)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if _constant(x) or _constant(y):
        return math.nan
    return float(sps.kendalltau(x, y).statistic)


def spearman_rho(x, y):
    """Spearman's rho: Pearson correlation of the average ranks."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if _constant(x) or _constant(y):
        return math.nan
    return float(sps.spearmanr(x, y).statistic)


def top_k(n, fraction):
    """Size of the top set: ceil(fraction * n), at least 1."""
    return max(1, math.ceil(fraction * n - 1e-9))


def top_membership(values, k):
    """Probability of each item to be among the k largest when ties are broken uniformly at random:
    1 above the k-th largest value, 0 below it, and (places left) / (items tied) at it."""
    v = np.asarray(values, float)
    kth = np.sort(v)[::-1][k - 1]
    above, tied = v > kth, v == kth
    return np.where(above, 1.0, 0.0) + np.where(tied, (k - above.sum()) / tied.sum(), 0.0)


def precision_at_top(score, truth, fraction=0.1):
    """Expected fraction of the k = ceil(fraction * n) best cells by `truth` that are also among the k
    best by `score`, ties at either boundary broken uniformly at random (independently)."""
    k = top_k(len(truth), fraction)
    return float(np.sum(top_membership(score, k) * top_membership(truth, k)) / k)


def bootstrap_ci(statistic, n, resamples=2000, seed=0, level=0.95):
    """(lo, hi): percentiles of statistic(idx) over `resamples` index arrays of n cells drawn with
    replacement from numpy's Generator(seed); NaN resamples are left out (all NaN: (nan, nan))."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], float)
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def estimate(statistic, n, resamples=2000, seed=0, level=0.95):
    """statistic on all cells (identity index) with its bootstrap interval."""
    lo, hi = bootstrap_ci(statistic, n, resamples, seed, level)
    return Estimate(statistic(np.arange(n)), lo, hi)


def paired(fn, x, y):
    """A statistic of cell indices from a statistic of two arrays: idx -> fn(x[idx], y[idx])."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    return lambda idx: fn(x[idx], y[idx])


def mean_pairwise_tau(table):
    """Mean Kendall tau-b over all pairs of columns of a (cells, repeats) table: how well one repeat
    (a ground-truth seed, a scoring seed) ranks the cells like another. NaN with fewer than 2 columns."""
    table = np.asarray(table, float)
    taus = [kendall_tau(table[:, a], table[:, b]) for a, b in combinations(range(table.shape[1]), 2)]
    taus = [t for t in taus if not math.isnan(t)]
    return float(np.mean(taus)) if taus else math.nan


def rows(fn, table):
    """A statistic of cell indices from a statistic of a table: idx -> fn(table[idx])."""
    table = np.asarray(table, float)
    return lambda idx: fn(table[idx])
