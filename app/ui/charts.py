"""Time charts on pyqtgraph, the way style.md item 5 says live plots are fed.

- One ``pg.PlotItem`` per chart, all on one shared, x-linked time axis in the
  operator's local time; the y axis says its unit and formats ticks the way
  ui.md "Numbers" reads (``850 ms``, ``$0.0042``, ``12.4k``).
- Data arrive as whole numpy arrays and go in with ``setData`` (never
  ``appendData``: a no-op in pyqtgraph), float64 x, pen width 1,
  ``setClipToView(True)`` and peak downsampling.
- Live charts never jump: autorange is off and the y range only grows, with
  headroom, to a round number (:class:`GrowingRange`).
- A crosshair (:class:`Crosshair`) moves one vertical line across every
  chart and prints the exact values of every series at that second in each
  chart's header.

pyqtgraph is imported here and nowhere else; it picks the binding app/ui/qt.py
already imported.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from app.ui.qt import QObject, Qt, QtCore, QtGui, QtWidgets, Signal
from app.ui.theme import Colors, current_colors

# pyqtgraph chooses its binding by what is already imported, or by this variable.
os.environ.setdefault("PYQTGRAPH_QT_LIB", "PySide6")
import pyqtgraph as pg

F64 = npt.NDArray[np.float64]
Formatter = Callable[[float], str]

#: A line goes on across at most this many steps without a value; a longer gap shows as a gap.
MAX_GAP_STEPS = 10

__all__ = [
    "ChartHeader",
    "Crosshair",
    "GrowingRange",
    "LocalTimeAxis",
    "SeriesSpec",
    "TimeChart",
    "ValueAxis",
    "local_utc_offset_label",
    "nice_ceiling",
    "pg",
]


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value`` (a y-axis top that reads well)."""
    if not math.isfinite(value) or value <= 0:
        return 1.0
    exp = math.floor(math.log10(value))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        top = m * 10.0**exp
        if top >= value * (1 - 1e-12):
            return top
    return 10.0 ** (exp + 1)


class GrowingRange:
    """A y-axis top that only grows, to a round number with headroom: live charts do not flicker.

    ``reset()`` when the question changes (another filter or range), so a
    spike from a previous selection does not flatten the new one.
    """

    def __init__(self, minimum: float = 1.0, headroom: float = 1.25) -> None:
        self.minimum = minimum
        self.headroom = headroom
        self.top = minimum

    def fit(self, peak: float) -> float:
        if math.isfinite(peak) and peak > self.top:
            self.top = max(self.minimum, nice_ceiling(peak * self.headroom))
        return self.top

    def reset(self) -> None:
        self.top = self.minimum


def local_utc_offset_label(now: float | None = None) -> str:
    """``UTC+01:00`` for the operator's time zone now (axes are in local time; exports in UTC)."""
    t = time.time() if now is None else now
    offset = time.localtime(t).tm_gmtoff or 0
    sign = "+" if offset >= 0 else "-"
    offset = abs(offset)
    return f"UTC{sign}{offset // 3600:02d}:{offset % 3600 // 60:02d}"


class LocalTimeAxis(pg.DateAxisItem):  # type: ignore[misc]
    """Ticks in the operator's local time (pyqtgraph's DateAxisItem uses the local zone by default)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(orientation="bottom", **kwargs)


class ValueAxis(pg.AxisItem):  # type: ignore[misc]
    """A left axis whose ticks read like the rest of the app (our formatters, no SI prefixes)."""

    def __init__(self, formatter: Formatter, **kwargs: object) -> None:
        super().__init__(orientation="left", **kwargs)
        self.formatter = formatter
        self.enableAutoSIPrefix(False)
        self.setWidth(72)  # room for "$400.00" beside the unit label

    def tickStrings(self, values: Sequence[float], scale: float, spacing: float) -> list[str]:
        return [self.formatter(v * scale) if v >= 0 else "" for v in values]


class ChartHeader(pg.LabelItem):  # type: ignore[misc]
    """A chart's title and readout whose text does not set the column's width.

    pyqtgraph's label makes its text width its minimum width, so a long readout in one
    column (spend and budget) squeezed the other column's plots, and the two columns' time
    axes no longer lined up.  The page gives both columns the same width instead.
    """

    def updateMin(self) -> None:
        super().updateMin()
        self.setMinimumWidth(0)
        height = self._sizeHint[QtCore.Qt.SizeHint.MinimumSize][1]
        self._sizeHint[QtCore.Qt.SizeHint.MinimumSize] = (0, height)
        self._sizeHint[QtCore.Qt.SizeHint.PreferredSize] = (0, height)
        self.updateGeometry()


@dataclass
class SeriesSpec:
    """One line of a chart: ``key`` names the data, ``label`` the legend and readout."""

    key: str
    label: str
    color: str
    width: float = 1.0
    dash: bool = False
    #: Filled to the series below (stacked charts); the readout shows its own value, not the stack.
    stacked: bool = False
    formatter: Formatter | None = None


@dataclass
class _Annotation:
    item: pg.InfiniteLine
    value: float


@dataclass
class TimeChart:
    """One chart: a plot with a header (title, unit, readout), its series and annotations."""

    key: str
    title: str
    unit_label: str
    formatter: Formatter
    specs: list[SeriesSpec]
    minimum_top: float = 1.0
    plot: pg.PlotItem = field(init=False)
    header: pg.LabelItem = field(init=False)
    curves: dict[str, pg.PlotDataItem] = field(init=False, default_factory=dict)
    yrange: GrowingRange = field(init=False)
    t: F64 = field(init=False, default_factory=lambda: np.zeros(0))
    values: dict[str, F64] = field(init=False, default_factory=dict)
    annotations: list[_Annotation] = field(init=False, default_factory=list)
    markers: list[pg.InfiniteLine] = field(init=False, default_factory=list)
    _marker_key: tuple[tuple[float, str], ...] = field(init=False, default=())
    _cleared: set[str] = field(init=False, default_factory=set)  # series whose curve is empty now

    def __post_init__(self) -> None:
        colors = current_colors()
        self.yrange = GrowingRange(self.minimum_top)
        self.header = ChartHeader(justify="left", size="9pt")
        self.plot = pg.PlotItem(
            axisItems={"bottom": LocalTimeAxis(), "left": ValueAxis(self.formatter)},
        )
        self.plot.setObjectName(f"chart-{self.key}")
        self.plot.setMenuEnabled(False)
        self.plot.hideButtons()
        # Horizontal grid only: it is drawn by the left axis, which is cached (it changes only when
        # the y range grows); vertical lines would be redrawn every second as time moves.
        self.plot.showGrid(x=False, y=True, alpha=0.18)
        self.plot.getAxis("left").setCacheMode(QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.plot.setLabel("left", self.unit_label)
        vb = self.plot.getViewBox()
        vb.setMouseEnabled(x=True, y=False)  # zoom by drag on time only; y stays fixed
        vb.setMouseMode(pg.ViewBox.RectMode)
        vb.disableAutoRange()
        vb.setDefaultPadding(0.0)
        self.plot.setClipToView(True)
        self.plot.setDownsampling(auto=True, mode="peak")
        # Stacks: draw the tallest layer first so every lower layer is painted over it.
        for z, spec in enumerate(self.specs):
            pen = pg.mkPen(spec.color, width=spec.width)
            if spec.dash:
                pen.setStyle(Qt.PenStyle.DashLine)
            # Gaps (NaN: no latency in that second) break a line; a stacked layer is always finite
            # (NaN counts are added as 0), and telling pyqtgraph so lets it build the fill in one
            # piece instead of segment by segment in Python (the costliest paint on the page).
            curve = pg.PlotDataItem(
                pen=pen,
                name=spec.label,
                connect="all" if spec.stacked else "finite",
                skipFiniteCheck=spec.stacked,
            )
            if spec.stacked:
                fill = QtGui.QColor(spec.color)
                fill.setAlpha(200)
                curve.setFillLevel(0.0)
                curve.setBrush(pg.mkBrush(fill))
                curve.setZValue(-z)
            self.plot.addItem(curve)
            self.curves[spec.key] = curve
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(colors.muted, width=1))
        self.vline.setVisible(False)
        self.vline.setZValue(100)
        self.plot.addItem(self.vline, ignoreBounds=True)
        self.apply_colors(colors)
        self.show_readout(None)

    # -- data -------------------------------------------------------------------------------
    def set_data(self, t: F64, values: dict[str, F64], *, extra_peak: float = 0.0) -> None:
        """Show ``values`` (one array per series key, same length as ``t``)."""
        self.t = t
        self.values = values
        stack = np.zeros(len(t), dtype=np.float64)
        peak = extra_peak
        for spec in self.specs:
            y = values.get(spec.key)
            curve = self.curves[spec.key]
            if y is None or len(y) != len(t) or (spec.stacked and not np.nansum(y)):
                # No data, or a stacked layer that is zero throughout: the layer below already
                # draws that edge (and a zero layer would paint a stray line along the axis).
                if spec.key not in self._cleared:
                    curve.setData([], [])
                    self._cleared.add(spec.key)
                continue
            self._cleared.discard(spec.key)
            if spec.stacked:
                stack = stack + np.nan_to_num(y)
                y = stack
            if len(y):
                finite = y[np.isfinite(y)]
                if finite.size:
                    peak = max(peak, float(finite.max()))
            if spec.stacked or bool(np.isfinite(y).all()):
                curve.setData(t, y, connect="all" if spec.stacked else "finite")
            else:
                # Seconds without a value (no request ended then: no latency) would leave sparse
                # traffic as invisible dots: draw the known points, joined across short gaps only.
                known = np.isfinite(y)
                xs, ys = t[known], y[known]
                step = float(t[1] - t[0]) if len(t) > 1 else 1.0
                joined = np.zeros(len(xs), dtype=bool)
                joined[:-1] = np.diff(xs) <= MAX_GAP_STEPS * step
                curve.setData(xs, ys, connect=joined)
        top = self.yrange.fit(peak)
        self.plot.getViewBox().setYRange(0.0, top, padding=0.0)

    def reset_range(self) -> None:
        self.yrange.reset()

    def value_at(self, index: int) -> dict[str, float]:
        """Exact values of every series at sample ``index`` (not stacked), by series key."""
        out: dict[str, float] = {}
        for spec in self.specs:
            y = self.values.get(spec.key)
            if y is not None and 0 <= index < len(y):
                out[spec.key] = float(y[index])
        return out

    def latest_values(self) -> dict[str, float]:
        """Each series' most recent known value (a second without a latency is skipped), by key."""
        out: dict[str, float] = {}
        for spec in self.specs:
            y = self.values.get(spec.key)
            if y is None or not len(y):
                continue
            known = np.flatnonzero(np.isfinite(y))
            out[spec.key] = float(y[known[-1]]) if len(known) else math.nan
        return out

    def set_annotations(self, lines: Sequence[tuple[float, str, str]]) -> None:
        """Horizontal lines (budget, SLO): ``(value, label, colour)``; the y range makes room for them."""
        for old in self.annotations:
            self.plot.removeItem(old.item)
        self.annotations = []
        # Lines close together (a budget and its warning level) must not print their labels over
        # each other: the first label sits above its line, the next below its own, further along.
        ordered = sorted(lines, key=lambda line: -line[0])
        for i, (value, label, color) in enumerate(ordered):
            pen = pg.mkPen(color, width=1, style=Qt.PenStyle.DashLine)
            anchor = (0, 1) if i % 2 == 0 else (0, 0)
            line = pg.InfiniteLine(
                pos=value,
                angle=0,
                movable=False,
                pen=pen,
                label=label,
                labelOpts={"position": 0.02 + 0.3 * (i % 3), "color": color, "anchors": [anchor, anchor]},
            )
            self.plot.addItem(line, ignoreBounds=True)
            self.annotations.append(_Annotation(line, value))

    def set_markers(self, marks: Sequence[tuple[float, str, str, str]]) -> None:
        """Vertical lines on the time axis (breaker transitions): ``(time, label, colour, tooltip)``."""
        key = tuple((x, label) for x, label, _c, _t in marks)
        if key == self._marker_key:
            return
        self._marker_key = key
        for old in self.markers:
            self.plot.removeItem(old)
        self.markers = []
        for i, (x, label, color, tip) in enumerate(marks):
            line = pg.InfiniteLine(
                pos=x,
                angle=90,
                movable=False,
                pen=pg.mkPen(color, width=1, style=Qt.PenStyle.DashLine),
                label=label,
                # Staggered heights, so transitions close in time do not print over each other.
                labelOpts={"position": 0.97 - 0.14 * (i % 3), "color": color, "anchors": [(0, 0), (0, 0)]},
            )
            line.setToolTip(tip)
            self.plot.addItem(line, ignoreBounds=True)
            self.markers.append(line)

    @property
    def annotation_peak(self) -> float:
        return max((a.value for a in self.annotations), default=0.0)

    # -- look -------------------------------------------------------------------------------
    def apply_colors(self, colors: Colors) -> None:
        for name in ("left", "bottom"):
            axis = self.plot.getAxis(name)
            axis.setPen(pg.mkPen(colors.border))
            axis.setTextPen(pg.mkPen(colors.muted))
        self.plot.getAxis("left").setLabel(self.unit_label, color=colors.muted)
        self.vline.setPen(pg.mkPen(colors.muted, width=1))

    def show_readout(self, index: int | None, time_text: str = "") -> None:
        """The header: title and, per series, a swatch, its label and its value at ``index``.

        Without an index (no crosshair), each series' latest known value.
        """
        colors = current_colors()
        values = self.value_at(index) if index is not None else self.latest_values()
        parts = [f"<span style='color:{colors.text}; font-weight:600'>{self.title}</span>"]
        if time_text:
            parts.append(f"<span style='color:{colors.muted}'>{time_text}</span>")
        for spec in self.specs:
            v = values.get(spec.key)
            if spec.stacked and (v is None or v == 0):
                continue  # a failure type that did not happen is noise in the readout
            fmt = spec.formatter or self.formatter
            text = fmt(v) if v is not None and math.isfinite(v) else "\u2014"
            parts.append(
                f"<span style='color:{spec.color}'>\u25a0</span>"
                f"<span style='color:{colors.muted}'>&nbsp;{spec.label}</span>"
                f"<span style='color:{colors.text}'>&nbsp;{text}</span>"
            )
        self.header.setText("&nbsp;&nbsp;&nbsp;".join(parts))


class Crosshair(QObject):
    """One vertical line across every chart, snapped to a sample; each chart's header shows its values.

    The charts must share one scene (one ``GraphicsLayoutWidget``) and one x axis.
    ``moved`` carries the sample index and its time (epoch seconds), or -1 and
    NaN when the pointer leaves and the headers fall back to the latest values.
    """

    moved = Signal(int, float)

    def __init__(self, scene: QtCore.QObject, charts: Sequence[TimeChart], time_text: Callable[[float], str]):
        super().__init__()
        self.charts = list(charts)
        self.time_text = time_text
        self.index: int | None = None
        self.x: float | None = None  # the time held, so live data sliding under it keeps the same second
        self._proxy = pg.SignalProxy(scene.sigMouseMoved, rateLimit=60, slot=self._on_mouse)  # type: ignore[attr-defined]

    def _on_mouse(self, event: tuple[QtCore.QPointF]) -> None:
        pos = event[0]
        for chart in self.charts:
            if chart.plot.sceneBoundingRect().contains(pos):
                x = chart.plot.getViewBox().mapSceneToView(pos).x()
                if self.move_to(float(x)) is not None:
                    QtWidgets.QToolTip.showText(QtGui.QCursor.pos(), self.tooltip_text())
                return
        QtWidgets.QToolTip.hideText()
        self.clear()

    def move_to(self, x: float) -> int | None:
        """Put the crosshair on the sample nearest to time ``x``; returns its index (``None``: no data)."""
        t = self.charts[0].t if self.charts else np.zeros(0)
        if not len(t):
            self.clear()
            return None
        i = int(np.clip(np.searchsorted(t, x), 0, len(t) - 1))
        if i > 0 and abs(t[i - 1] - x) <= abs(t[i] - x):
            i -= 1
        self.index = i
        self.x = float(t[i])
        label = self.time_text(float(t[i]))
        for chart in self.charts:
            chart.vline.setPos(float(t[i]))
            chart.vline.setVisible(True)
            chart.show_readout(i, label)
        self.moved.emit(i, float(t[i]))
        return i

    def tooltip_text(self) -> str:
        """Every chart's exact values at the crosshair, one line per chart (the hover tooltip)."""
        if self.index is None or not self.charts:
            return ""
        t = self.charts[0].t
        lines = [f"<b>{self.time_text(float(t[self.index]))}</b>"]
        for chart in self.charts:
            values = chart.value_at(self.index)
            parts = []
            for spec in chart.specs:
                v = values.get(spec.key)
                if v is None or (spec.stacked and v == 0):
                    continue
                fmt = spec.formatter or chart.formatter
                parts.append(f"{spec.label} {fmt(v) if math.isfinite(v) else chr(0x2014)}")
            lines.append(f"{chart.title}: " + (", ".join(parts) if parts else "none"))
        return "<br>".join(lines)

    def clear(self) -> None:
        if self.index is None:
            return
        self.index = None
        self.x = None
        for chart in self.charts:
            chart.vline.setVisible(False)
            chart.show_readout(None)
        self.moved.emit(-1, math.nan)

    def refresh(self) -> None:
        """After new data: keep the line where it was, with fresh values."""
        if self.x is None:
            for chart in self.charts:
                chart.show_readout(None)
            return
        t = self.charts[0].t
        if not len(t) or self.x < t[0] or self.x > t[-1]:
            self.clear()
            return
        self.move_to(self.x)
