"""Ctrl+E (ui.md: export the visible data) for pages without an export of their own.

A page whose data is a table writes the rows shown, as shown, to CSV; an editor page (routes,
budgets, providers) writes the store's configuration as the config file `config apply` reads back.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from app.ui.qt import Qt, QtCore, QtWidgets


def table_rows(model: QtCore.QAbstractItemModel) -> list[list[str]]:
    """The header and every row of ``model`` as the operator reads them (display text)."""
    columns = model.columnCount()
    header = [
        str(model.headerData(c, Qt.Orientation.Horizontal, Qt.ItemDataRole.DisplayRole) or "")
        for c in range(columns)
    ]
    rows = [header]
    for r in range(model.rowCount()):
        rows.append(
            [
                "" if (v := model.index(r, c).data(Qt.ItemDataRole.DisplayRole)) is None else str(v)
                for c in range(columns)
            ]
        )
    return rows


def write_table_csv(path: Path, model: QtCore.QAbstractItemModel) -> int:
    """Write ``model``'s header and rows to ``path``; returns the number of data rows written."""
    rows = table_rows(model)
    with path.open("w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows(rows)
    return len(rows) - 1


def _ask_where(
    parent: QtWidgets.QWidget,
    what: str,
    *,
    stem: str,
    suffix: str,
    title: str,
    file_filter: str,
    ask_path: Callable[[str, Path], Path | None] | None,
) -> Path | None:
    """The file to write: the save dialog (or ``ask_path`` in tests), offering
    ``~/controlroom-<stem>-<time><suffix>``; ``None`` when the operator cancels."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    suggested = Path.home() / f"controlroom-{stem}-{stamp}{suffix}"
    if ask_path is not None:
        return ask_path(what, suggested)
    chosen, _ = QtWidgets.QFileDialog.getSaveFileName(parent, title, str(suggested), file_filter)
    return Path(chosen) if chosen else None


def export_table(
    parent: QtWidgets.QWidget,
    model: QtCore.QAbstractItemModel,
    what: str,
    say: Callable[[str], None],
    *,
    ask_path: Callable[[str, Path], Path | None] | None = None,
) -> Path | None:
    """Ask where (``ask_path`` stands in for the file dialog in tests), write the CSV, say so."""
    path = _ask_where(
        parent,
        what,
        stem=what.replace(" ", "-"),
        suffix=".csv",
        title=f"Export the {what} shown",
        file_filter="CSV (*.csv)",
        ask_path=ask_path,
    )
    if path is None:
        return None
    try:
        n = write_table_csv(path, model)
    except OSError as exc:
        say(f"Export failed: {exc}")
        return None
    say(f"Exported {n} {what} row{'s' if n != 1 else ''} to {path}.")
    return path


def export_config(
    parent: QtWidgets.QWidget,
    engine: Any,
    runner: Callable[..., Any],
    say: Callable[[str], None],
    *,
    what: str,
    ask_path: Callable[[str, Path], Path | None] | None = None,
) -> None:
    """Ctrl+E on an editor page: the store's configuration as a config file, the one
    ``controlroom config apply`` reads back (keys stay in the keyring; none is written)."""
    path = _ask_where(
        parent,
        what,
        stem="config",
        suffix=".yaml",
        title=f"Export the configuration ({what} and the rest)",
        file_filter="YAML (*.yaml *.yml)",
        ask_path=ask_path,
    )
    if path is None:
        return

    def work() -> Path:
        from app.gateway.control import export_text

        path.write_text(export_text(engine), encoding="utf-8")
        return path

    runner(
        work,
        lambda written: say(
            f"Exported the configuration to {written} (apply it with controlroom config apply)."
        ),
        lambda exc: say(f"Export failed: {exc}"),
    )
