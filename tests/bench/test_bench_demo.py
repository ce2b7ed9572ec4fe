"""Demo mode's history backfill: 24 h of simulated events through the ingest pipeline (goal: well under 10 s)."""

from __future__ import annotations

import time
from pathlib import Path

from app.demo import Demo, HistoryMaker
from storage.engine import open_store


def test_bench_demo_backfill(tmp_path: Path) -> None:
    maker = HistoryMaker(0)
    t0 = time.perf_counter()
    n = sum(len(maker.minute(m)) for m in range(29_800_000, 29_800_000 + 1440))
    gen_s = time.perf_counter() - t0
    with open_store(f"sqlite:///{tmp_path / 'bench.sqlite3'}") as store:
        demo = Demo(store, None)
        first = demo.backfill(24, now=1_790_000_000.0)
        again = demo.backfill(24, now=1_790_000_000.0)
    print(
        f"\ndemo backfill: generate {n} events {gen_s:.2f} s ({n / gen_s:,.0f}/s); "
        f"first backfill {first.generated} events in {first.seconds:.2f} s "
        f"({first.generated / first.seconds:,.0f}/s, goal < 10 s); "
        f"repeat (all duplicates) {again.seconds:.2f} s, {again.ingested} new"
    )
    assert first.ingested == first.generated
    assert again.ingested == 0
