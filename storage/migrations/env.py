"""Alembic's environment: run by storage.engine.migrate with a connection already in a transaction."""

from __future__ import annotations

from alembic import context

from storage.models import Base

config = context.config
connection = config.attributes.get("connection")

if context.is_offline_mode() or connection is None:
    raise RuntimeError(
        "run migrations through storage.engine.migrate / open_store, which pass an open connection"
    )

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things: autogenerate "move and copy" batch operations.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
