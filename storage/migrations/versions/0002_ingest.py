"""Ingest: quarantine, source positions, source configs, provider usage.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

Written out in full (not imported from storage.models) so this revision keeps
meaning the same schema when the models move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ZERO = sa.text("0")


def _id() -> sa.Column:
    return sa.Column("id", ID, autoincrement=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "quarantine",
        _id(),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("position", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("excerpt", sa.Text(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("record_key", sa.String(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_quarantine"),
        sa.UniqueConstraint("source", "record_key", name="uq_quarantine_source_record_key"),
    )
    op.create_index("ix_quarantine_source_ts", "quarantine", ["source", "ts"])
    op.create_table(
        "source_positions",
        _id(),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("identity", sa.String(), nullable=False),
        sa.Column("offset", sa.BigInteger(), nullable=False),
        sa.Column("fingerprint", sa.String(), server_default="", nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_source_positions"),
        sa.UniqueConstraint("source", name="uq_source_positions_source"),
    )
    op.create_table(
        "sources",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sources"),
        sa.UniqueConstraint("name", name="uq_sources_name"),
    )
    op.create_table(
        "provider_usage",
        _id(),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("bucket_start", sa.Float(), nullable=False),
        sa.Column("bucket_width", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(), server_default="", nullable=False),
        *[
            sa.Column(c, sa.BigInteger(), server_default=ZERO, nullable=False)
            for c in ("input_tokens", "output_tokens", "cached_tokens", "cache_write_tokens", "requests")
        ],
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("fetched_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_provider_usage"),
        sa.UniqueConstraint(
            "provider", "bucket_start", "bucket_width", "model",
            name="uq_provider_usage_provider_bucket_start_bucket_width_model",
        ),  # fmt: skip
    )


def downgrade() -> None:
    for table in ("provider_usage", "sources", "source_positions", "quarantine"):
        op.drop_table(table)
