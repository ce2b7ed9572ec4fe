"""A/B statistics, written out (scipy is only a test dependency; the tests check every figure against it).

Per variant: pass rate with a Wilson 95% interval, judge score with a seeded
bootstrap interval, latency p50/p95, cost per case.  Against the baseline:

- pass rate, same cases on both sides (paired by case and repetition):
  McNemar — exact binomial on the discordant pairs when there are fewer than
  25 of them, else the chi-square with continuity correction; the difference's
  interval is Agresti-Min's adjusted Wald interval for paired proportions;
- pass rate, not paired: Fisher's exact test (two-sided, scipy's rule) when any
  expected cell count is under 5, else the pooled two-proportion z-test; the
  interval is Newcombe's hybrid score interval (from the two Wilson intervals);
- latency and judge score: Mann-Whitney U (normal approximation with tie and
  continuity corrections, scipy's ``method="asymptotic"``) for the p-value and a
  seeded bootstrap interval of the difference (of medians for latency, of means
  for scores; resampling pairs when paired).

Then a verdict in plain words, with a warning when the sample is too small to tell.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Protocol

import numpy as np

from app.core.format import fmt_usd

_N = NormalDist()
Z95 = _N.inv_cdf(0.975)
MCNEMAR_EXACT_BELOW = 25  # discordant pairs
BOOTSTRAP_RESAMPLES = 2000
MIN_CASES = 10  # fewer than this per variant: always "too small to tell"


# --- intervals -----------------------------------------------------------------------------------


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for ``k`` successes out of ``n`` (``(0, 1)`` when ``n`` is 0)."""
    if n <= 0:
        return (0.0, 1.0)
    z = _N.inv_cdf(0.5 + level / 2)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100), linear interpolation (numpy's default); ``None`` when empty."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def bootstrap_interval(
    values: Sequence[float],
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
    *,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` (vectorised over rows; default the mean)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return None
    if x.size == 1:
        return (float(x[0]), float(x[0]))
    stat = statistic or (lambda a: a.mean(axis=1))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    stats = stat(x[idx])
    alpha = (1 - level) / 2
    return (float(np.quantile(stats, alpha)), float(np.quantile(stats, 1 - alpha)))


def bootstrap_difference(
    a: Sequence[float],
    b: Sequence[float],
    *,
    paired: bool,
    median: bool = False,
    level: float = 0.95,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Interval of ``stat(a) - stat(b)`` (mean or median); paired resamples pairs together."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return None
    rng = np.random.default_rng(seed)

    def stat(m: np.ndarray) -> np.ndarray:
        out: np.ndarray = np.median(m, axis=1) if median else m.mean(axis=1)
        return out

    if paired:
        if x.size != y.size:
            raise ValueError("paired samples must be the same length")
        idx = rng.integers(0, x.size, size=(resamples, x.size))
        diffs = stat(x[idx]) - stat(y[idx])
    else:
        diffs = stat(x[rng.integers(0, x.size, size=(resamples, x.size))]) - stat(
            y[rng.integers(0, y.size, size=(resamples, y.size))]
        )
    alpha = (1 - level) / 2
    return (float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha)))


def newcombe_interval(k1: int, n1: int, k2: int, n2: int, level: float = 0.95) -> tuple[float, float]:
    """Newcombe's hybrid score interval for ``p1 - p2`` (independent samples)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson_interval(k1, n1, level)
    l2, u2 = wilson_interval(k2, n2, level)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def paired_difference_interval(b: int, c: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Agresti-Min adjusted Wald interval for a paired difference of proportions.

    ``b``: pairs where only the first passes, ``c``: only the second, ``n``: all pairs.
    """
    z = _N.inv_cdf(0.5 + level / 2)
    bb, cc, nn = b + 0.5, c + 0.5, n + 2.0
    d = (bb - cc) / nn
    var = ((bb + cc) - (bb - cc) ** 2 / nn) / (nn * nn)
    half = z * math.sqrt(max(var, 0.0))
    return (max(-1.0, d - half), min(1.0, d + half))


# --- tests ---------------------------------------------------------------------------------------


def binom_two_sided_half(k: int, n: int) -> float:
    """Two-sided exact binomial p-value for ``k`` of ``n`` at p = 0.5 (scipy's binomtest)."""
    if n == 0:
        return 1.0
    k = min(k, n - k)
    tail = sum(math.comb(n, i) for i in range(k + 1))
    p: float = min(1.0, 2 * tail / 2**n)
    return p


def mcnemar(b: int, c: int, *, exact: bool | None = None) -> tuple[float, str]:
    """McNemar's test on the discordant counts: ``(p, "exact" | "chi-square")``."""
    n = b + c
    if n == 0:
        return 1.0, "exact"
    if exact is None:
        exact = n < MCNEMAR_EXACT_BELOW
    if exact:
        return binom_two_sided_half(b, n), "exact"
    chi2 = (abs(b - c) - 1) ** 2 / n
    return math.erfc(math.sqrt(chi2 / 2)), "chi-square"


def _log_comb(n: int, k: int) -> float:
    return math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)


def fisher_exact(a: int, b: int, c: int, d: int) -> float:
    """Two-sided Fisher exact test of the 2x2 table [[a, b], [c, d]] (scipy's definition)."""
    r1, c1, n = a + b, a + c, a + b + c + d
    if n == 0 or r1 in (0, n) or c1 in (0, n):
        return 1.0
    lo, hi = max(0, c1 - (n - r1)), min(r1, c1)
    base = _log_comb(n, c1)

    def logp(x: int) -> float:
        return _log_comb(r1, x) + _log_comb(n - r1, c1 - x) - base

    observed = logp(a)
    # scipy counts tables whose probability is <= the observed one, with a relative tolerance.
    threshold = observed + math.log1p(1e-7)
    total = sum(math.exp(lp) for x in range(lo, hi + 1) if (lp := logp(x)) <= threshold)
    return min(1.0, total)


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> float:
    """Pooled two-proportion z-test, two-sided p-value."""
    if n1 == 0 or n2 == 0:
        return 1.0
    p = (k1 + k2) / (n1 + n2)
    se = math.sqrt(p * (1 - p) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0
    z = (k1 / n1 - k2 / n2) / se
    return math.erfc(abs(z) / math.sqrt(2))


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Mann-Whitney U of ``x`` and the two-sided p-value (normal approximation, tie and continuity
    corrections: scipy's ``mannwhitneyu(method="asymptotic")``)."""
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    both = np.concatenate([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    ranks = _rankdata(both)
    r1 = float(ranks[:n1].sum())
    u1 = r1 - n1 * (n1 + 1) / 2
    u2 = n1 * n2 - u1
    n = n1 + n2
    _, counts = np.unique(both, return_counts=True)
    tie = float((counts**3 - counts).sum())
    mu = n1 * n2 / 2
    var = n1 * n2 / 12 * ((n + 1) - tie / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0:
        return u1, 1.0
    z = (max(u1, u2) - mu - 0.5) / math.sqrt(var)
    p = math.erfc(z / math.sqrt(2))  # 2 * the normal survival function
    return u1, float(min(1.0, max(0.0, p)))


def _rankdata(a: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties sharing the mean of their ranks."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(a.size, dtype=float)
    i = 0
    while i < a.size:
        j = i
        while j + 1 < a.size and sorted_a[j + 1] == sorted_a[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def cases_needed(p: float, difference: float = 0.10, alpha: float = 0.05, power: float = 0.8) -> int:
    """Cases per variant to detect ``difference`` in pass rate around ``p`` (two-proportion sizing)."""
    p = min(max(p, 0.05), 0.95)
    za, zb = _N.inv_cdf(1 - alpha / 2), _N.inv_cdf(power)
    return math.ceil((za + zb) ** 2 * 2 * p * (1 - p) / difference**2)


# --- the analysis --------------------------------------------------------------------------------


class ResultLike(Protocol):
    """What the analysis reads of a stored result."""

    @property
    def variant(self) -> str: ...
    @property
    def case_index(self) -> int: ...
    @property
    def repetition(self) -> int: ...
    @property
    def status(self) -> str: ...
    @property
    def passed(self) -> bool | None: ...
    @property
    def score(self) -> float | None: ...
    @property
    def latency_ms(self) -> float | None: ...
    @property
    def cost_usd(self) -> float | None: ...


@dataclass(frozen=True, slots=True)
class VariantStats:
    name: str
    results: int  # graded results (errors excluded)
    errors: int
    passed: int
    pass_rate: float | None
    pass_ci: tuple[float, float] | None
    score_mean: float | None
    score_ci: tuple[float, float] | None
    scores: int
    latency_p50: float | None
    latency_p95: float | None
    cost_per_case: float | None  # mean over results with a known cost
    cost_total: float
    cost_unknown: int  # results whose cost is unknown (no price)


@dataclass(frozen=True, slots=True)
class Comparison:
    """One metric of one variant against the baseline.  ``diff`` is variant minus baseline."""

    variant: str
    baseline: str
    metric: str  # pass_rate | score | latency_ms | cost_usd
    diff: float | None
    ci: tuple[float, float] | None
    p: float | None
    test: str
    paired: bool
    n: int  # pairs, or the smaller sample
    significant: bool
    better: bool | None  # None: no significant difference
    too_small: bool
    sentence: str


@dataclass(frozen=True, slots=True)
class GateResult:
    variant: str
    baseline: str
    metric: str
    alpha: float
    margin: float
    passed: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Analysis:
    baseline: str
    variants: list[VariantStats]
    comparisons: list[Comparison]
    gate: GateResult | None = None
    verdicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def variant(self, name: str) -> VariantStats:
        return next(v for v in self.variants if v.name == name)

    def comparison(self, variant: str, metric: str) -> Comparison | None:
        return next((c for c in self.comparisons if c.variant == variant and c.metric == metric), None)


def variant_stats(name: str, rows: Sequence[ResultLike], *, seed: int = 0) -> VariantStats:
    ok = [r for r in rows if r.status == "ok" and r.passed is not None]
    errors = sum(1 for r in rows if r.status != "ok")
    k = sum(1 for r in ok if r.passed)
    n = len(ok)
    scores = [float(r.score) for r in ok if r.score is not None]
    lat = [float(r.latency_ms) for r in rows if r.status == "ok" and r.latency_ms is not None]
    costs = [float(r.cost_usd) for r in rows if r.cost_usd is not None]
    return VariantStats(
        name,
        n,
        errors,
        k,
        k / n if n else None,
        wilson_interval(k, n) if n else None,
        float(np.mean(scores)) if scores else None,
        bootstrap_interval(scores, seed=seed) if scores else None,
        len(scores),
        percentile(lat, 50),
        percentile(lat, 95),
        float(np.mean(costs)) if costs else None,
        float(sum(costs)),
        sum(1 for r in rows if r.cost_usd is None),
    )


def _z(x: float, spec: str) -> str:
    """``format(x, spec)`` without a minus sign on a value that rounds to zero."""
    text = format(x, spec)
    return text.replace("-", "", 1) if text.lstrip("+-").strip("0.") == "" else text


def _pct(x: float) -> str:
    return f"{x * 100:+.0f}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "p = n/a"
    if p < 0.001:
        return "p < 0.001"
    return f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def compare_pass_rate(
    name: str, base: str, a: Sequence[ResultLike], b: Sequence[ResultLike], *, alpha: float = 0.05
) -> Comparison:
    """Pass rate of ``a`` (the variant) against ``b`` (the baseline)."""
    pa = {
        (r.case_index, r.repetition): bool(r.passed) for r in a if r.status == "ok" and r.passed is not None
    }
    pb = {
        (r.case_index, r.repetition): bool(r.passed) for r in b if r.status == "ok" and r.passed is not None
    }
    shared = sorted(set(pa) & set(pb))
    paired = bool(shared) and len(shared) >= 0.8 * max(len(pa), len(pb))
    if not pa or not pb:
        return Comparison(name, base, "pass_rate", None, None, None, "none", False, 0, False, None, True,
                          f"{name} and {base} cannot be compared on pass rate yet (no graded results)")  # fmt: skip
    if paired:
        n = len(shared)
        bb = sum(1 for key in shared if pa[key] and not pb[key])
        cc = sum(1 for key in shared if pb[key] and not pa[key])
        diff = (bb - cc) / n
        ci = paired_difference_interval(bb, cc, n)
        p, kind = mcnemar(bb, cc)
        test = f"McNemar ({kind}, {bb + cc} discordant pairs of {n})"
        n_small = n
        pooled = (sum(pa[k] for k in shared) + sum(pb[k] for k in shared)) / (2 * n)
    else:
        k1, n1 = sum(pa.values()), len(pa)
        k2, n2 = sum(pb.values()), len(pb)
        diff = k1 / n1 - k2 / n2
        ci = newcombe_interval(k1, n1, k2, n2)
        tot = n1 + n2
        expected = [
            r * c / tot for r in (n1, n2) for c in (k1 + k2, tot - k1 - k2)
        ]  # the 2x2 table's expected counts
        if min(expected) < 5:
            p, test = fisher_exact(k1, n1 - k1, k2, n2 - k2), "Fisher exact"
        else:
            p, test = two_proportion_z(k1, n1, k2, n2), "two-proportion z"
        n_small = min(n1, n2)
        pooled = (k1 + k2) / tot
    significant = p < alpha
    better = (diff > 0) if significant else None
    half = (ci[1] - ci[0]) / 2
    too_small = n_small < MIN_CASES or (not significant and half > 0.15)
    span = f"{_pct(diff)} points [{ci[0] * 100:.0f}, {ci[1] * 100:.0f}], {_fmt_p(p)}"
    if significant:
        sentence = f"{name} passes {'more' if diff > 0 else 'fewer'} checks than {base}: {span}"
    else:
        sentence = f"no clear difference in pass rate between {name} and {base}: {span}"
    if too_small:
        sentence += (
            f" (too few cases to tell: {n_small} {'pairs' if paired else 'per variant'}; about "
            f"{cases_needed(pooled)} per variant would show a 10-point difference)"
        )
    return Comparison(name, base, "pass_rate", diff, ci, p, test, paired, n_small, significant, better,
                      too_small, sentence)  # fmt: skip


def compare_values(
    name: str,
    base: str,
    metric: str,
    a: Sequence[ResultLike],
    b: Sequence[ResultLike],
    *,
    alpha: float = 0.05,
    seed: int = 0,
) -> Comparison:
    """Latency (median difference) or judge score (mean difference): Mann-Whitney U and a bootstrap interval."""

    def value(r: ResultLike) -> float | None:
        v = r.latency_ms if metric == "latency_ms" else r.score if metric == "score" else r.cost_usd
        return None if v is None or r.status != "ok" else float(v)

    va = {(r.case_index, r.repetition): x for r in a if (x := value(r)) is not None}
    vb = {(r.case_index, r.repetition): x for r in b if (x := value(r)) is not None}
    label = {"latency_ms": "latency", "score": "judge score", "cost_usd": "cost"}[metric]
    if not va or not vb:
        return Comparison(name, base, metric, None, None, None, "none", False, 0, False, None, True,
                          f"{name} and {base} cannot be compared on {label} (no values)")  # fmt: skip
    shared = sorted(set(va) & set(vb))
    paired = bool(shared) and len(shared) >= 0.8 * max(len(va), len(vb))
    use_median = metric == "latency_ms"
    if paired:
        xa, xb = [va[k] for k in shared], [vb[k] for k in shared]
    else:
        xa, xb = list(va.values()), list(vb.values())
    stat = np.median if use_median else np.mean
    diff = float(stat(xa) - stat(xb))
    ci = bootstrap_difference(xa, xb, paired=paired, median=use_median, seed=seed)
    _, p = mann_whitney_u(xa, xb)
    significant = p < alpha
    lower_is_better = metric in ("latency_ms", "cost_usd")
    better = ((diff < 0) if lower_is_better else (diff > 0)) if significant else None
    n_small = min(len(xa), len(xb))
    too_small = n_small < MIN_CASES
    if metric == "latency_ms":
        span = (
            f"{_z(diff, '+.0f')} ms median [{_z(ci[0], '.0f')}, {_z(ci[1], '.0f')}]"
            if ci
            else f"{diff:+.0f} ms"
        )
        word = ("faster" if diff < 0 else "slower") if significant else ""
        head = (
            f"{name} is {word} than {base}"
            if significant
            else f"no clear latency difference between {name} and {base}"
        )
    elif metric == "score":
        span = f"{diff:+.2f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{diff:+.2f}"
        word = ("higher" if diff > 0 else "lower") if significant else ""
        head = (
            f"{name} scores {word} than {base} with the judge"
            if significant
            else f"no clear difference in judge score between {name} and {base}"
        )
    else:
        sign = "+" if diff >= 0 else ""
        span = (
            f"{sign}{fmt_usd(diff)} per case [{fmt_usd(ci[0])}, {fmt_usd(ci[1])}]"
            if ci
            else f"{sign}{fmt_usd(diff)} per case"
        )  # dollars as the tables show them (ui.md numbers)
        word = ("costs less" if diff < 0 else "costs more") if significant else ""
        head = (
            f"{name} {word} than {base}"
            if significant
            else f"no clear cost difference between {name} and {base}"
        )
    sentence = f"{head}: {span}, {_fmt_p(p)} (Mann-Whitney U)"
    if too_small:
        sentence += f" (too few cases to tell: {n_small})"
    return Comparison(name, base, metric, diff, ci, p, "Mann-Whitney U", paired, n_small, significant, better,
                      too_small, sentence)  # fmt: skip


def analyse(
    rows: Sequence[ResultLike],
    baseline: str,
    *,
    variants: Sequence[str] | None = None,
    gate: tuple[str, str, str, float, float] | None = None,
    alpha: float = 0.05,
    seed: int = 0,
) -> Analysis:
    """Everything above for a run's results.  ``gate``: (variant, not_worse_than, metric, alpha, margin)."""
    by: dict[str, list[ResultLike]] = {}
    for r in rows:
        by.setdefault(r.variant, []).append(r)
    names = list(variants) if variants is not None else sorted(by)
    stats = [variant_stats(n, by.get(n, []), seed=seed) for n in names]
    comparisons: list[Comparison] = []
    base_rows = by.get(baseline, [])
    has_scores = any(r.score is not None for r in rows)
    for n in names:
        if n == baseline:
            continue
        rows_n = by.get(n, [])
        comparisons.append(compare_pass_rate(n, baseline, rows_n, base_rows, alpha=alpha))
        if has_scores:
            comparisons.append(
                compare_values(n, baseline, "score", rows_n, base_rows, alpha=alpha, seed=seed)
            )
        comparisons.append(
            compare_values(n, baseline, "latency_ms", rows_n, base_rows, alpha=alpha, seed=seed)
        )
        comparisons.append(compare_values(n, baseline, "cost_usd", rows_n, base_rows, alpha=alpha, seed=seed))
    warnings: list[str] = []
    for s in stats:
        if s.errors:
            warnings.append(f"{s.name}: {s.errors} call(s) failed and are left out of the figures")
        if s.cost_unknown:
            warnings.append(
                f"{s.name}: the cost of {s.cost_unknown} call(s) is unknown (no price for the model)"
            )
    # Pass rate and judge score always; latency and cost when they differ significantly.
    verdicts = [c.sentence for c in comparisons if c.metric in ("pass_rate", "score") or c.significant]
    gate_result = None
    if gate is not None:
        gate_result = evaluate_gate(gate, by, alpha=gate[3], seed=seed)
    return Analysis(baseline, stats, comparisons, gate_result, verdicts, warnings)


def evaluate_gate(
    gate: tuple[str, str, str, float, float],
    by: dict[str, list[ResultLike]],
    *,
    alpha: float,
    seed: int = 0,
) -> GateResult:
    """The gate fails when the variant is worse than the other by more than ``margin``, significantly
    at ``alpha`` — or when there is nothing to compare."""
    variant, base, metric, _, margin = gate
    a, b = by.get(variant, []), by.get(base, [])
    if metric == "pass_rate":
        c = compare_pass_rate(variant, base, a, b, alpha=alpha)
    else:
        c = compare_values(variant, base, metric, a, b, alpha=alpha, seed=seed)
    if c.diff is None:
        return GateResult(variant, base, metric, alpha, margin, False, c.sentence)
    limit = margin / 100.0 if metric == "pass_rate" else margin  # pass-rate margins are in points
    worse_by = -c.diff if metric in ("pass_rate", "score") else c.diff
    if c.significant and worse_by > limit:
        return GateResult(variant, base, metric, alpha, margin, False, c.sentence)
    return GateResult(
        variant,
        base,
        metric,
        alpha,
        margin,
        True,
        f"{variant} is not worse than {base} ({c.sentence})",
    )
