"""Prompt registry and A/B lab: prompts and their versions, experiments, runs and results.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29

- ``prompts``: one row per named prompt, with the version the gateway uses
  (``active_version``; null until one is promoted) and a ``revision`` for
  optimistic saves like the other control objects.
- ``prompt_versions``: immutable versions (template with ``{{variables}}``,
  system prompt, model parameters); a new version is a new row.
- ``experiments``: an experiment's definition (the parsed file, as JSON).
- ``experiment_runs``: one run of an experiment, with a snapshot of what it ran.
- ``experiment_results``: one row per run x variant x case x repetition; the
  unique key is what makes a resumed run skip (and not re-bill) finished cases.

Written out in full (not imported from storage.models) so this revision keeps
meaning the same schema when the models move on.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _id() -> sa.Column:
    return sa.Column("id", ID, autoincrement=True, nullable=False)


def upgrade() -> None:
    op.create_table(
        "prompts",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("description", sa.Text(), server_default="", nullable=False),
        sa.Column("active_version", sa.Integer(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_prompts"),
        sa.UniqueConstraint("name", name="uq_prompts_name"),
    )
    op.create_table(
        "prompt_versions",
        _id(),
        sa.Column("prompt", sa.String(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("template", sa.Text(), nullable=False),
        sa.Column("system", sa.Text(), nullable=True),
        sa.Column("params", JSON, nullable=False),
        sa.Column("note", sa.Text(), server_default="", nullable=False),
        sa.Column("author", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prompt"], ["prompts.name"], name="fk_prompt_versions_prompt_prompts",
            onupdate="CASCADE", ondelete="CASCADE",
        ),  # fmt: skip
        sa.PrimaryKeyConstraint("id", name="pk_prompt_versions"),
        sa.UniqueConstraint("prompt", "version", name="uq_prompt_versions_prompt_version"),
    )
    op.create_table(
        "experiments",
        _id(),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_experiments"),
        sa.UniqueConstraint("name", name="uq_experiments_name"),
    )
    op.create_table(
        "experiment_runs",
        _id(),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("experiment", sa.String(), nullable=False),
        sa.Column("spec", JSON, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_experiment_runs"),
        sa.UniqueConstraint("run_id", name="uq_experiment_runs_run_id"),
    )
    op.create_index("ix_experiment_runs_experiment", "experiment_runs", ["experiment"])
    op.create_table(
        "experiment_results",
        _id(),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("variant", sa.String(), nullable=False),
        sa.Column("case_index", sa.Integer(), nullable=False),
        sa.Column("repetition", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("ttft_ms", sa.Float(), nullable=True),
        sa.Column("input_tokens", sa.Integer(), nullable=True),
        sa.Column("output_tokens", sa.Integer(), nullable=True),
        sa.Column("cost_usd", sa.Float(), nullable=True),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("checks", JSON, nullable=False),
        sa.Column("event_id", sa.String(length=32), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_experiment_results"),
        sa.UniqueConstraint(
            "run_id", "variant", "case_index", "repetition",
            name="uq_experiment_results_run_id_variant_case_index_repetition",
        ),  # fmt: skip
    )


def downgrade() -> None:
    for table in ("experiment_results", "experiment_runs", "experiments", "prompt_versions", "prompts"):
        op.drop_table(table)
