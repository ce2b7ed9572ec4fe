"""Latency sketches: accuracy against exact quantiles, merging, and the storage format."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.core.sketch import LatencySketch, SketchDecodeError


def exact(values: list[float], q: float) -> float:
    # The same rank rule as DDSketch (lower value at rank q * (n - 1)).
    s = sorted(values)
    return s[math.floor(q * (len(s) - 1))]


def lognormal(n: int, seed: int, mu: float = 6.0, sigma: float = 1.0) -> list[float]:
    return list(np.random.default_rng(seed).lognormal(mu, sigma, n))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_p50_p95_p99_are_within_one_percent_of_exact(seed: int) -> None:
    values = lognormal(20_000, seed)
    sk = LatencySketch(values)
    for q in (0.5, 0.95, 0.99):
        got = sk.quantile(q)
        want = exact(values, q)
        assert got is not None
        assert abs(got - want) / want <= 0.01, (q, got, want)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(0.01, 1e6, allow_nan=False), min_size=1, max_size=300),
    st.sampled_from([0.0, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]),
)
def test_any_quantile_of_any_data_is_within_one_percent(values: list[float], q: float) -> None:
    sk = LatencySketch(values)
    got = sk.quantile(q)
    want = exact(values, q)
    assert got is not None
    assert abs(got - want) <= 0.01 * want + 1e-12


def test_merging_equals_one_sketch_of_all_values() -> None:
    values = lognormal(5000, 9)
    parts = [LatencySketch(values[i : i + 500]) for i in range(0, 5000, 500)]
    merged = LatencySketch.merged(parts)
    whole = LatencySketch(values)
    assert merged.same_bins(whole)
    assert merged.count == whole.count == 5000
    for q in (0.01, 0.5, 0.95, 0.99, 0.999):
        assert merged.quantile(q) == whole.quantile(q)
    assert merged.min == whole.min and merged.max == whole.max
    assert merged.sum == pytest.approx(whole.sum)
    assert parts[0].count == 500  # merging leaves its inputs alone


def test_merge_into_an_empty_sketch_and_of_an_empty_sketch() -> None:
    a = LatencySketch([1.0, 2.0])
    empty = LatencySketch()
    a.merge(empty)
    assert a.count == 2
    empty.merge(a)
    assert empty.same_bins(a)
    a.add(100.0)
    assert empty.count == 2  # a copy, not shared bins


def test_an_empty_sketch_has_no_quantiles() -> None:
    sk = LatencySketch()
    assert sk.quantile(0.5) is None
    assert sk.min is None and sk.max is None and sk.mean is None
    assert len(sk) == 0


def test_zero_latencies_count() -> None:
    sk = LatencySketch([0.0, 0.0, 0.0, 10.0])
    assert sk.quantile(0.5) == 0.0
    assert sk.quantile(1.0) == pytest.approx(10.0, rel=0.01)


def test_bad_values_are_refused() -> None:
    sk = LatencySketch()
    with pytest.raises(ValueError):
        sk.add(float("nan"))
    with pytest.raises(ValueError):
        sk.add(1.0, weight=0)
    with pytest.raises(ValueError):
        sk.quantile(1.5)


@pytest.mark.parametrize("n", [0, 1, 10, 1000, 50_000])
def test_bytes_round_trip_exactly(n: int) -> None:
    sk = LatencySketch(lognormal(n, n))
    back = LatencySketch.from_bytes(sk.to_bytes())
    assert back.same_bins(sk)
    assert back.count == sk.count
    assert back.sum == sk.sum and back.min == sk.min and back.max == sk.max
    assert back.quantiles([0.5, 0.95, 0.99]) == sk.quantiles([0.5, 0.95, 0.99])
    back.add(5.0)  # a decoded sketch keeps working
    assert back.count == n + 1


def test_the_format_is_compact() -> None:
    assert len(LatencySketch([120.0]).to_bytes()) <= 48
    assert len(LatencySketch(lognormal(10, 1)).to_bytes()) <= 80
    assert len(LatencySketch(lognormal(100_000, 1)).to_bytes()) <= 1500


def test_fractional_weights_survive_the_round_trip() -> None:
    sk = LatencySketch()
    sk.add(10.0, weight=0.5)
    sk.add(20.0, weight=2.25)
    back = LatencySketch.from_bytes(sk.to_bytes())
    assert back.count == 2.75 and back.same_bins(sk)


def test_negative_values_round_trip() -> None:
    sk = LatencySketch([-5.0, -1.0, 3.0])
    back = LatencySketch.from_bytes(sk.to_bytes())
    assert back.same_bins(sk)
    assert back.quantile(0.0) == pytest.approx(-5.0, rel=0.01)


def test_decoded_sketches_merge_like_the_originals() -> None:
    a, b = lognormal(300, 1), lognormal(300, 2)
    rows = [LatencySketch(a).to_bytes(), LatencySketch(b).to_bytes()]
    hour = LatencySketch.merged(LatencySketch.from_bytes(r) for r in rows)
    assert hour.same_bins(LatencySketch(a + b))


@pytest.mark.parametrize(
    "data",
    [b"", b"\x02\x00", b"\x01", b"\x01\x00\x00\x00", LatencySketch([1.0, 2.0]).to_bytes()[:-3]],
)
def test_corrupt_bytes_are_a_clear_error(data: bytes) -> None:
    with pytest.raises(SketchDecodeError):
        LatencySketch.from_bytes(data)


def test_trailing_garbage_is_refused() -> None:
    with pytest.raises(SketchDecodeError, match="trailing"):
        LatencySketch.from_bytes(LatencySketch([1.0]).to_bytes() + b"\x00")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e7, allow_nan=False), max_size=200))
def test_round_trip_of_any_data(values: list[float]) -> None:
    sk = LatencySketch(values)
    back = LatencySketch.from_bytes(sk.to_bytes())
    assert back.same_bins(sk) and back.count == sk.count


def test_python_floats_and_random_module_values_work_too() -> None:
    rng = random.Random(0)
    sk = LatencySketch(rng.expovariate(1 / 300) for _ in range(1000))
    assert sk.count == 1000
