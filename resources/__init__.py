"""Data files shipped with the app (scenarios, icons, themes, demo data), read with importlib.resources."""
