"""Every A/B statistic against scipy (a test dependency only) or a published value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats as sps

from app.experiments import stats as st


@dataclass
class Row:
    variant: str
    case_index: int
    repetition: int
    status: str = "ok"
    passed: bool | None = None
    score: float | None = None
    latency_ms: float | None = None
    cost_usd: float | None = None


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (45, 100), (999, 1000), (1, 2)])
def test_wilson_matches_scipy(k: int, n: int) -> None:
    ci = sps.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    lo, hi = st.wilson_interval(k, n)
    assert lo == pytest.approx(ci.low, abs=1e-12)
    assert hi == pytest.approx(ci.high, abs=1e-12)


def test_wilson_known_value() -> None:
    # Newcombe (1998), example: 81/263 -> 0.2553 to 0.3662
    lo, hi = st.wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)


@pytest.mark.parametrize(("b", "c"), [(0, 0), (1, 0), (3, 9), (10, 2), (12, 12), (0, 24)])
def test_mcnemar_exact_matches_binomtest(b: int, c: int) -> None:
    p, kind = st.mcnemar(b, c)
    assert kind == "exact"
    expected = 1.0 if b + c == 0 else sps.binomtest(b, b + c, 0.5).pvalue
    assert p == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("b", "c"), [(30, 10), (20, 20), (100, 70), (5, 40)])
def test_mcnemar_chi_square_matches_scipy(b: int, c: int) -> None:
    p, kind = st.mcnemar(b, c)
    assert kind == "chi-square"
    chi2 = (abs(b - c) - 1) ** 2 / (b + c)
    assert p == pytest.approx(sps.chi2.sf(chi2, 1), rel=1e-10)


@pytest.mark.parametrize(
    "table",
    [
        [[8, 2], [1, 5]],
        [[3, 7], [7, 3]],
        [[0, 10], [10, 0]],
        [[50, 50], [40, 60]],
        [[1, 0], [0, 1]],
        [[20, 5], [5, 20]],
    ],
)
def test_fisher_matches_scipy(table: list[list[int]]) -> None:
    (a, b), (c, d) = table
    assert st.fisher_exact(a, b, c, d) == pytest.approx(sps.fisher_exact(table).pvalue, rel=1e-9)


@pytest.mark.parametrize(("k1", "n1", "k2", "n2"), [(40, 100, 55, 100), (10, 50, 12, 50), (90, 100, 80, 120)])
def test_two_proportion_z_matches_chi2_contingency(k1: int, n1: int, k2: int, n2: int) -> None:
    # The pooled z-test squared is Pearson's chi-square without Yates' correction.
    table = [[k1, n1 - k1], [k2, n2 - k2]]
    expected = sps.chi2_contingency(table, correction=False).pvalue
    assert st.two_proportion_z(k1, n1, k2, n2) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mann_whitney_matches_scipy_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = np.round(rng.normal(100, 20, 37))  # rounded: plenty of ties
    y = np.round(rng.normal(110, 20, 29))
    u, p = st.mann_whitney_u(list(x), list(y))
    ref = sps.mannwhitneyu(x, y, method="asymptotic", use_continuity=True, alternative="two-sided")
    assert u == pytest.approx(ref.statistic)
    assert p == pytest.approx(ref.pvalue, rel=1e-9)


def test_mann_whitney_small_integer_scores() -> None:
    x, y = [4, 5, 5, 3, 4, 5, 4], [3, 3, 4, 2, 3, 4, 3, 3]
    u, p = st.mann_whitney_u(x, y)
    ref = sps.mannwhitneyu(x, y, method="asymptotic", alternative="two-sided")
    assert (u, p) == (pytest.approx(ref.statistic), pytest.approx(ref.pvalue, rel=1e-9))


def test_percentiles_match_numpy_linear() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0, 2.0]
    assert st.percentile(values, 50) == pytest.approx(np.percentile(values, 50))
    assert st.percentile(values, 95) == pytest.approx(sps.scoreatpercentile(values, 95))
    assert st.percentile([], 50) is None


def test_bootstrap_is_seeded_and_matches_scipy_percentile_bootstrap() -> None:
    rng = np.random.default_rng(3)
    data = rng.normal(3.5, 1.0, 60)
    a = st.bootstrap_interval(list(data), seed=11)
    assert a == st.bootstrap_interval(list(data), seed=11)
    ref = sps.bootstrap(
        (data,), np.mean, method="percentile", n_resamples=20000, random_state=5
    ).confidence_interval
    assert a is not None
    assert a[0] == pytest.approx(ref.low, abs=0.06)
    assert a[1] == pytest.approx(ref.high, abs=0.06)


def test_newcombe_known_value() -> None:
    # Newcombe (1998) table II, example (a): 56/70 vs 48/80 -> 0.0524 to 0.3339
    lo, hi = st.newcombe_interval(56, 70, 48, 80)
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


def test_paired_interval_covers_and_centres() -> None:
    lo, hi = st.paired_difference_interval(15, 3, 100)
    assert lo < 0.12 < hi
    assert lo > 0  # clearly positive
    lo0, hi0 = st.paired_difference_interval(0, 0, 10)
    assert lo0 < 0 < hi0


def _paired_rows(pass_a: list[bool], pass_b: list[bool]) -> list[Row]:
    rows = [Row("v2", i, 0, passed=p, latency_ms=100.0 + i, cost_usd=0.001) for i, p in enumerate(pass_a)]
    rows += [Row("v1", i, 0, passed=p, latency_ms=200.0 + i, cost_usd=0.002) for i, p in enumerate(pass_b)]
    return rows


def test_analysis_paired_verdict_and_gate() -> None:
    n = 120
    rng = np.random.default_rng(1)
    a = list(rng.random(n) < 0.85)
    b = list(rng.random(n) < 0.60)
    rows = _paired_rows(a, b)
    an = st.analyse(rows, "v1", variants=["v1", "v2"], gate=("v2", "v1", "pass_rate", 0.05, 0.0))
    c = an.comparison("v2", "pass_rate")
    assert c is not None and c.paired and c.significant and c.better
    bb = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    cc = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    assert c.p == pytest.approx(st.mcnemar(bb, cc)[0])
    assert c.sentence.startswith("v2 passes more checks than v1: +")
    assert an.gate is not None and an.gate.passed
    # and the other way round the gate fails
    an2 = st.analyse(rows, "v2", variants=["v1", "v2"], gate=("v1", "v2", "pass_rate", 0.05, 0.0))
    assert an2.gate is not None and not an2.gate.passed
    lat = an.comparison("v2", "latency_ms")
    assert lat is not None and lat.better and "faster" in lat.sentence
    v2 = an.variant("v2")
    assert v2.pass_rate == pytest.approx(sum(a) / n)
    assert v2.latency_p50 == pytest.approx(np.percentile([100.0 + i for i in range(n)], 50))


def test_analysis_unpaired_uses_fisher_for_small_tables() -> None:
    rows = [Row("v2", i, 0, passed=i < 9) for i in range(10)] + [
        Row("v1", 100 + i, 0, passed=i < 3) for i in range(10)
    ]
    c = st.compare_pass_rate(
        "v2", "v1", [r for r in rows if r.variant == "v2"], [r for r in rows if r.variant == "v1"]
    )
    assert not c.paired and c.test == "Fisher exact"
    assert c.p == pytest.approx(sps.fisher_exact([[9, 1], [3, 7]]).pvalue)
    assert c.significant and not c.too_small  # a big difference shows even with 10 per variant


def test_small_sample_warns() -> None:
    rows = _paired_rows([True, True, False, True], [True, False, False, True])
    an = st.analyse(rows, "v1", variants=["v1", "v2"])
    c = an.comparison("v2", "pass_rate")
    assert c is not None and c.too_small and "too few cases to tell" in c.sentence
    assert not c.significant


def test_errors_are_left_out_and_said() -> None:
    rows = [Row("v1", 0, 0, passed=True), Row("v1", 1, 0, status="error")]
    an = st.analyse(rows, "v1")
    assert an.variant("v1").results == 1 and an.variant("v1").errors == 1
    assert any("failed" in w for w in an.warnings)


def test_paired_bootstrap_difference_matches_scipy_on_the_differences() -> None:
    rng = np.random.default_rng(8)
    a = rng.normal(3.6, 0.8, 80)
    b = a - rng.normal(0.3, 0.5, 80)
    ours = st.bootstrap_difference(list(a), list(b), paired=True, seed=2)
    ref = sps.bootstrap(
        (a - b,), np.mean, method="percentile", n_resamples=20000, random_state=1
    ).confidence_interval
    assert ours is not None
    assert ours[0] == pytest.approx(ref.low, abs=0.03)
    assert ours[1] == pytest.approx(ref.high, abs=0.03)


def test_unpaired_bootstrap_median_difference_matches_scipy() -> None:
    rng = np.random.default_rng(9)
    a, b = rng.lognormal(5.0, 0.4, 120), rng.lognormal(5.2, 0.4, 90)
    ours = st.bootstrap_difference(list(a), list(b), paired=False, median=True, seed=3)

    def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.median(x, axis=axis) - np.median(y, axis=axis)

    ref = sps.bootstrap(
        (a, b), diff, method="percentile", n_resamples=10000, random_state=4
    ).confidence_interval
    assert ours is not None
    width = ref.high - ref.low
    assert ours[0] == pytest.approx(ref.low, abs=0.1 * width)
    assert ours[1] == pytest.approx(ref.high, abs=0.1 * width)


def test_paired_interval_agrees_with_a_bootstrap_of_the_pairs() -> None:
    # Agresti-Min's adjusted Wald interval against the percentile bootstrap of paired differences.
    rng = np.random.default_rng(5)
    n = 400
    a = rng.random(n) < 0.7
    b = rng.random(n) < 0.6
    bb = int(np.sum(a & ~b))
    cc = int(np.sum(b & ~a))
    lo, hi = st.paired_difference_interval(bb, cc, n)
    d = a.astype(float) - b.astype(float)
    ref = sps.bootstrap(
        (d,), np.mean, method="percentile", n_resamples=20000, random_state=6
    ).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.01)
    assert hi == pytest.approx(ref.high, abs=0.01)
