"""Revision scripts; the package marker makes setuptools ship them (alembic skips this file)."""
