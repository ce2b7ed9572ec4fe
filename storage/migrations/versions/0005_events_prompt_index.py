"""An index for prompt-filtered history, which is read from events (rollups have no prompt).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29

Partial (``prompt_name IS NOT NULL``): only requests that named a registry prompt
pay for it on insert, so ingest of ordinary traffic is not slowed.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    op.create_index(
        "ix_events_prompt_name_ts_start",
        "events",
        ["prompt_name", "ts_start"],
        sqlite_where=sa.text("prompt_name IS NOT NULL"),
        postgresql_where=sa.text("prompt_name IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_events_prompt_name_ts_start", table_name="events")
