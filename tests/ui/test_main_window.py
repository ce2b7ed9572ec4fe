"""The main window: every page reachable, keys work, geometry persists, the store shows in the status bar."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from app.ui.main_window import MainWindow
from app.ui.pages import PAGE_KEYS, PAGES
from app.ui.pages.overview import OverviewPage
from app.ui.qt import Qt, QtCore, QtGui
from app.ui.theme import DARK, LIGHT, Scheme, apply_theme

pytestmark = pytest.mark.gui

EXPECTED_RAIL = [
    "Overview",
    "Traffic",
    "Breakers",
    "Routing",
    "Budgets",
    "Experiments",
    "Prompts",
    "Events",
    "Sources",
    "Providers",
    "Alerts",
    "Audit",
]


@pytest.fixture
def window(qtbot: object) -> Iterator[MainWindow]:
    w = MainWindow()
    qtbot.addWidget(w)  # type: ignore[attr-defined]
    w.resize(1200, 760)
    w.show()
    qtbot.waitExposed(w)  # type: ignore[attr-defined]
    yield w


def test_rail_lists_every_page_in_order(window: MainWindow) -> None:
    assert [window.rail.item(i).text() for i in range(window.rail.count())] == EXPECTED_RAIL
    assert len(PAGE_KEYS) == len(set(PAGE_KEYS)) == 12


def test_every_page_can_be_visited_and_says_what_it_will_hold(qtbot: object, window: MainWindow) -> None:
    for spec in PAGES:
        with qtbot.waitSignal(window.page_changed, timeout=1000, check_params_cb=lambda k: True):  # type: ignore[attr-defined]
            window.show_page(spec.key) if window.current_page != spec.key else window.page_changed.emit(
                spec.key
            )
        assert window.current_page == spec.key
        page = window.stack.currentWidget()
        assert page is window.pages[spec.key]
        texts = " ".join(label.text() for label in page.findChildren(type(window.status.store)))
        assert spec.title in texts
        assert len(texts) > len(spec.title) + 20, f"{spec.key} page says nothing about itself"


def test_ctrl_number_switches_pages(qtbot: object, window: MainWindow) -> None:
    qtbot.keyClick(window, Qt.Key.Key_3, Qt.KeyboardModifier.ControlModifier)  # type: ignore[attr-defined]
    assert window.current_page == "breakers"
    qtbot.keyClick(window, Qt.Key.Key_1, Qt.KeyboardModifier.ControlModifier)  # type: ignore[attr-defined]
    assert window.current_page == "overview"


def test_unknown_page_is_a_clear_error(window: MainWindow) -> None:
    with pytest.raises(KeyError, match="no page named 'nope'"):
        window.show_page("nope")


def test_geometry_and_page_persist(qtbot: object, _private_home: Path) -> None:
    first = MainWindow()
    qtbot.addWidget(first)  # type: ignore[attr-defined]
    first.restore_state()
    first.resize(1010, 640)
    first.show_page("budgets")
    first.save_state()
    assert (_private_home / "config" / "ui.ini").exists()
    second = MainWindow()
    qtbot.addWidget(second)  # type: ignore[attr-defined]
    second.restore_state()
    assert second.current_page == "budgets"
    # The offscreen screen is 800 px wide, so the width is clamped to the window's minimum; the height is not.
    assert second.size().height() == 640


def test_overview_accepts_a_live_snapshot(window: MainWindow) -> None:
    page = window.pages["overview"]
    assert isinstance(page, OverviewPage)
    assert not page.empty.isHidden()
    page.apply_snapshot(
        {
            "requests_per_s": 12.34,
            "p95_latency_ms": 1420,
            "error_rate": 0.031,
            "cost_today_usd": 80.0,
            "budget_today_usd": 100.0,
            "cache_hit_rate": 0.25,
            "open_breakers": 1,
            "previous": {"requests_per_s": 10.0, "p95_latency_ms": 1000},
        }
    )
    assert page.tiles["requests_per_s"].value.text() == "12.3 /s"
    assert page.tiles["p95_latency_ms"].value.text() == "1.42 s"
    assert page.tiles["error_rate"].value.text() == "3.1%"
    assert page.tiles["cost_today_usd"].value.text() == "$80.00 of $100.00"
    assert page.tiles["open_breakers"].value.text() == "1"
    assert "▲" in page.tiles["requests_per_s"].change.text()
    assert page.empty.isHidden()


def test_clicking_a_tile_opens_traffic(qtbot: object, window: MainWindow) -> None:
    page = window.pages["overview"]
    assert isinstance(page, OverviewPage)
    qtbot.mouseClick(page.tiles["p95_latency_ms"], Qt.MouseButton.LeftButton)  # type: ignore[attr-defined]
    assert window.current_page == "traffic"


def test_light_and_dark_palettes(qapp: object) -> None:
    app = QtGui.QGuiApplication.instance()
    assert apply_theme(app, Scheme.DARK) is DARK  # type: ignore[arg-type]
    dark_window = app.palette().color(QtGui.QPalette.ColorRole.Window)  # type: ignore[union-attr]
    assert apply_theme(app, Scheme.LIGHT) is LIGHT  # type: ignore[arg-type]
    light_window = app.palette().color(QtGui.QPalette.ColorRole.Window)  # type: ignore[union-attr]
    assert dark_window.lightness() < 80 < light_window.lightness()
    assert QtCore.QCoreApplication.instance() is not None


def test_keyring_problem_is_explained_in_a_dialog(qtbot: object) -> None:
    from app.secrets import BackendStatus
    from app.ui.dialogs import keyring_problem_box, require_keyring

    ok = BackendStatus(True, "SecretService Keyring", "Keys are kept in SecretService Keyring.")
    assert require_keyring(ok) is True
    bad = BackendStatus(
        False, "fail Keyring", "No secure keyring is available. API keys are never stored in plain text"
    )
    box = keyring_problem_box(bad)
    qtbot.addWidget(box)  # type: ignore[attr-defined]
    assert "never stored in plain text" in box.informativeText()
    assert "plain-text" in box.detailedText()


def test_status_bar_says_when_the_keyring_is_missing(window: MainWindow) -> None:
    window.status.set_keyring("none", False, "No secure keyring is available.")
    assert "⚠" in window.status.keyring.text()
    assert window.status.keyring.toolTip() == "No secure keyring is available."
