"""Percentile error of the latency sketches against exact values, through the rollup path.

Run with ``make bench`` (or ``pytest tests/bench/test_bench_sketch.py -s -o addopts=""``).

For several latency shapes (lognormal, exponential, bimodal, heavy-tailed
Pareto, uniform), values are spread over minutes and models, ingested through
the pipeline into real minute rollups (serialized DDSketches), then merged
back (a day's p50/p95/p99 is the merge of its minute rows) and compared with
numpy's exact quantiles of the same values.  Also compared: the live
aggregator's per-second percentiles (a weighted reservoir, not a sketch).

Target (product.md): <= 1% relative error vs exact, asserted for the rollups.
The live view is an approximation for the chart and is only printed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.core.event import Event
from app.core.ids import new_event_id
from app.sources.base import Batch
from app.sources.live import LiveAggregator
from app.sources.pipeline import Pipeline
from storage import open_store
from storage.queries.rollups import merged_sketch

N = 200_000
QS = (0.5, 0.95, 0.99)
TARGET = 0.01
T0 = 1_780_000_000.0

Shape = Callable[[np.random.Generator, int], np.ndarray]
SHAPES: dict[str, Shape] = {
    "lognormal": lambda rng, n: rng.lognormal(6.5, 0.6, n),
    "exponential": lambda rng, n: rng.exponential(400.0, n),
    "bimodal": lambda rng, n: np.where(
        rng.random(n) < 0.9, rng.normal(300, 30, n), rng.normal(8000, 900, n)
    ).clip(1),
    "pareto": lambda rng, n: (rng.pareto(1.5, n) + 1) * 100,
    "uniform": lambda rng, n: rng.uniform(50, 5000, n),
}


def exact_quantile(values: np.ndarray, q: float) -> float:
    # The "lower" definition: the value at rank floor(q * (n - 1)), as DDSketch ranks.
    return float(np.quantile(values, q, method="lower"))


@pytest.mark.timeout(1800)
def test_rollup_percentiles_within_one_percent(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    print()
    print(
        f"percentile relative error vs exact, {N:,} values each, through minute rollups (target {TARGET:.0%}):"
    )
    print(
        f"  {'shape':<12} {'p50':>8} {'p95':>8} {'p99':>8}   {'live p50':>9} {'live p95':>9} {'live p99':>9}   ingest"
    )
    worst = 0.0
    for name, shape in SHAPES.items():
        values = shape(rng, N)
        ts = T0 + np.sort(rng.uniform(0, 3600, N))  # an hour: 60 minute rows per model
        models = rng.choice(["m1", "m2", "m3"], N)
        events = [
            Event(ts_start=float(t), ts_end=float(t) + 1, provider="p", model=str(m), latency_ms=float(v),
                  ttft_ms=float(v) / 4, event_id=new_event_id(float(t)))
            for t, m, v in zip(ts, models, values, strict=True)
        ]  # fmt: skip
        with open_store(f"sqlite:///{tmp_path / (name + '.sqlite3')}") as store:
            pipeline = Pipeline(store)
            start = time.perf_counter()
            for i in range(0, N, 20_000):
                pipeline.write(Batch(events[i : i + 20_000]))
            rate = N / (time.perf_counter() - start)
            merged = merged_sketch(store.engine)
            merged_ttft = merged_sketch(store.engine, "ttft_sketch", model="m2")
        errors = [
            abs((merged.quantile(q) or 0) - exact_quantile(values, q)) / exact_quantile(values, q) for q in QS
        ]
        m2 = values[models == "m2"] / 4
        errors_ttft = [
            abs((merged_ttft.quantile(q) or 0) - exact_quantile(m2, q)) / exact_quantile(m2, q) for q in QS
        ]
        worst = max(worst, *errors, *errors_ttft)
        # The live view: everything in one second, per-cell reservoirs merged with weights.
        live = LiveAggregator(clock=lambda: T0)
        live.add(Event(ts_start=T0, ts_end=T0, provider="p", model=str(m), latency_ms=float(v))
                 for m, v in zip(models, values, strict=True))  # fmt: skip
        got = live.series(seconds=1).latency_ms
        live_errors = [abs(got[q][-1] - exact_quantile(values, q)) / exact_quantile(values, q) for q in QS]
        cells = " ".join(f"{e:8.3%}" for e in errors)
        live_cells = " ".join(f"{e:9.2%}" for e in live_errors)
        print(f"  {name:<12} {cells}   {live_cells}   {rate:,.0f} ev/s")
    print(f"  worst rollup error (latency and TTFT): {worst:.3%}")
    assert worst <= TARGET


def test_sketch_costs() -> None:
    from app.core.sketch import LatencySketch

    rng = np.random.default_rng(1)
    values = rng.lognormal(6.5, 0.6, 100_000).tolist()
    start = time.perf_counter()
    sketch = LatencySketch(values)
    add_us = (time.perf_counter() - start) / len(values) * 1e6
    minute_sketches = [LatencySketch(values[i : i + 100]) for i in range(0, len(values), 100)]
    blobs = [s.to_bytes() for s in minute_sketches]
    start = time.perf_counter()
    merged = LatencySketch.merged(LatencySketch.from_bytes(b) for b in blobs)
    merge_us = (time.perf_counter() - start) / len(blobs) * 1e6
    assert merged.same_bins(sketch)
    print()
    print(f"sketch add: {add_us:.2f} us/value; decode+merge of a 100-value minute row: {merge_us:.0f} us; "
          f"row size {np.mean([len(b) for b in blobs]):.0f} B")  # fmt: skip
