"""Statistics against known values and edge cases."""

from __future__ import annotations

import math

import pytest

from engine.stats import (
    cohen_kappa,
    format_rate,
    items_for_half_width,
    mcnemar_exact,
    paired_difference_interval,
    unpaired_difference_interval,
    wilson_interval,
)


@pytest.mark.parametrize("k,n,lo,hi", [(6, 10, 0.313, 0.832), (30, 50, 0.462, 0.724), (0, 10, 0.0, 0.278),
                                       (10, 10, 0.722, 1.0), (1, 1, 0.207, 1.0)])
def test_wilson_known_values(k, n, lo, hi):
    a, b = wilson_interval(k, n)
    assert a == pytest.approx(lo, abs=5e-4) and b == pytest.approx(hi, abs=5e-4)


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    assert format_rate(6, 10) == "6/10 = 60.0 % (95 % CI 31.3–83.2 %)"
    assert format_rate(0, 0) == "0/0 (no items assessed)"


@pytest.mark.parametrize("b,c,p", [(25, 0, 5.96e-8), (5, 0, 0.0625), (0, 5, 0.0625), (8, 0, 0.0078125),
                                   (3, 3, 1.0), (10, 4, 0.1795)])
def test_mcnemar_exact_known_values(b, c, p):
    assert mcnemar_exact(b, c) == pytest.approx(p, rel=2e-3)


def test_mcnemar_no_discordant_pairs():
    assert mcnemar_exact(0, 0) == 1.0


def test_kappa_worked_table():
    # 50 items: both yes 20, A yes/B no 5, A no/B yes 10, both no 15 -> po 0.7, pe 0.5, kappa 0.4
    a = ["yes"] * 20 + ["yes"] * 5 + ["no"] * 10 + ["no"] * 15
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_edge_cases():
    assert math.isnan(cohen_kappa([], []))
    assert math.isnan(cohen_kappa(["h"] * 5, ["h"] * 5))  # all one label: chance agreement is total
    assert cohen_kappa(["h", "f", "h", "f"], ["h", "f", "h", "f"]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        cohen_kappa(["h"], ["h", "f"])


def test_items_for_half_width():
    n = items_for_half_width(0.6, 0.10)
    lo, hi = wilson_interval(round(0.6 * n), n)
    assert (hi - lo) / 2 <= 0.10
    lo, hi = wilson_interval(round(0.6 * (n - 1)), n - 1)
    assert (hi - lo) / 2 > 0.10
    assert 85 <= n <= 95  # ~ 1.96^2 * 0.24 / 0.01 = 92
    assert items_for_half_width(0.5, 0.10) >= items_for_half_width(0.1, 0.10)


def test_paired_difference_interval_contains_the_difference_and_is_sane():
    # 50 items: A hallucinated on 30, B on 5; discordant b=25, c=0
    diff, lo, hi = paired_difference_interval(a=5, b=25, c=0, d=20)
    assert diff == pytest.approx(0.5)
    assert 0.3 < lo < 0.5 < hi < 0.7
    diff, lo, hi = paired_difference_interval(a=0, b=0, c=0, d=10)
    assert diff == 0 and lo <= 0 <= hi
    assert paired_difference_interval(0, 0, 0, 0) == (0.0, -1.0, 1.0)


def test_newcombe_paired_reduces_to_unpaired_without_correlation():
    # a*d == b*c: no correlation between the paired answers, so the paired interval is the
    # unpaired one for two samples of the same size
    a, b, c, d = 4, 8, 6, 12  # 4*12 == 8*6
    n = a + b + c + d
    diff, lo, hi = paired_difference_interval(a, b, c, d)
    udiff, ulo, uhi = unpaired_difference_interval(a + b, n, a + c, n)
    assert (diff, lo, hi) == pytest.approx((udiff, ulo, uhi))


def test_newcombe_paired_is_narrower_with_positive_correlation():
    # same margins, strongly concordant pairs: the paired interval must be narrower
    _, lo_p, hi_p = paired_difference_interval(20, 6, 1, 23)
    _, lo_u, hi_u = unpaired_difference_interval(26, 50, 21, 50)
    assert hi_p - lo_p < hi_u - lo_u


def test_newcombe_unpaired_matches_published_example():
    # Newcombe (1998), Statistics in Medicine 17:873, example (a): 56/70 vs 48/80: 0.2000, 0.0524 to 0.3339
    diff, lo, hi = unpaired_difference_interval(56, 70, 48, 80)
    assert diff == pytest.approx(0.2)
    assert lo == pytest.approx(0.0524, abs=1e-3) and hi == pytest.approx(0.3339, abs=1e-3)
