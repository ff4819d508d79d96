"""Honest statistics for small samples of human judgements.

- ``wilson_interval``: the score interval for a proportion (good at n = 10, unlike Wald);
- ``items_for_half_width``: how many items a rate needs for a given precision;
- ``mcnemar_exact``: the exact (binomial) McNemar test on paired items;
- ``paired_difference_interval``: Newcombe's hybrid score interval for a paired difference;
- ``unpaired_difference_interval``: Newcombe's interval for two independent proportions;
- ``paired_exact_interval``: an interval for a paired difference that agrees with the exact McNemar test;
- ``cohen_kappa``: chance-corrected agreement of two annotators (``kappa_interval`` for its 95 % interval);
- ``auroc``: how well a score ranks positives above negatives, with DeLong's 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval for k successes in n trials; (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be between 0 and n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def items_for_half_width(p: float, half_width: float = 0.10, z: float = Z95, limit: int = 100_000) -> int:
    """Smallest n at which the Wilson interval around a rate p is at most ±half_width."""
    p = min(max(p, 0.0), 1.0)
    lo, hi = 1, limit
    while lo < hi:  # the half-width shrinks monotonically with n
        mid = (lo + hi) // 2
        a, b = wilson_interval(round(p * mid), mid, z)
        if (b - a) / 2 <= half_width:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _binom_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly."""
    return sum(math.comb(n, i) for i in range(k + 1)) / 2**n


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b and c."""
    n = b + c
    if n == 0:
        return 1.0
    return min(1.0, 2 * _binom_cdf(min(b, c), n))


def paired_difference_interval(a: int, b: int, c: int, d: int, z: float = Z95) -> tuple[float, float, float]:
    """Difference p1 - p2 of two paired proportions and Newcombe's (1998, method 10) 95 % interval.

    The 2x2 table counts items: a = yes/yes, b = yes/no, c = no/yes, d = no/no, where p1 is the
    first condition's rate ((a + b) / n) and p2 the second's ((a + c) / n)."""
    n = a + b + c + d
    if n == 0:
        return 0.0, -1.0, 1.0
    p1, p2 = (a + b) / n, (a + c) / n
    l1, u1 = wilson_interval(a + b, n, z)
    l2, u2 = wilson_interval(a + c, n, z)
    denom = (a + b) * (c + d) * (a + c) * (b + d)
    phi = 0.0
    if denom > 0:
        num = a * d - b * c
        phi = (max(num - n / 2, 0) if num > 0 else num) / math.sqrt(denom)  # Newcombe's continuity step
    diff = p1 - p2
    delta = math.sqrt(max(0.0, (p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2))
    eps = math.sqrt(max(0.0, (u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2))
    return diff, max(-1.0, diff - delta), min(1.0, diff + eps)


def unpaired_difference_interval(k1: int, n1: int, k2: int, n2: int, z: float = Z95) -> tuple[float, float, float]:
    """Difference of two independent proportions and Newcombe's (1998, method 10) 95 % interval."""
    p1 = k1 / n1 if n1 else 0.0
    p2 = k2 / n2 if n2 else 0.0
    l1, u1 = wilson_interval(k1, n1, z)
    l2, u2 = wilson_interval(k2, n2, z)
    diff = p1 - p2
    return diff, diff - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), diff + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def cohen_kappa(first: Sequence[Hashable], second: Sequence[Hashable]) -> float:
    """Cohen's kappa of two annotators' labels on the same items (nan when undefined:
    no items, or both always gave the same single label)."""
    if len(first) != len(second):
        raise ValueError("both annotators must label the same items")
    n = len(first)
    if n == 0:
        return math.nan
    labels = set(first) | set(second)
    po = sum(x == y for x, y in zip(first, second, strict=True)) / n
    pe = sum((sum(x == lab for x in first) / n) * (sum(y == lab for y in second) / n) for lab in labels)
    if pe >= 1.0:
        return math.nan
    return (po - pe) / (1 - pe)


def format_rate(k: int, n: int) -> str:
    """'6/10 = 60.0 % (95 % CI 31.3–83.2 %)'"""
    if n == 0:
        return "0/0 (no items assessed)"
    lo, hi = wilson_interval(k, n)
    return f"{k}/{n} = {100 * k / n:.1f} % (95 % CI {100 * lo:.1f}–{100 * hi:.1f} %)"


def _log_binom_pmf(i: int, n: int, p: float) -> float:
    if p <= 0.0:
        return 0.0 if i == 0 else -math.inf
    if p >= 1.0:
        return 0.0 if i == n else -math.inf
    return (math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * math.log(p)
            + (n - i) * math.log1p(-p))


def _binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    return min(1.0, sum(math.exp(_log_binom_pmf(i, n, p)) for i in range(max(k, 0), n + 1)))


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact (Clopper–Pearson) interval for k successes in n trials, by bisection."""
    if n <= 0:
        return 0.0, 1.0

    def solve(f, target: float) -> float:  # f increases with p; the p where f(p) = target
        lo, hi = 0.0, 1.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if f(mid) < target:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    # lower: P(X >= k | p) = alpha/2; upper: P(X <= k | p) = alpha/2, i.e. P(X >= k+1 | p) = 1 - alpha/2
    lower = 0.0 if k == 0 else solve(lambda p: _binom_sf(k, n, p), alpha / 2)
    upper = 1.0 if k == n else solve(lambda p: _binom_sf(k + 1, n, p), 1 - alpha / 2)
    return lower, upper


def paired_exact_interval(b: int, c: int, n: int) -> tuple[float, float, float]:
    """Difference (b - c) / n of two paired proportions (b: yes in the first condition only, c: yes
    in the second only, n: all pairs) with a 95 % interval that agrees with the exact McNemar test.

    Conditional on the b + c discordant pairs, b is Binomial(b + c, theta) and the difference is
    (b + c) / n x (2 theta - 1); the Clopper–Pearson interval for theta, mapped through that,
    excludes 0 exactly when the two-sided exact McNemar p is at most 0.05. It treats the number
    of discordant pairs as fixed, so it is a little narrower than an unconditional interval would
    be when discordant pairs are few."""
    if n <= 0:
        return 0.0, -1.0, 1.0
    m = b + c
    if m == 0:  # nothing changed: the difference is 0, within the share of items that could have changed
        bound = clopper_pearson(0, n)[1]
        return 0.0, -bound, bound
    lo, hi = clopper_pearson(b, m)
    scale = m / n
    return (b - c) / n, scale * (2 * lo - 1), scale * (2 * hi - 1)


def kappa_interval(first: Sequence[Hashable], second: Sequence[Hashable], z: float = Z95) -> tuple[float, float]:
    """Approximate 95 % interval of Cohen's kappa (Cohen 1960's large-sample standard error),
    clipped to [-1, 1]; (nan, nan) where kappa is undefined. With perfect agreement that error
    is 0, so the lower bound comes from the Wilson interval of the agreement instead."""
    k = cohen_kappa(first, second)
    n = len(first)
    if k != k or n == 0:
        return math.nan, math.nan
    labels = set(first) | set(second)
    po = sum(x == y for x, y in zip(first, second, strict=True)) / n
    pe = sum((sum(x == lab for x in first) / n) * (sum(y == lab for y in second) / n) for lab in labels)
    se = math.sqrt(max(po * (1 - po), 0.0) / n) / (1 - pe)
    if se == 0:
        agree_lo = wilson_interval(round(po * n), n, z)[0]
        return max(-1.0, (agree_lo - pe) / (1 - pe)), 1.0
    return max(-1.0, k - z * se), min(1.0, k + z * se)


def auroc(scores: Sequence[float], positive: Sequence[bool], z: float = Z95) -> tuple[float, float, float]:
    """Area under the ROC curve of ``scores`` for telling positives from negatives (ties count
    half), with DeLong's 95 % interval clipped to [0, 1]; nan when either class is empty. Where
    DeLong's error is 0 (perfect separation), the bound on the far side is the Wilson bound of
    a proportion over the smaller class, not a zero-width interval."""
    pos = [s for s, y in zip(scores, positive, strict=True) if y]
    neg = [s for s, y in zip(scores, positive, strict=True) if not y]
    m, n = len(pos), len(neg)
    if not m or not n:
        return math.nan, math.nan, math.nan

    def psi(x: float, y: float) -> float:
        return 1.0 if x > y else 0.5 if x == y else 0.0

    v10 = [sum(psi(x, y) for y in neg) / n for x in pos]  # DeLong's placement values
    v01 = [sum(psi(x, y) for x in pos) / m for y in neg]
    area = sum(v10) / m
    s10 = sum((v - area) ** 2 for v in v10) / (m - 1) if m > 1 else 0.0
    s01 = sum((v - area) ** 2 for v in v01) / (n - 1) if n > 1 else 0.0
    se = math.sqrt(s10 / m + s01 / n)
    if se == 0:
        k = min(m, n)
        lo, hi = wilson_interval(round(area * k), k, z)
        return area, lo, hi
    return area, max(0.0, area - z * se), min(1.0, area + z * se)
