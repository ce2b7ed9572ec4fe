"""Alembic migrations of the store, run in code by :func:`storage.engine.migrate` (no alembic.ini).

To write a new revision, from the project root::

    .venv/bin/python -m storage.migrations.revision "what changes"

which autogenerates it against a scratch SQLite store at the current head;
read and edit the result before committing (autogenerate is a draft).
"""
