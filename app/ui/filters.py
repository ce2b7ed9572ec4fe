"""The shared filter bar (ui.md "The window"): provider, model, route, feature, prompt, user, range, LIVE/pause.

Every page that shows traffic reads one :class:`FilterState`; the bar keeps it
across pages and restarts (QSettings).  Filters combine (AND).  Live ranges
read the in-memory live aggregator (1-second steps, 15 minutes kept); longer
ranges read the store's rollups (minute steps and coarser), except with a
prompt chosen: the rollups have no prompt, so that history is read from the
events table, for ranges up to 7 days.

A prompt is ``name@version`` (one version) or ``name`` (every version), the
way requests name it (docs/prompts.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from app.core import paths
from app.sources.live import DIMENSIONS, LiveFilter, split_prompt
from app.ui.qt import QSettings, Qt, QtWidgets, Signal
from app.ui.theme import current_colors

if TYPE_CHECKING:
    from storage.queries.series import SeriesFilter


@dataclass(frozen=True)
class TimeRange:
    key: str
    label: str
    seconds: int
    live: bool


#: The ranges the bar offers.  Live keeps 15 minutes at 1 s; "Last 1 hour" and longer come from rollups.
RANGES: tuple[TimeRange, ...] = (
    TimeRange("live_5m", "Live · 5 min", 300, True),
    TimeRange("live_15m", "Live · 15 min", 900, True),
    TimeRange("1h", "Last 1 hour", 3600, False),
    TimeRange("6h", "Last 6 hours", 6 * 3600, False),
    TimeRange("24h", "Last 24 hours", 86400, False),
    TimeRange("7d", "Last 7 days", 7 * 86400, False),
    TimeRange("30d", "Last 30 days", 30 * 86400, False),
    TimeRange("90d", "Last 90 days", 90 * 86400, False),
)
DEFAULT_RANGE = "live_15m"

_DIM_TITLES = {
    "provider": "All providers",
    "model": "All models",
    "route": "All routes",
    "feature": "All features",
    "prompt": "All prompts",
    "user": "All users",
}


def time_range(key: str) -> TimeRange:
    for r in RANGES:
        if r.key == key:
            return r
    raise KeyError(f"no time range {key!r}; one of {', '.join(r.key for r in RANGES)}")


@dataclass(frozen=True)
class FilterState:
    """What the operator is looking at: ``None`` for a dimension means all of it."""

    provider: str | None = None
    model: str | None = None
    route: str | None = None
    feature: str | None = None
    #: ``name@version`` (one version) or ``name`` (every version of the prompt).
    prompt: str | None = None
    user: str | None = None
    range_key: str = DEFAULT_RANGE
    paused: bool = False

    @property
    def range(self) -> TimeRange:
        return time_range(self.range_key)

    @property
    def live(self) -> bool:
        return self.range.live

    @property
    def seconds(self) -> int:
        return self.range.seconds

    def dims(self) -> dict[str, str | None]:
        return {d: getattr(self, d) for d in DIMENSIONS}

    def live_filter(self) -> LiveFilter:
        return LiveFilter(**self.dims())

    def series_filter(self) -> SeriesFilter:
        """The rollups' filter: every dimension but the prompt (see :meth:`prompt_parts`)."""
        from storage.queries.series import SeriesFilter  # SQLAlchemy loads off the start-up path

        return SeriesFilter(**{d: v for d, v in self.dims().items() if d != "prompt"})

    def prompt_parts(self) -> tuple[str, int | None] | None:
        """The chosen prompt as ``(name, version)`` (version ``None``: every version), or ``None``."""
        return None if self.prompt is None else split_prompt(self.prompt)

    def query_key(self) -> tuple[object, ...]:
        """Changes when the question changes (not on pause): charts reset their y range on it."""
        return (*self.dims().values(), self.range_key)

    def with_(self, **changes: object) -> FilterState:
        return replace(self, **changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        """``provider=openai · route=search`` or ``all traffic``."""
        chosen = [f"{d}={v}" for d, v in self.dims().items() if v is not None]
        return " · ".join(chosen) if chosen else "all traffic"


def default_settings() -> QSettings:
    return QSettings(str(paths.config_dir() / "ui.ini"), QSettings.Format.IniFormat)


class DimensionCombo(QtWidgets.QComboBox):
    """A narrow combo that reads ``provider`` when it shows all, ``route: search`` when one is chosen.

    The list that drops down is wider, with ``All providers`` first; a long
    value is elided on the closed combo and shown whole in its tooltip.
    """

    def __init__(self, dim: str, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent, objectName=f"filter-{dim}")
        self.dim = dim
        self.setSizeAdjustPolicy(QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        # A prompt reads ``name@version``: a little more room before it elides; everything fits 960 px.
        self.setMinimumContentsLength(12 if dim == "prompt" else 8)
        self.view().setMinimumWidth(220)
        # Below its preferred width a combo may give way (elided; the tooltip has it all), so the range
        # and LIVE controls never overlap in a narrow window.
        self.setMinimumWidth(64)
        self.setAccessibleName(f"Filter by {dim}")
        self.currentIndexChanged.connect(self._on_index)
        self._on_index()

    def shown_text(self) -> str:
        value = self.currentData()
        if value is None:
            return self.dim
        return f"{self.dim}: {value}" + (" (all versions)" if _all_versions(self.dim, value) else "")

    def _on_index(self, *_args: object) -> None:
        value = self.currentData()
        if value is None:
            tip = f"Showing every {self.dim} (Ctrl+F focuses the filters)"
        elif _all_versions(self.dim, value):
            tip = f"Showing every version of prompt {value}"
        else:
            tip = f"Showing only {self.dim} {value}"
        if self.dim == "prompt":
            tip += (
                "\nPrompts are name@version, or a name for every version. History with a prompt is read "
                "from the events table (the rollups have no prompt), for ranges up to 7 days."
            )
        self.setToolTip(tip)

    def paintEvent(self, event: object) -> None:
        painter = QtWidgets.QStylePainter(self)
        opt = QtWidgets.QStyleOptionComboBox()
        self.initStyleOption(opt)
        text = self.shown_text()
        rect = self.style().subControlRect(
            QtWidgets.QStyle.ComplexControl.CC_ComboBox,
            opt,
            QtWidgets.QStyle.SubControl.SC_ComboBoxEditField,
            self,
        )
        opt.currentText = self.fontMetrics().elidedText(text, Qt.TextElideMode.ElideRight, rect.width())
        painter.drawComplexControl(QtWidgets.QStyle.ComplexControl.CC_ComboBox, opt)
        painter.drawControl(QtWidgets.QStyle.ControlElement.CE_ComboBoxLabel, opt)


class FilterBar(QtWidgets.QFrame):
    """provider ▾ model ▾ route ▾ feature ▾ prompt ▾ user ▾ | range ▾ | ● LIVE / ❚❚."""

    changed = Signal(object)  # FilterState

    def __init__(
        self,
        parent: QtWidgets.QWidget | None = None,
        *,
        settings: Callable[[], QSettings] = default_settings,
    ) -> None:
        super().__init__(parent, objectName="filterBar")
        self._settings = settings
        self._state = FilterState()
        self._updating = False
        layout = QtWidgets.QHBoxLayout(self)
        layout.setContentsMargins(12, 6, 12, 6)
        layout.setSpacing(6)
        self.combos: dict[str, QtWidgets.QComboBox] = {}
        for dim in DIMENSIONS:
            combo = DimensionCombo(dim)
            combo.addItem(_DIM_TITLES[dim], None)
            combo.currentIndexChanged.connect(self._on_combo)
            self.combos[dim] = combo
            layout.addWidget(combo)
        self.clear_button = QtWidgets.QToolButton(text="Clear")
        self.clear_button.setVisible(False)
        self.clear_button.setToolTip("Show all traffic again")
        self.clear_button.clicked.connect(self.clear_filters)
        layout.addWidget(self.clear_button)
        layout.addStretch(1)
        sep = QtWidgets.QFrame()
        sep.setFrameShape(QtWidgets.QFrame.Shape.VLine)
        layout.addWidget(sep)
        self.range_combo = QtWidgets.QComboBox(objectName="filter-range")
        self.range_combo.setAccessibleName("Time range")
        self.range_combo.setSizeAdjustPolicy(
            QtWidgets.QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon
        )
        widest = max(self.range_combo.fontMetrics().horizontalAdvance(r.label) for r in RANGES)
        self.range_combo.setMinimumWidth(widest + 36)  # the text, the arrow and the frame
        self.range_combo.setToolTip(
            "Live: the last 5 or 15 minutes at 1-second steps (15 minutes are kept in memory).\n"
            "Longer ranges come from the store's rollups at 1-minute steps or coarser."
        )
        for r in RANGES:
            self.range_combo.addItem(r.label, r.key)
        self.range_combo.setCurrentIndex(self.range_combo.findData(DEFAULT_RANGE))
        self.range_combo.currentIndexChanged.connect(self._on_combo)
        layout.addWidget(self.range_combo)
        self.live_button = QtWidgets.QPushButton(objectName="liveButton")
        self.live_button.setCheckable(True)
        self.live_button.setAccessibleName("Pause or resume live charts")
        self.live_button.setToolTip("Pause or resume the live charts (Space)")
        self.live_button.setMinimumWidth(84)
        self.live_button.clicked.connect(self.toggle_pause)
        layout.addWidget(self.live_button)
        self._sync_live_button()

    # -- state ------------------------------------------------------------------------------
    @property
    def state(self) -> FilterState:
        return self._state

    def set_state(self, state: FilterState) -> None:
        """Show ``state`` (values not offered yet are added to their combo) and announce it."""
        self._updating = True
        try:
            for dim, combo in self.combos.items():
                _select(combo, getattr(state, dim))
            index = self.range_combo.findData(state.range_key)
            self.range_combo.setCurrentIndex(max(index, 0))
        finally:
            self._updating = False
        self._apply(state)

    def set_dimension_values(self, values: Mapping[str, Sequence[str]]) -> None:
        """Offer these values (seen in live traffic or the store); the current choice always stays."""
        self._updating = True
        try:
            for dim, given in values.items():
                combo = self.combos.get(dim)
                if combo is None:
                    continue
                # A prompt's name is offered too: it stands for every version of it.
                names = prompt_choices(given) if dim == "prompt" else given
                current = combo.currentData()
                offered = [combo.itemData(i) for i in range(1, combo.count())]
                wanted = sorted(set(names) | ({current} if current is not None else set()))
                if offered == wanted:
                    continue
                combo.blockSignals(True)
                while combo.count() > 1:
                    combo.removeItem(1)
                for name in wanted:
                    combo.addItem(item_text(dim, name), name)
                combo.setCurrentIndex(max(combo.findData(current), 0) if current is not None else 0)
                combo.blockSignals(False)
        finally:
            self._updating = False

    def clear_filters(self) -> None:
        self.set_state(FilterState(range_key=self._state.range_key, paused=self._state.paused))

    def toggle_pause(self) -> None:
        if not self._state.live:
            self._sync_live_button()
            return
        self._apply(self._state.with_(paused=not self._state.paused))

    def focus_filters(self) -> None:
        self.combos[DIMENSIONS[0]].setFocus(Qt.FocusReason.ShortcutFocusReason)

    def _on_combo(self) -> None:
        if self._updating:
            return
        dims = {dim: combo.currentData() for dim, combo in self.combos.items()}
        key = self.range_combo.currentData() or DEFAULT_RANGE
        state = FilterState(**dims, range_key=key, paused=self._state.paused and time_range(key).live)
        self._apply(state)

    def _apply(self, state: FilterState) -> None:
        if not state.live and state.paused:
            state = state.with_(paused=False)
        changed = state != self._state
        self._state = state
        self.clear_button.setVisible(any(v is not None for v in state.dims().values()))
        self._sync_live_button()
        if changed:
            self.save()
            self.changed.emit(state)

    def _sync_live_button(self) -> None:
        colors = current_colors()
        state = self._state
        if not state.live:
            self.live_button.setText("History")
            self.live_button.setChecked(False)
            self.live_button.setEnabled(False)
            self.live_button.setStyleSheet(f"color: {colors.muted};")
            return
        self.live_button.setEnabled(True)
        self.live_button.setChecked(state.paused)
        if state.paused:
            self.live_button.setText("\u275a\u275a Paused")
            self.live_button.setStyleSheet(f"color: {colors.warn}; font-weight: 600;")
        else:
            self.live_button.setText("\u25cf LIVE")
            self.live_button.setStyleSheet(f"color: {colors.ok}; font-weight: 600;")

    # -- persistence ------------------------------------------------------------------------
    def save(self) -> None:
        s = self._settings()
        for dim in DIMENSIONS:
            s.setValue(f"filters/{dim}", getattr(self._state, dim) or "")
        s.setValue("filters/range", self._state.range_key)
        s.sync()

    def restore(self) -> None:
        """The last filters and range; live always resumes unpaused (a paused chart on start-up lies)."""
        s = self._settings()
        dims: dict[str, str | None] = {}
        for dim in DIMENSIONS:
            value = s.value(f"filters/{dim}", "")
            dims[dim] = value if isinstance(value, str) and value else None
        key = s.value("filters/range", DEFAULT_RANGE)
        if not isinstance(key, str) or key not in {r.key for r in RANGES}:
            key = DEFAULT_RANGE
        self.set_state(FilterState(**dims, range_key=key))


def _all_versions(dim: str, value: str) -> bool:
    return dim == "prompt" and split_prompt(value)[1] is None


def item_text(dim: str, value: str) -> str:
    """How a value reads in its combo's list: a prompt's name says it stands for every version."""
    return f"{value} · all versions" if _all_versions(dim, value) else value


def prompt_choices(refs: Sequence[str]) -> list[str]:
    """Prompt values for the combo: every ``name@version`` given, and each ``name`` (all its versions)."""
    out = set(refs)
    out.update(split_prompt(r)[0] for r in refs)
    out.discard("")
    return sorted(out)


def _select(combo: QtWidgets.QComboBox, value: str | None) -> None:
    if value is None:
        combo.setCurrentIndex(0)
        return
    index = combo.findData(value)
    if index < 0:
        combo.addItem(item_text(getattr(combo, "dim", ""), value), value)
        index = combo.count() - 1
    combo.setCurrentIndex(index)
