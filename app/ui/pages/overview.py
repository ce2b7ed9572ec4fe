"""The Overview page: one tile per vital sign, fed by live-metrics snapshots.

Each tile shows the value now (the last 5 minutes; cost: today), its change
against the previous period of the same length (cost: yesterday to the same
time), and a sparkline of the live window.  Clicking a tile opens the
matching chart on the Traffic page.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core import format as fmt
from app.ui.livefeed import SPARK_BUCKET_S
from app.ui.pages import page_spec
from app.ui.pages.placeholder import EmptyState, PageHeader
from app.ui.qt import Qt, QtCore, QtGui, QtWidgets, Signal
from app.ui.theme import current_colors


@dataclass(frozen=True)
class TileSpec:
    key: str
    title: str
    higher_is_good: bool | None


TILES: tuple[TileSpec, ...] = (
    TileSpec("requests_per_s", "Requests /s", None),
    TileSpec("p95_latency_ms", "p95 latency · last min", False),
    TileSpec("error_rate", "Error rate", False),
    TileSpec("cost_today_usd", "Cost today", False),
    TileSpec("cache_hit_rate", "Cache hit rate", True),
    TileSpec("open_breakers", "Open breakers", False),
)


def _format_value(key: str, value: Any, snapshot: Mapping[str, Any]) -> str:
    if value is None:
        return "—"
    if key == "requests_per_s":
        return f"{value:,.1f} /s"
    if key == "p95_latency_ms":
        return fmt.fmt_latency_ms(value)
    if key in ("error_rate", "cache_hit_rate"):
        return f"{value * 100:.1f}%"
    if key == "cost_today_usd":
        budget = snapshot.get("budget_today_usd")
        text = fmt.fmt_usd(value)
        return f"{text} of {fmt.fmt_usd(budget)}" if budget else text
    if key == "open_breakers":
        return str(int(value))
    return str(value)


class Sparkline(QtWidgets.QWidget):
    """A tiny line of the live window: painted directly, no axes (the tile's value is the number to read)."""

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.values = np.zeros(0)
        self.setMinimumHeight(28)
        self.setSizePolicy(QtWidgets.QSizePolicy.Policy.Expanding, QtWidgets.QSizePolicy.Policy.Fixed)
        self.setAttribute(Qt.WidgetAttribute.WA_TransparentForMouseEvents)

    def set_values(self, values: Any) -> None:
        self.values = np.asarray(values, dtype=np.float64)
        self.update()

    def paintEvent(self, event: Any) -> None:
        v = self.values
        finite = np.isfinite(v)
        colors = current_colors()
        if int(finite.sum()) < 2:
            # Right after start-up the window holds less than two points: say the line is coming,
            # rather than leave a blank that reads as "broken".
            if len(v):
                painter = QtGui.QPainter(self)
                painter.setPen(QtGui.QColor(colors.muted))
                font = painter.font()
                font.setPointSizeF(font.pointSizeF() * 0.85)
                painter.setFont(font)
                painter.drawText(
                    self.rect().adjusted(1, 0, 0, 0),
                    int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                    f"trend builds over the first {2 * SPARK_BUCKET_S} s",
                )
                painter.end()
            return
        lo = 0.0
        hi = float(np.nanmax(v[finite]))
        if hi <= lo:
            hi = lo + 1.0
        w, h = self.width() - 2, self.height() - 4
        painter = QtGui.QPainter(self)
        painter.setRenderHint(QtGui.QPainter.RenderHint.Antialiasing)
        painter.setPen(QtGui.QPen(QtGui.QColor(colors.accent), 1.5))
        path = QtGui.QPainterPath()
        pen_down = False
        for i, y in enumerate(v.tolist()):
            if not np.isfinite(y):
                pen_down = False
                continue
            point = QtCore.QPointF(1 + w * i / (len(v) - 1), 2 + h * (1 - (y - lo) / (hi - lo)))
            if pen_down:
                path.lineTo(point)
            else:
                path.moveTo(point)
                pen_down = True
        painter.drawPath(path)
        painter.end()


class Tile(QtWidgets.QFrame):
    clicked = Signal(str)

    def __init__(self, spec: TileSpec, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName="tile")
        self.spec = spec
        self.setCursor(Qt.CursorShape.PointingHandCursor)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.setMinimumSize(180, 96)
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(14, 10, 14, 10)
        self.title = QtWidgets.QLabel(spec.title, objectName="tileTitle")
        self.value = QtWidgets.QLabel("—", objectName="tileValue")
        self.change = QtWidgets.QLabel("", objectName="muted")
        self.spark = Sparkline()
        self.setToolTip(f"{spec.title}: open the chart on the Traffic page")
        layout.addWidget(self.title)
        layout.addWidget(self.value)
        layout.addWidget(self.change)
        layout.addWidget(self.spark)
        layout.addStretch(1)

    def mouseReleaseEvent(self, event: Any) -> None:
        self.clicked.emit(self.spec.key)
        super().mouseReleaseEvent(event)

    def keyPressEvent(self, event: Any) -> None:
        if event.key() in (Qt.Key.Key_Return, Qt.Key.Key_Enter, Qt.Key.Key_Space):
            self.clicked.emit(self.spec.key)
            return
        super().keyPressEvent(event)


class OverviewPage(QtWidgets.QWidget):
    """Ready to receive a live-metrics snapshot: ``apply_snapshot({"requests_per_s": 12.3, ...})``."""

    tile_clicked = Signal(str)

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        spec = page_spec("overview")
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(20, 16, 20, 16)
        layout.addWidget(PageHeader(spec.title, "The vital signs of every LLM dependency, live."))
        grid = QtWidgets.QGridLayout()
        grid.setSpacing(12)
        self.tiles: dict[str, Tile] = {}
        for i, tile_spec in enumerate(TILES):
            tile = Tile(tile_spec)
            tile.clicked.connect(self.tile_clicked)
            self.tiles[tile_spec.key] = tile
            grid.addWidget(tile, i // 3, i % 3)
        layout.addLayout(grid)
        self.empty = EmptyState(spec.next_step)
        layout.addWidget(self.empty)
        layout.addStretch(1)

    def apply_snapshot(self, snapshot: Any) -> None:
        """Show one snapshot: current values and, under ``previous``, the previous period's.

        ``snapshot`` is a mapping, or an :class:`~app.ui.livefeed.OverviewSnapshot` (which also
        carries a sparkline per tile).
        """
        sparks: Mapping[str, Any] = getattr(snapshot, "sparks", {})
        if not isinstance(snapshot, Mapping):
            snapshot = snapshot.as_mapping()
        for key, tile in self.tiles.items():
            if key in sparks:
                tile.spark.set_values(sparks[key])
        previous = snapshot.get("previous") or {}
        zone = snapshot.get("day_zone")
        cost = self.tiles["cost_today_usd"]
        cost.title.setText(f"{cost.spec.title} ({zone})" if zone else cost.spec.title)
        has_data = False
        for key, tile in self.tiles.items():
            value = snapshot.get(key)
            has_data = has_data or value is not None
            tile.value.setText(_format_value(key, value, snapshot))
            prev = previous.get(key)
            if value is not None and prev is not None:
                text, good = fmt.fmt_change(float(value), float(prev), tile.spec.higher_is_good)
                if text == "new":  # nothing to compare with: say so rather than "new vs ..."
                    tile.change.setText(
                        {
                            "cost_today_usd": "none yesterday by now",
                            "p95_latency_ms": "none the minute before",
                        }.get(key, "none in the previous 5 min")
                    )
                    tile.change.setStyleSheet(f"color: {current_colors().muted};")
                    continue
                period = {"cost_today_usd": "yesterday by now", "p95_latency_ms": "previous min"}.get(
                    key, "previous 5 min"
                )
                tile.change.setText(f"{text} vs {period}")
                colors = current_colors()
                tint = colors.muted if good is None else (colors.ok if good else colors.bad)
                tile.change.setStyleSheet(f"color: {tint};")
            else:
                tile.change.setText("")
        self.empty.setVisible(not has_data)
