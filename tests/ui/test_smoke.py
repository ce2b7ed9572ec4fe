"""`controlroom ui --smoke --screenshot PNG` paints a real window and exits 0 (offscreen)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.ui.qt import QtGui

pytestmark = pytest.mark.gui


def _run(args: list[str], home: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", CONTROLROOM_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "app", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _assert_real_picture(path: Path) -> QtGui.QImage:
    image = QtGui.QImage(str(path))
    assert not image.isNull(), "the screenshot is not a readable PNG"
    assert image.width() >= 900 and image.height() >= 560
    # A real window has many colours (text, rail, tiles), not one flat fill.
    colours = {image.pixel(x, y) for x in range(0, image.width(), 7) for y in range(0, image.height(), 7)}
    assert len(colours) > 20
    return image


@pytest.mark.parametrize("page", [None, "breakers"])
def test_smoke_screenshot_is_a_real_picture(qapp: object, tmp_path: Path, page: str | None) -> None:
    out = tmp_path / "shot.png"
    args = ["ui", "--smoke", "--screenshot", str(out)] + (["--page", page] if page else [])
    done = _run(args, tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "smoke ok" in done.stdout
    assert f"page={page or 'overview'}" in done.stdout
    assert "tokens=" in done.stdout and "tokens=None" not in done.stdout
    assert (tmp_path / "home" / "data" / "controlroom.sqlite3").exists(), "the store was not created"
    _assert_real_picture(out)


def test_smoke_on_an_explicit_store_url(qapp: object, tmp_path: Path) -> None:
    store = tmp_path / "elsewhere" / "ops.sqlite3"
    done = _run(["ui", "--smoke", "--store", f"sqlite:///{store}"], tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    assert store.exists()


def test_unknown_page_is_refused(tmp_path: Path) -> None:
    done = _run(["ui", "--smoke", "--page", "nope"], tmp_path)
    assert done.returncode == 2
    assert "no page named 'nope'" in done.stderr


def test_version(tmp_path: Path) -> None:
    from app import __version__

    done = _run(["--version"], tmp_path)
    assert done.returncode == 0
    assert done.stdout.strip() == f"controlroom {__version__}"


def test_size_opens_the_window_at_that_size(qapp: object, tmp_path: Path) -> None:
    out = tmp_path / "narrow.png"
    done = _run(
        ["ui", "--smoke", "--page", "audit", "--size", "960x640", "--screenshot", str(out)], tmp_path / "h"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    image = _assert_real_picture(out)
    assert (image.width(), image.height()) == (960, 640)
    bad = _run(["ui", "--smoke", "--size", "wide"], tmp_path / "h")
    assert bad.returncode == 2 and "not a window size like 960x640" in bad.stderr
