"""Simulator scenarios: one YAML file per scenario (format in app/sim/scenario.py)."""
