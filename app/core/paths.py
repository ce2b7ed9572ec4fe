"""Where Control Room keeps its files (platformdirs), with an override for tests and development.

``CONTROLROOM_HOME`` puts every directory under one folder: tests point it at a
temporary directory so that no test touches the operator's real store or settings.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "controlroom"


def _home() -> Path | None:
    value = os.environ.get("CONTROLROOM_HOME")
    return Path(value) if value else None


def data_dir() -> Path:
    home = _home()
    path = home / "data" if home else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    home = _home()
    path = home / "cache" if home else Path(platformdirs.user_cache_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def config_dir() -> Path:
    home = _home()
    path = home / "config" if home else Path(platformdirs.user_config_dir(APP_NAME, appauthor=False))
    path.mkdir(parents=True, exist_ok=True)
    return path


def default_store_path() -> Path:
    return data_dir() / "controlroom.sqlite3"


def default_store_url() -> str:
    """``CONTROLROOM_STORE`` wins; else the SQLite file in the data dir."""
    return os.environ.get("CONTROLROOM_STORE") or f"sqlite:///{default_store_path()}"
