"""Initial schema: events, minute rollups, control state, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Written out in full (not imported from storage.models) so this revision keeps
meaning the same schema when the models move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | None = None
depends_on: str | None = None

# The same types as storage.models.JSON_TYPE and ID_TYPE.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
ZERO = sa.text("0")


def _id() -> sa.Column:
    return sa.Column("id", ID, autoincrement=True, nullable=False)


def _pk(table: str) -> sa.PrimaryKeyConstraint:
    return sa.PrimaryKeyConstraint("id", name=f"pk_{table}")


def _revisioned() -> list[sa.Column]:
    return [
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "events",
        _id(),
        sa.Column("event_id", sa.String(length=32), nullable=False),
        sa.Column("ts_start", sa.Float(), nullable=False),
        sa.Column("ts_end", sa.Float(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("response_model", sa.String(), nullable=True),
        sa.Column("route", sa.String(), nullable=True),
        sa.Column("feature", sa.String(), nullable=True),
        sa.Column("user", sa.String(), nullable=True),
        sa.Column("tags", JSON, nullable=False),
        sa.Column("prompt_name", sa.String(), nullable=True),
        sa.Column("prompt_version", sa.Integer(), nullable=True),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("failure", sa.String(length=32), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("targets_tried", JSON, nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=False),
        sa.Column("output_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_read_tokens", sa.Integer(), nullable=False),
        sa.Column("cache_write_tokens", sa.Integer(), nullable=False),
        sa.Column("reasoning_tokens", sa.Integer(), nullable=False),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("cost_source", sa.String(length=16), nullable=False),
        sa.Column("cache_hit", sa.String(length=16), nullable=False),
        sa.Column("breaker_state", sa.String(length=16), nullable=True),
        sa.Column("input_text", sa.Text(), nullable=True),
        sa.Column("output_text", sa.Text(), nullable=True),
        _pk("events"),
        sa.UniqueConstraint("event_id", name="uq_events_event_id"),
    )
    op.create_index("ix_events_ts_start_id", "events", ["ts_start", "id"])

    counters = [
        "n_requests", "n_timeout", "n_rate_limited", "n_overloaded", "n_server_error", "n_client_error",
        "n_connection_error", "n_breaker_open", "n_budget_blocked", "n_guardrail_blocked", "n_quality_fail",
        "n_cache_hits", "n_cost_unknown",
    ]  # fmt: skip
    token_sums = ["input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"]
    op.create_table(
        "rollup_minute",
        _id(),
        sa.Column("minute", sa.Float(), nullable=False),
        *[sa.Column(c, sa.String(), server_default="", nullable=False) for c in ("provider", "model", "route", "feature")],
        *[sa.Column(c, sa.Integer(), server_default=ZERO, nullable=False) for c in counters],
        *[sa.Column(c, sa.BigInteger(), server_default=ZERO, nullable=False) for c in token_sums],
        sa.Column("cost_usd", sa.Float(), server_default=ZERO, nullable=False),
        sa.Column("latency_n", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("latency_sum_ms", sa.Float(), server_default=ZERO, nullable=False),
        sa.Column("latency_sketch", sa.LargeBinary(), nullable=True),
        sa.Column("ttft_n", sa.Integer(), server_default=ZERO, nullable=False),
        sa.Column("ttft_sum_ms", sa.Float(), server_default=ZERO, nullable=False),
        sa.Column("ttft_sketch", sa.LargeBinary(), nullable=True),
        _pk("rollup_minute"),
        sa.UniqueConstraint(
            "minute", "provider", "model", "route", "feature",
            name="uq_rollup_minute_minute_provider_model_route_feature",
        ),  # fmt: skip
    )

    op.create_table(
        "providers",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("base_url", sa.String(), nullable=True),
        sa.Column("api_key_ref", sa.String(), nullable=False),
        sa.Column("admin_key_ref", sa.String(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        *_revisioned(),
        _pk("providers"),
        sa.UniqueConstraint("name", name="uq_providers_name"),
    )
    op.create_table(
        "targets",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("provider", sa.String(), nullable=False),
        sa.Column("model", sa.String(), nullable=False),
        sa.Column("input_per_mtok", sa.Float(), nullable=True),
        sa.Column("output_per_mtok", sa.Float(), nullable=True),
        sa.Column("cache_read_per_mtok", sa.Float(), nullable=True),
        sa.Column("cache_write_per_mtok", sa.Float(), nullable=True),
        sa.Column("breaker", JSON, nullable=True),
        *_revisioned(),
        _pk("targets"),
        sa.UniqueConstraint("name", name="uq_targets_name"),
        sa.ForeignKeyConstraint(
            ["provider"], ["providers.name"], name="fk_targets_provider_providers",
            onupdate="CASCADE", ondelete="RESTRICT",
        ),  # fmt: skip
    )
    op.create_index("ix_targets_provider", "targets", ["provider"])
    op.create_table(
        "routes",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("settings", JSON, nullable=False),
        sa.Column("rules", JSON, nullable=False),
        sa.Column("on_all_open", sa.String(length=16), nullable=False),
        *_revisioned(),
        _pk("routes"),
        sa.UniqueConstraint("name", name="uq_routes_name"),
    )
    op.create_table(
        "budgets",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("scope", JSON, nullable=False),
        sa.Column("period", sa.String(length=32), nullable=False),
        sa.Column("timezone", sa.String(length=64), nullable=False),
        sa.Column("limit_usd", sa.Float(), nullable=True),
        sa.Column("limit_tokens", sa.BigInteger(), nullable=True),
        sa.Column("warn_at", JSON, nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("downgrade_to", JSON, nullable=True),
        *_revisioned(),
        _pk("budgets"),
        sa.UniqueConstraint("name", name="uq_budgets_name"),
    )
    op.create_table(
        "budget_warnings_fired",
        _id(),
        sa.Column("budget", sa.String(), nullable=False),
        sa.Column("period_start", sa.Float(), nullable=False),
        sa.Column("level", sa.Float(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        _pk("budget_warnings_fired"),
        sa.UniqueConstraint(
            "budget", "period_start", "level", name="uq_budget_warnings_fired_budget_period_start_level"
        ),
    )
    op.create_table(
        "breaker_overrides",
        _id(),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        _pk("breaker_overrides"),
        sa.UniqueConstraint("target", name="uq_breaker_overrides_target"),
    )
    op.create_table(
        "breaker_transitions",
        _id(),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("cause", sa.String(), nullable=False),
        sa.Column("detail", JSON, nullable=True),
        _pk("breaker_transitions"),
    )
    op.create_index("ix_breaker_transitions_target_ts", "breaker_transitions", ["target", "ts"])
    op.create_table(
        "audit_log",
        _id(),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("object_type", sa.String(length=32), nullable=False),
        sa.Column("object_name", sa.String(), nullable=False),
        sa.Column("before", JSON, nullable=True),
        sa.Column("after", JSON, nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        _pk("audit_log"),
    )
    op.create_index("ix_audit_log_ts", "audit_log", ["ts"])
    op.create_index("ix_audit_log_object_type_object_name", "audit_log", ["object_type", "object_name"])
    control_version = op.create_table(
        "control_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_control_version"),
        sa.CheckConstraint("id = 1", name="ck_control_version_single_row"),
    )
    op.bulk_insert(control_version, [{"id": 1, "version": 0, "updated_at": 0.0}])


def downgrade() -> None:
    for table in (
        "control_version", "audit_log", "breaker_transitions", "breaker_overrides", "budget_warnings_fired",
        "budgets", "routes", "targets", "providers", "rollup_minute", "events",
    ):  # fmt: skip
        op.drop_table(table)
