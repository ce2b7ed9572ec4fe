"""Rollup tiers for history charts: cube rows per 1 min / 5 min / 1 h / 1 day, per-user rows, outliers.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

``rollup_minute`` (0001) holds one row per minute x provider x model x route x
feature: a 30-day chart over it reads 43,200 minutes x every key.  The tiers
here are what history queries read instead (storage/queries/compaction.py
builds them, storage/queries/series.py reads them):

- ``rollup_tier``: per grain (60, 300, 3600, 86400 s) and bucket, a *cube*:
  every dimension is either a value or ``*`` (all), so any filter on provider,
  model, route and feature, with or without a split by one of them, is a
  handful of rows per bucket.  Percentiles of the row's own sketch are stored
  beside it, so a chart whose step is the tier's grain decodes no sketch.
- ``rollup_user``: the same figures per user (not a cube: users are many).
- ``rollup_dirty``: 5-minute blocks whose minute rows changed since the tiers
  were built, marked by triggers on ``rollup_minute`` (every writer marks,
  whichever process it is); days whose day rows wait for a rebuild.
- ``outliers``: requests far above their route's usual tokens or latency.

Written out in full (not imported from storage.models) so this revision keeps
meaning the same schema when the models move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None

ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ZERO = sa.text("0")

_COUNTS = [
    "n_requests", "n_timeout", "n_rate_limited", "n_overloaded", "n_server_error", "n_client_error",
    "n_connection_error", "n_breaker_open", "n_budget_blocked", "n_guardrail_blocked", "n_quality_fail",
    "n_cache_hits", "n_cost_unknown",
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
]  # fmt: skip
_DIMS = ("provider", "model", "route", "feature")
_BLOCK = 300  # seconds per dirty block


def _measures(percentiles: bool) -> list[sa.Column]:
    cols = [sa.Column(c, sa.BigInteger(), server_default=ZERO, nullable=False) for c in _COUNTS]
    cols += [
        sa.Column("cost_usd", sa.Float(), server_default=ZERO, nullable=False),
        sa.Column("latency_n", sa.BigInteger(), server_default=ZERO, nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), server_default=ZERO, nullable=False),
        sa.Column("latency_sketch", sa.LargeBinary(), nullable=True),
        sa.Column("ttft_n", sa.BigInteger(), server_default=ZERO, nullable=False),
        sa.Column("ttft_sum_ms", sa.Float(), server_default=ZERO, nullable=False),
        sa.Column("ttft_sketch", sa.LargeBinary(), nullable=True),
    ]
    if percentiles:
        cols += [
            sa.Column(f"{m}_p{q}", sa.Float(), nullable=True)
            for m in ("latency", "ttft")
            for q in (50, 95, 99)
        ]
    return cols


def upgrade() -> None:
    op.create_table(
        "rollup_tier",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("grain", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Float(), nullable=False),
        *[sa.Column(c, sa.String(), nullable=False) for c in _DIMS],
        *_measures(percentiles=True),
        sa.PrimaryKeyConstraint("id", name="pk_rollup_tier"),
        # Equality on every dimension, then a bucket range: what a series reads.
        sa.UniqueConstraint(
            "grain",
            "provider",
            "model",
            "route",
            "feature",
            "bucket",
            name="uq_rollup_tier_grain_provider_model_route_feature_bucket",
        ),  # fmt: skip
    )
    op.create_index("ix_rollup_tier_grain_bucket", "rollup_tier", ["grain", "bucket"])
    op.create_table(
        "rollup_user",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("grain", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Float(), nullable=False),
        sa.Column("user", sa.String(), nullable=False),
        *[sa.Column(c, sa.String(), nullable=False) for c in _DIMS],
        *_measures(percentiles=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollup_user"),
        sa.UniqueConstraint(
            "grain",
            "user",
            "bucket",
            "provider",
            "model",
            "route",
            "feature",
            name="uq_rollup_user_grain_user_bucket_provider_model_route_feature",
        ),  # fmt: skip
    )
    op.create_index("ix_rollup_user_grain_bucket", "rollup_user", ["grain", "bucket"])
    op.create_table(
        "rollup_dirty",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("grain", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rollup_dirty"),
        sa.UniqueConstraint("grain", "bucket", name="uq_rollup_dirty_grain_bucket"),
    )
    op.create_table(
        "outliers",
        sa.Column("id", ID, autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        *[sa.Column(c, sa.String(), nullable=False) for c in _DIMS],
        sa.Column("user", sa.String(), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("baseline", sa.Float(), nullable=False),
        sa.Column("ratio", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_outliers"),
        sa.UniqueConstraint("event_id", "kind", name="uq_outliers_event_id_kind"),
    )
    op.create_index("ix_outliers_ts", "outliers", ["ts"])

    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION rollup_minute_mark_dirty() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO rollup_dirty (grain, bucket)
                VALUES ({_BLOCK}, floor(NEW.minute / {_BLOCK}) * {_BLOCK})
                ON CONFLICT DO NOTHING;
                RETURN NULL;
            END $$
            """
        )
        op.execute(
            "CREATE TRIGGER trg_rollup_minute_dirty AFTER INSERT OR UPDATE ON rollup_minute "
            "FOR EACH ROW EXECUTE FUNCTION rollup_minute_mark_dirty()"
        )
    else:
        block = f"CAST(NEW.minute / {_BLOCK} AS INTEGER) * {_BLOCK}.0"
        for when in ("INSERT", "UPDATE"):
            # The check is the trigger's WHEN, not a NOT EXISTS inside its body: half the cost per row
            # (measured).  Not INSERT OR IGNORE: the conflict policy of the statement that fired the
            # trigger (the rollup upsert's ABORT) overrides one given inside a trigger.
            op.execute(
                f"""
                CREATE TRIGGER trg_rollup_minute_dirty_{when.lower()} AFTER {when} ON rollup_minute
                WHEN NOT EXISTS (SELECT 1 FROM rollup_dirty WHERE grain = {_BLOCK} AND bucket = {block})
                BEGIN
                    INSERT INTO rollup_dirty (grain, bucket) VALUES ({_BLOCK}, {block});
                END
                """
            )
    # Minutes written before this revision: the tiers are built for them on the first compaction.
    op.execute(
        f"INSERT INTO rollup_dirty (grain, bucket) "
        f"SELECT DISTINCT {_BLOCK}, floor(minute / {_BLOCK}) * {_BLOCK} FROM rollup_minute"
        if bind.dialect.name == "postgresql"
        else f"INSERT INTO rollup_dirty (grain, bucket) "
        f"SELECT DISTINCT {_BLOCK}, CAST(minute / {_BLOCK} AS INTEGER) * {_BLOCK}.0 FROM rollup_minute"
    )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS trg_rollup_minute_dirty ON rollup_minute")
        op.execute("DROP FUNCTION IF EXISTS rollup_minute_mark_dirty()")
    else:
        op.execute("DROP TRIGGER IF EXISTS trg_rollup_minute_dirty_insert")
        op.execute("DROP TRIGGER IF EXISTS trg_rollup_minute_dirty_update")
    for table in ("outliers", "rollup_dirty", "rollup_user", "rollup_tier"):
        op.drop_table(table)
