"""The store: SQLAlchemy models, the engine factory, Alembic migrations and query functions.

One schema for SQLite (the default, one file in the data dir) and PostgreSQL
(teams and gateway fleets).  Open it with :func:`storage.engine.open_store`,
which migrates on start after copying a SQLite file aside.  ``storage`` imports
nothing from ``app`` but ``app.core`` value types (architecture.md).
"""

from __future__ import annotations

from storage.engine import Store, StoreError, create_store_engine, open_store, transaction

__all__ = ["Store", "StoreError", "create_store_engine", "open_store", "transaction"]
