"""Demo mode in the desktop app: the DEMO badge, live data, one click stops the traffic, the smoke run."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.demo import WeatherPhase, WeatherSchedule
from app.ui.app import ControlRoom, UiOptions
from app.ui.demo_control import STOP_SHORTCUT
from app.ui.qt import Qt, QtGui, QtWidgets
from storage.engine import open_store
from storage.queries.control import save_object

pytestmark = pytest.mark.gui


@pytest.fixture
def make_app(qtbot: Any) -> Iterator[Any]:
    apps: list[ControlRoom] = []

    def make(options: UiOptions, **demo_kwargs: Any) -> ControlRoom:
        qapp = QtWidgets.QApplication.instance()
        assert isinstance(qapp, QtWidgets.QApplication)
        app = ControlRoom(qapp, options)
        app.demo.demo_kwargs = demo_kwargs
        qtbot.addWidget(app.window)
        apps.append(app)
        app.start()
        return app

    yield make
    for app in apps:
        app.shutdown()
        app.window.close()


def test_demo_shows_the_badge_feeds_live_data_and_one_click_stops_it(
    qtbot: Any, make_app: Any, tmp_path: Path
) -> None:
    # Instant weather: the stop does not wait for slow streams to finish.
    calm = WeatherSchedule((WeatherPhase("instant", 600.0),), loop=False)
    app = make_app(
        UiOptions(store_url=f"sqlite:///{tmp_path / 's.sqlite3'}", demo=True),
        backfill_hours=0.5,
        weather=calm,
    )
    demo = app.demo
    qtbot.waitUntil(lambda: demo.state == "running", timeout=30_000)
    assert demo.badge.isVisible() and demo.badge.text().startswith("DEMO")
    qtbot.waitUntil(lambda: "instant" in demo.badge.text(), timeout=5_000)  # the weather shows
    assert demo.button.isVisible() and demo.action.isEnabled()
    assert demo.action.shortcut().toString() == QtGui.QKeySequence(STOP_SHORTCUT).toString()
    live = app.live if hasattr(app, "live") else None
    qtbot.waitUntil(lambda: demo.live_events() >= 5, timeout=20_000)
    if live is not None:
        assert live.added >= 5

    qtbot.mouseClick(demo.badge, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: demo.state == "stopped", timeout=15_000)
    assert "stopped" in demo.badge.text()
    assert demo.action.text() == "Resume demo traffic"
    status = demo.demo.status()
    assert not status.traffic
    sent = status.sent
    qtbot.wait(400)
    assert demo.demo.status().sent == sent, "requests were sent after the stop"

    # The same button (or key) starts it again.
    demo.action.trigger()
    qtbot.waitUntil(lambda: demo.state == "running", timeout=10_000)
    qtbot.waitUntil(lambda: demo.demo.status().sent > sent, timeout=10_000)


def test_demo_if_empty_stays_off_when_a_provider_is_configured(
    qtbot: Any, make_app: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'configured.sqlite3'}"
    with open_store(url) as store:
        save_object(
            store.engine,
            "provider",
            {"name": "openai-main", "kind": "openai"},
            expected_revision=None,
            actor="test",
        )
    app = make_app(UiOptions(store_url=url, demo_if_empty=True))
    qtbot.waitUntil(lambda: app.demo.decided, timeout=20_000)
    assert app.demo.state == "off" and app.demo.demo is None
    assert not app.demo.badge.isVisible() and not app.demo.action.isEnabled()


def test_demo_if_empty_starts_on_an_empty_store(qtbot: Any, make_app: Any, tmp_path: Path) -> None:
    app = make_app(
        UiOptions(store_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}", demo_if_empty=True), backfill_hours=0.2
    )
    qtbot.waitUntil(lambda: app.demo.state == "running", timeout=30_000)
    assert app.demo.badge.isVisible()


def test_smoke_with_demo_waits_for_live_data_and_exits_0(qapp: object, tmp_path: Path) -> None:
    out = tmp_path / "demo.png"
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", CONTROLROOM_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [sys.executable, "-m", "app", "ui", "--demo", "--smoke", "--screenshot", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke ok" in done.stdout and "demo=running" in done.stdout
    live = int(done.stdout.split("live_events=")[1].split()[0])
    assert live > 0
    image = QtGui.QImage(str(out))
    assert not image.isNull() and image.width() >= 900
