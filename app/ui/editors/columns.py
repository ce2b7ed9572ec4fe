"""Columns that fit the table's width: a narrow window shrinks the chosen text columns (their
full text stays on hover) instead of making the operator scroll sideways."""

from __future__ import annotations

from collections.abc import Sequence

from app.ui.qt import QtCore, QtWidgets


class ColumnFitter(QtCore.QObject):
    """Keeps ``table``'s columns (all but the stretched last one) within its width.

    ``preferred`` is each column's width when there is room; ``shrink`` lists the columns that give
    up width, first to last, each down to its ``floor``; the stretched last column keeps ``last``.
    """

    def __init__(
        self,
        table: QtWidgets.QTableView,
        preferred: Sequence[int],
        shrink: Sequence[tuple[int, int]],
        last: int = 64,
    ) -> None:
        # A child of the viewport it watches: it goes when the viewport goes, never outlives it.
        self.viewport = table.viewport()
        super().__init__(self.viewport)
        self.table = table
        self.preferred = list(preferred)
        self.shrink = list(shrink)
        self.last = last
        # A stretched last section never shrinks below the header's default size: make that ``last``.
        header = table.horizontalHeader()
        header.setDefaultSectionSize(last)
        header.setStretchLastSection(False)
        header.resizeSection(len(self.preferred), last)
        header.setStretchLastSection(True)
        self.viewport.installEventFilter(self)
        self.fit()

    def eventFilter(self, watched: QtCore.QObject, event: QtCore.QEvent) -> bool:
        if watched is self.viewport and event.type() == QtCore.QEvent.Type.Resize:
            self.fit()
        return False

    def fit(self) -> None:
        widths = list(self.preferred)
        room = self.viewport.width() - self.last
        excess = sum(widths) - room
        for col, floor in self.shrink:
            if excess <= 0:
                break
            give = min(excess, max(0, widths[col] - floor))
            widths[col] -= give
            excess -= give
        for col, width in enumerate(widths):
            self.table.setColumnWidth(col, width)
