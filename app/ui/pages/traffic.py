"""The Traffic page (product.md job 1): live and historical charts on one time axis with a crosshair.

Eight charts share one x axis in the operator's local time: requests, latency
p50/p95/p99, time to first token p50/p95, failures stacked by type, cost per
minute, spend today against the daily budgets, tokens in and out, cache hits.
Frames come from :class:`~app.ui.livefeed.LiveFeed`; this page only draws.

Keys: drag to zoom the time axis, double-click to follow live again, Ctrl+E
exports the visible series (CSV, UTC) and the charts (PNG).
"""

from __future__ import annotations

import collections
import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core import format as fmt
from app.core.event import FAILURE_TYPES
from app.ui.charts import Crosshair, SeriesSpec, TimeChart, local_utc_offset_label, pg
from app.ui.filters import FilterState
from app.ui.livefeed import F64, LiveFeed, TrafficFrame, day_zone
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import QTimer, QtWidgets, Signal
from app.ui.theme import DARK, FAILURE_COLORS, Colors, current_colors

#: Which chart an Overview tile opens.
TILE_CHART: dict[str, str] = {
    "requests_per_s": "requests",
    "p95_latency_ms": "latency",
    "error_rate": "failures",
    "cost_today_usd": "spend",
    "cache_hit_rate": "cache",
    "open_breakers": "failures",
}

CHART_KEYS: tuple[str, ...] = ("requests", "latency", "ttft", "failures", "cost", "spend", "tokens", "cache")
_COLUMNS = 2
_MIN_PLOT_HEIGHT = 105
#: Milliseconds between drawing one chart and the next when the live feed refreshes.
STAGE_MS = 4
NO_TRAFFIC = (
    "No traffic in this range yet. Start the demo (controlroom ui --demo), point a source at "
    "your logs on the Sources page, or widen the filters."
)


def _no_traffic(state: FilterState) -> str:
    if state.prompt is None:
        return NO_TRAFFIC
    return (
        f"No traffic through prompt {state.prompt} in this range. Requests use a registry prompt with "
        "the x-controlroom-prompt header or prompt= in the library (docs/prompts.md); or widen the filters."
    )


def _num(v: float) -> str:
    """Axis ticks for rates: 0.25, 2.5, 12, 1.2k (the unit is on the axis)."""
    if not math.isfinite(v):
        return ""
    if v == 0:
        return "0"
    if abs(v) < 10:
        text = f"{v:.2f}".rstrip("0").rstrip(".")
        return text
    return fmt.fmt_count(v)


def _latency_tick(v: float) -> str:
    """Latency ticks without trailing zeros: ``500 ms``, ``1.5 s``, ``2 s``."""
    text = fmt.fmt_latency_ms(v)
    if text.endswith(" s") and "." in text:
        number = text[:-2].rstrip("0").rstrip(".")
        text = f"{number} s"
    return text


def _pct(v: float) -> str:
    return fmt.fmt_percent(v, 1)


@dataclass(frozen=True)
class Palette:
    """Series colours for one theme: percentiles are one hue in three strengths (ui.md)."""

    lat: tuple[str, str, str]
    ttft: tuple[str, str]
    requests: str
    tokens_in: str
    tokens_out: str
    cost: str
    spend: str
    cache: str


def palette(colors: Colors) -> Palette:
    if colors is DARK or colors.window == DARK.window:
        return Palette(
            lat=("#5b7fbf", "#6ea0ff", "#c4d7ff"),
            ttft=("#4f9a8f", "#8fe3d4"),
            requests=colors.accent,
            tokens_in=colors.accent,
            tokens_out="#c39bff",
            cost=colors.accent,
            spend=colors.text,
            cache="#8fe3d4",
        )
    return Palette(
        lat=("#9dbcf2", "#3d77d8", "#153f8c"),
        ttft=("#7cc4b8", "#1f7a6c"),
        requests=colors.accent,
        tokens_in=colors.accent,
        tokens_out="#7b4fc9",
        cost=colors.accent,
        spend=colors.text,
        cache="#1f7a6c",
    )


def local_time_text(t: float, step_s: int) -> str:
    """The crosshair's time: ``14:03:12`` live, ``Mon 29 Nov 14:05`` in history, local time."""
    lt = time.localtime(t)
    if step_s < 60:
        return time.strftime("%H:%M:%S", lt)
    if step_s >= 86400:
        return time.strftime("%a %d %b", lt)
    return time.strftime("%a %d %b %H:%M", lt)


class _Graphics(pg.GraphicsLayoutWidget):  # type: ignore[misc]
    """The chart area; a double-click anywhere goes back to following live."""

    double_clicked = Signal()

    def mouseDoubleClickEvent(self, event: Any) -> None:
        self.double_clicked.emit()
        super().mouseDoubleClickEvent(event)


class TrafficPage(QtWidgets.QWidget):
    """Draws :class:`TrafficFrame` s; ``apply_frame`` is all a data source needs to call."""

    exported = Signal(str)  # a message for the status bar

    def __init__(self, feed: LiveFeed | None = None, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.spec = page_spec("traffic")
        self.feed = feed
        self.frame: TrafficFrame | None = None
        self.follow = True
        self._query_key: tuple[object, ...] | None = None
        self._rate_unit = "s"
        self._pending: TrafficFrame | None = None
        self.focused_chart: str | None = None

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 8)
        layout.setSpacing(6)
        self.header = PageHeader(self.spec.title, "")
        layout.addWidget(self.header)
        self.context = QtWidgets.QLabel("", objectName="muted")
        self.context.setWordWrap(True)
        layout.addWidget(self.context)
        self.empty = EmptyState(NO_TRAFFIC)
        layout.addWidget(self.empty)

        self.graphics = _Graphics()
        self.graphics.setObjectName("trafficCharts")
        self.graphics.ci.setSpacing(4)
        self.graphics.double_clicked.connect(self.follow_live)
        self.charts: dict[str, TimeChart] = {}
        self._build_charts()
        scroll = QtWidgets.QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QtWidgets.QFrame.Shape.NoFrame)
        scroll.setWidget(self.graphics)
        self.scroll_area = scroll
        layout.addWidget(scroll, 1)
        for chart in self.charts.values():
            vb = chart.plot.getViewBox()
            vb.sigRangeChangedManually.connect(lambda *_a, c=chart: self._on_manual_zoom(c))
        # Charts are drawn one per event-loop turn, so each repaint covers one chart, not eight
        # (the longest GUI-thread stall stays small under heavy traffic: tests/bench/test_bench_gui.py).
        self._stage: list[TimeChart] = []
        self._stage_timer = QTimer(self)
        self._stage_timer.setInterval(STAGE_MS)
        self._stage_timer.timeout.connect(self._draw_next)
        self._staged: tuple[TrafficFrame, dict[str, dict[str, F64]]] | None = None
        #: GUI-thread seconds per frame (all charts' steps added) and per step: for the benchmark.
        self.draw_times: collections.deque[float] = collections.deque(maxlen=2000)
        self.step_times: collections.deque[float] = collections.deque(maxlen=20000)
        self._frame_cost = 0.0
        self.crosshair = Crosshair(self.graphics.scene(), list(self.charts.values()), self._time_text)
        self.apply_colors(current_colors())
        self._show_context(FilterState(), None)
        if feed is not None:
            feed.frame_ready.connect(self._on_feed_frame)
            if feed.last_frame is not None:
                self.apply_frame(feed.last_frame)

    # -- building ---------------------------------------------------------------------------
    def _build_charts(self) -> None:
        colors = current_colors()
        p = palette(colors)
        u = self._rate_unit
        rate: Callable[[float], str] = lambda v: fmt.fmt_rate(v, u)  # noqa: E731
        usd_min: Callable[[float], str] = lambda v: f"{fmt.fmt_usd(v)}/min"  # noqa: E731
        charts = [
            TimeChart(
                "requests",
                "Requests",
                f"requests /{u}",
                _num,
                [
                    SeriesSpec("requests", "all", p.requests, formatter=rate),
                    SeriesSpec("errors", "failed", colors.bad, formatter=rate),
                ],
            ),
            TimeChart(
                "latency",
                "Latency",
                "latency",
                _latency_tick,
                [
                    SeriesSpec("p50", "p50", p.lat[0], formatter=fmt.fmt_latency_ms),
                    SeriesSpec("p95", "p95", p.lat[1], formatter=fmt.fmt_latency_ms),
                    SeriesSpec("p99", "p99", p.lat[2], width=1.5, formatter=fmt.fmt_latency_ms),
                ],
                minimum_top=100.0,
            ),
            TimeChart(
                "ttft",
                "Time to first token",
                "time to first token",
                _latency_tick,
                [
                    SeriesSpec("p50", "p50", p.ttft[0], formatter=fmt.fmt_latency_ms),
                    SeriesSpec("p95", "p95", p.ttft[1], formatter=fmt.fmt_latency_ms),
                ],
                minimum_top=100.0,
            ),
            TimeChart(
                "failures",
                "Failures by type",
                f"failures /{u}",
                _num,
                [
                    SeriesSpec(f.value, f.value, FAILURE_COLORS[f], stacked=True, formatter=rate)
                    for f in FAILURE_TYPES
                ],
            ),
            TimeChart(
                "cost",
                "Cost per minute",
                "USD /min",
                fmt.fmt_usd,
                [SeriesSpec("cost", "cost", p.cost, formatter=usd_min)],
                minimum_top=0.01,
            ),
            TimeChart(
                "spend",
                "Spend today (UTC day) vs budget",
                "USD",
                fmt.fmt_usd,
                [SeriesSpec("spend", "spent", p.spend, width=1.5)],
                minimum_top=0.01,
            ),
            TimeChart(
                "tokens",
                "Tokens",
                f"tokens /{u}",
                _num,
                [
                    SeriesSpec("input", "in", p.tokens_in, formatter=rate),
                    SeriesSpec("output", "out", p.tokens_out, formatter=rate),
                ],
            ),
            TimeChart(
                "cache",
                "Cache hits",
                f"hits /{u}",
                _num,
                [
                    SeriesSpec("hits", "hits", p.cache, formatter=rate),
                    SeriesSpec("hit_rate", "hit rate", colors.muted, dash=True, formatter=_pct),
                ],
            ),
        ]
        # One time axis for the page (ui.md): tick times under the bottom row only.  The x ranges
        # are kept equal by the page rather than setXLink, so charts can be redrawn one at a time.
        for i, chart in enumerate(charts):
            row, col = divmod(i, _COLUMNS)
            self.graphics.addItem(chart.header, row=2 * row, col=col)
            self.graphics.addItem(chart.plot, row=2 * row + 1, col=col)
            chart.plot.setMinimumHeight(_MIN_PLOT_HEIGHT)
            if i < len(charts) - _COLUMNS:
                chart.plot.getAxis("bottom").setStyle(showValues=False)
                chart.plot.getAxis("bottom").setHeight(8)
            self.charts[chart.key] = chart
        # The hit rate is read out, not drawn: a 0-1 ratio on a hits/s axis would mislead.
        self.charts["cache"].curves["hit_rate"].setVisible(False)
        rows = math.ceil(len(charts) / _COLUMNS)
        # Both columns the same width, so their time axes line up (charts.ChartHeader: the
        # readouts' text does not size them).
        layout = self.graphics.ci.layout
        for col in range(_COLUMNS):
            layout.setColumnStretchFactor(col, 1)
            layout.setColumnPreferredWidth(col, 10)
        for chart in list(self.charts.values())[-_COLUMNS:]:
            chart.plot.setLabel("bottom", f"local time ({local_utc_offset_label()})")
        self.graphics.setMinimumHeight(rows * (_MIN_PLOT_HEIGHT + 40))

    def _set_rate_unit(self, unit: str) -> None:
        """Live charts count per second, history per minute: the axes and readouts say which."""
        if unit == self._rate_unit:
            return
        self._rate_unit = unit
        rate: Callable[[float], str] = lambda v: fmt.fmt_rate(v, unit)  # noqa: E731
        labels = {"requests": "requests", "failures": "failures", "tokens": "tokens", "cache": "hits"}
        colors = current_colors()
        for key, noun in labels.items():
            chart = self.charts[key]
            chart.unit_label = f"{noun} /{unit}"
            chart.plot.getAxis("left").setLabel(chart.unit_label, color=colors.muted)
            for spec in chart.specs:
                if spec.key != "hit_rate":
                    spec.formatter = rate

    def apply_colors(self, colors: Colors) -> None:
        self.graphics.setBackground(colors.base)
        for chart in self.charts.values():
            chart.apply_colors(colors)

    # -- data -------------------------------------------------------------------------------
    def apply_frame(self, frame: TrafficFrame) -> None:
        """Draw a frame (or keep it for when the page is shown: hidden pages do not draw)."""
        if not self.isVisible() and self.frame is not None:
            self._pending = frame
            return
        self._draw(frame)

    def showEvent(self, event: Any) -> None:
        super().showEvent(event)
        if self._pending is not None:
            frame, self._pending = self._pending, None
            self._draw(frame)

    def _on_feed_frame(self, frame: TrafficFrame) -> None:
        if not self.isVisible() and self.frame is not None:
            self._pending = frame
            return
        self._draw(frame, staged=True)

    def _draw(self, frame: TrafficFrame, *, staged: bool = False) -> None:
        """Draw every chart now, or (``staged``, from the live feed) one chart per event-loop turn."""
        started = time.perf_counter()
        self.frame = frame
        key = frame.state.query_key()
        if key != self._query_key:
            self._query_key = key
            for chart in self.charts.values():
                chart.reset_range()
            self.follow = True
        self._set_rate_unit(frame.rate_unit)
        data = self.series_of(frame)
        lines: list[tuple[float, str, str]] = []
        colors = current_colors()
        for b in frame.budgets:
            lines.append((b.limit_usd, f"budget {b.name} {fmt.fmt_usd(b.limit_usd)}", colors.bad))
            if b.warn_at:
                level = max(b.warn_at)
                lines.append((b.limit_usd * level, f"warn {level:.0%}", colors.warn))
        lines.sort(key=lambda line: -line[0])  # the order the chart lays their labels out in
        spend = self.charts["spend"]
        # Its day runs from midnight in the daily budget's time zone, as the budget does.
        spend.title = f"Spend today ({day_zone(frame.budgets)} day) vs budget"
        if [(v, lab) for v, lab, _ in lines] != [
            (a.value, a.item.label.toPlainText()) for a in spend.annotations
        ]:
            spend.set_annotations(lines)
        state_colors = {"open": colors.bad, "half_open": colors.warn, "closed": colors.ok}
        marks = [
            (
                m.ts,
                f"{m.target} {m.to_state.replace('_', '-')}",
                state_colors.get(m.to_state, colors.muted),
                f"{local_time_text(m.ts, 1)} breaker {m.target}: {m.from_state} → {m.to_state} ({m.cause})",
            )
            for m in frame.transitions
            if len(frame.t) and frame.t[0] <= m.ts <= frame.t[-1] + frame.step_s
        ]
        for chart_key in ("requests", "failures"):
            self.charts[chart_key].set_markers(marks)
        self.empty.setText(frame.note or _no_traffic(frame.state))
        self.empty.setVisible(frame.is_empty())
        self._show_context(frame.state, frame)
        self._staged = (frame, data)
        self._stage = list(self.charts.values())
        self._frame_cost = time.perf_counter() - started
        if staged:
            self._stage_timer.start()
            self._draw_next()
        else:
            self._stage_timer.stop()
            while self._stage:
                self._draw_next()

    def _draw_next(self) -> None:
        if not self._stage or self._staged is None:
            self._stage_timer.stop()
            return
        started = time.perf_counter()
        frame, data = self._staged
        chart = self._stage.pop(0)
        t = frame.t
        chart.set_data(t, data[chart.key], extra_peak=chart.annotation_peak)
        if self.follow and len(t):
            chart.plot.getViewBox().setXRange(float(t[0]), float(t[-1]) + frame.step_s, padding=0.0)
        if self.crosshair.x is None:
            chart.show_readout(None)
        if not self._stage:
            self._stage_timer.stop()
            if self.crosshair.x is not None:
                self.crosshair.refresh()
        cost = time.perf_counter() - started
        self.step_times.append(cost)
        self._frame_cost += cost
        if not self._stage:
            self.draw_times.append(self._frame_cost)

    @staticmethod
    def series_of(frame: TrafficFrame) -> dict[str, dict[str, F64]]:
        """Every chart's series, by chart key and series key, as drawn (rates in the frame's unit)."""
        return frame.chart_series()

    def _show_all(self, t: F64, step_s: int) -> None:
        self._set_x(float(t[0]), float(t[-1]) + step_s)

    def _set_x(self, x0: float, x1: float) -> None:
        for chart in self.charts.values():
            chart.plot.getViewBox().setXRange(x0, x1, padding=0.0)

    def _on_manual_zoom(self, source: TimeChart | None = None) -> None:
        """A drag-zoom on one chart: every chart shows the same time, and stops following live."""
        self.follow = False
        if source is not None:
            (x0, x1), _ = source.plot.getViewBox().viewRange()
            self._set_x(float(x0), float(x1))
        if self.frame is not None:
            self._show_context(self.frame.state, self.frame)

    def follow_live(self) -> None:
        """Double-click: back to the whole range, following new data."""
        self.follow = True
        if self.frame is not None and len(self.frame.t):
            self._show_all(self.frame.t, self.frame.step_s)
            self._show_context(self.frame.state, self.frame)

    def _time_text(self, t: float) -> str:
        step = self.frame.step_s if self.frame is not None else 1
        return local_time_text(t, step)

    def _show_context(self, state: FilterState, frame: TrafficFrame | None) -> None:
        if state.live:
            what = f"Live · last {state.seconds // 60} min at 1-second steps"
        else:
            step = frame.step_s if frame is not None else 60
            source = (
                "the store's events (rollups have no prompt)"
                if state.prompt is not None
                else "the store's rollups"
            )
            what = f"{state.range.label} · {_step_words(step)} steps from {source}"
        parts = [what, state.describe()]
        if state.live and state.paused:
            parts.append("paused — Space resumes")
        if not self.follow:
            parts.append("zoomed — double-click to return")
        self.context.setText(" · ".join(parts))

    # -- navigation -------------------------------------------------------------------------
    def focus_chart(self, key: str) -> None:
        """Bring one chart into view (an Overview tile was clicked)."""
        chart = self.charts[TILE_CHART.get(key, key)]
        rect = chart.header.mapRectToScene(chart.header.boundingRect())
        self.scroll_area.ensureVisible(0, int(rect.top()), 0, 0)
        self.scroll_area.ensureVisible(
            0, int(chart.plot.mapRectToScene(chart.plot.boundingRect()).bottom()), 0, 0
        )
        self.focused_chart = chart.key

    # -- crosshair, for tests and the readout ------------------------------------------------
    def crosshair_values(self, t: float) -> dict[str, dict[str, float]]:
        """Move the crosshair to time ``t`` and return the values every chart reads out there."""
        index = self.crosshair.move_to(t)
        if index is None:
            return {}
        return {key: chart.value_at(index) for key, chart in self.charts.items()}

    # -- export -----------------------------------------------------------------------------
    def visible_range(self) -> tuple[float, float]:
        (x0, x1), _ = self.charts[CHART_KEYS[0]].plot.getViewBox().viewRange()
        return float(x0), float(x1)

    def export_csv(self, path: str | Path) -> int:
        """The series in view, one row per bucket, UTC timestamps; returns the number of rows."""
        frame = self.frame
        path = Path(path)
        columns: list[tuple[str, F64]] = []
        rows = 0
        if frame is not None:
            data = self.series_of(frame)
            for key, chart in self.charts.items():
                for spec in chart.specs:
                    columns.append((_column_name(chart, spec, frame), data[key][spec.key]))
        with path.open("w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["ts_utc", "bucket_s", *[name for name, _ in columns]])
            if frame is not None:
                x0, x1 = self.visible_range()
                for i, t in enumerate(frame.t.tolist()):
                    if t + frame.step_s <= x0 or t >= x1:
                        continue
                    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
                    w.writerow([stamp, frame.step_s, *[_cell(v[i]) for _, v in columns]])
                    rows += 1
        return rows

    def export_png(self, path: str | Path) -> bool:
        return bool(self.graphics.grab().save(str(path)))

    def export_visible(self) -> None:
        """Ctrl+E: ask where, then write NAME.csv (the visible series) and NAME.png (the charts)."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        chosen, _ = QtWidgets.QFileDialog.getSaveFileName(
            self,
            "Export the visible traffic",
            str(Path.home() / f"traffic-{stamp}.csv"),
            "CSV and PNG (*.csv)",
        )
        if not chosen:
            return
        base = Path(chosen).with_suffix("")
        rows = self.export_csv(base.with_suffix(".csv"))
        ok = self.export_png(base.with_suffix(".png"))
        message = f"Exported {rows} rows to {base.with_suffix('.csv').name}"
        message += (
            f" and the charts to {base.with_suffix('.png').name}" if ok else " (the PNG could not be written)"
        )
        self.exported.emit(message)


def _column_name(chart: TimeChart, spec: SeriesSpec, frame: TrafficFrame) -> str:
    u = frame.rate_unit
    units = {
        "requests": f"per_{u}",
        "latency": "ms",
        "ttft": "ms",
        "failures": f"per_{u}",
        "cost": "usd_per_min",
        "spend": "usd",
        "tokens": f"per_{u}",
        "cache": f"per_{u}",
    }
    unit = "ratio" if spec.key == "hit_rate" else units[chart.key]
    return f"{chart.key}_{spec.key}_{unit}"


def _cell(v: float) -> str:
    return "" if not math.isfinite(v) else repr(float(v))


def _step_words(step_s: int) -> str:
    if step_s < 3600:
        return f"{step_s // 60}-minute"
    if step_s < 86400:
        return f"{step_s // 3600}-hour"
    return f"{step_s // 86400}-day"
