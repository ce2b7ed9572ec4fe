"""The tables of the store, as typed SQLAlchemy 2 models.

Conventions, the same in every table:

- Times are epoch seconds (UTC) in a ``Float`` column: portable between SQLite
  and PostgreSQL, cheap to compare, and what ``app.core`` already uses.
- JSON columns use :data:`JSON_TYPE`: ``JSON`` on SQLite, ``JSONB`` on PostgreSQL.
- Enumerations are plain strings, validated in code: adding a failure type or a
  budget action must never need a table rebuild of the events table.
- Control objects (providers, targets, routes, budgets) carry a ``revision``
  for optimistic concurrency: a save based on an old revision is refused.

The schema is created by the Alembic migrations in ``storage/migrations``,
never by ``metadata.create_all``; a test checks that the two agree.
"""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeEngine

from app.core.event import Failure

#: JSON on SQLite (stored as text), JSONB on PostgreSQL (indexable, compact).
#: ``none_as_null``: a Python ``None`` is SQL NULL, not the JSON literal ``null``.
JSON_TYPE: TypeEngine[Any] = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

#: A 64-bit integer primary key that is SQLite's rowid alias (``INTEGER PRIMARY KEY``):
#: monotonic, no separate index, the fastest insert path (platform-notes.md).
ID_TYPE: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")

# Stable constraint names, so later migrations (and SQLite batch rebuilds) can name them.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# --- data: events and rollups -------------------------------------------------------


class EventRow(Base):
    """One request (semantics.md section 9): every field of :class:`app.core.event.Event`.

    ``id`` is the monotonic insert key; ``event_id`` is the event's own
    time-ordered id, unique, which makes a replayed batch insert nothing twice.
    Indexes are few on purpose: each b-tree costs insert rate (a
    ``(failure, ts_start)`` index cost about a quarter of it, measured).  The
    one secondary index is time order for paging and time-range filters;
    other filters (failure, route, feature, user) narrow a time range, and
    aggregate views read :class:`RollupMinute`, never this table.
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32), unique=True)
    ts_start: Mapped[float] = mapped_column(Float)
    ts_end: Mapped[float] = mapped_column(Float)
    source: Mapped[str] = mapped_column(String)
    provider: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    response_model: Mapped[str | None] = mapped_column(String)
    route: Mapped[str | None] = mapped_column(String)
    feature: Mapped[str | None] = mapped_column(String)
    user: Mapped[str | None] = mapped_column(String)
    tags: Mapped[dict[str, str]] = mapped_column(JSON_TYPE)
    prompt_name: Mapped[str | None] = mapped_column(String)
    prompt_version: Mapped[int | None] = mapped_column(Integer)
    stream: Mapped[bool] = mapped_column()
    status_code: Mapped[int | None] = mapped_column(Integer)
    failure: Mapped[str] = mapped_column(String(32))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer)
    targets_tried: Mapped[list[str]] = mapped_column(JSON_TYPE)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    input_tokens: Mapped[int] = mapped_column(Integer)
    output_tokens: Mapped[int] = mapped_column(Integer)
    cache_read_tokens: Mapped[int] = mapped_column(Integer)
    cache_write_tokens: Mapped[int] = mapped_column(Integer)
    reasoning_tokens: Mapped[int] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    cost_source: Mapped[str] = mapped_column(String(16))
    cache_hit: Mapped[str] = mapped_column(String(16))
    breaker_state: Mapped[str | None] = mapped_column(String(16))
    input_text: Mapped[str | None] = mapped_column(Text)
    output_text: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # Keyset paging in time order: (ts_start, id) is the page cursor.
        Index("ix_events_ts_start_id", "ts_start", "id"),
        # Prompt-filtered history is read from events (rollups have no prompt).  Partial: only
        # requests that named a prompt pay for it on insert.
        Index(
            "ix_events_prompt_name_ts_start",
            "prompt_name",
            "ts_start",
            sqlite_where=text("prompt_name IS NOT NULL"),
            postgresql_where=text("prompt_name IS NOT NULL"),
        ),
    )


# Server-side defaults on the rollup counters: a later migration that adds a
# counter (a new failure type) fills existing rows without a table rewrite.
_ZERO = text("0")

#: The rollup column that counts each failure type (``none`` is requests minus these).
FAILURE_COUNT_COLUMNS: dict[Failure, str] = {f: f"n_{f.value}" for f in Failure if f is not Failure.NONE}


class RollupMinute(Base):
    """Per minute x provider x model x route x feature (architecture.md, Store).

    No ``user`` dimension: users are unbounded and would multiply the rows;
    per-user figures come from the events table over a time range.  Missing
    route or feature is the empty string, so the unique key works (NULLs are
    distinct in a unique index).  One integer column per failure type, so a
    chart sums columns instead of unpacking JSON.  The sketches are serialized
    DDSketches that merge into hours and days.
    """

    __tablename__ = "rollup_minute"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    minute: Mapped[float] = mapped_column(Float)  # epoch seconds of the minute's start
    provider: Mapped[str] = mapped_column(String, server_default="")
    model: Mapped[str] = mapped_column(String, server_default="")
    route: Mapped[str] = mapped_column(String, server_default="")
    feature: Mapped[str] = mapped_column(String, server_default="")
    n_requests: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_timeout: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_rate_limited: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_overloaded: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_server_error: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_client_error: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_connection_error: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_breaker_open: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_budget_blocked: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_guardrail_blocked: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_quality_fail: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_cache_hits: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    n_cost_unknown: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cost_usd: Mapped[float] = mapped_column(Float, server_default=_ZERO)
    latency_n: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    latency_sum_ms: Mapped[float] = mapped_column(Float, server_default=_ZERO)
    latency_sketch: Mapped[bytes | None] = mapped_column(LargeBinary)
    ttft_n: Mapped[int] = mapped_column(Integer, server_default=_ZERO)
    ttft_sum_ms: Mapped[float] = mapped_column(Float, server_default=_ZERO)
    ttft_sketch: Mapped[bytes | None] = mapped_column(LargeBinary)

    __table_args__ = (
        # Leading on minute: the same index serves upserts and time-range reads.
        UniqueConstraint("minute", "provider", "model", "route", "feature"),
    )


# --- control state ------------------------------------------------------------------


class ProviderRow(Base):
    """A provider account.  ``api_key_ref`` is a reference, never a key."""

    __tablename__ = "providers"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # openai | anthropic | openai_compatible
    base_url: Mapped[str | None] = mapped_column(String)
    api_key_ref: Mapped[str] = mapped_column(String)  # keyring:SERVICE/NAME | env:VAR | none
    admin_key_ref: Mapped[str | None] = mapped_column(String)
    rpm: Mapped[int | None] = mapped_column(Integer)
    tpm: Mapped[int | None] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class TargetRow(Base):
    """A target = provider + model; breakers are per target.  Prices override genai-prices."""

    __tablename__ = "targets"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    provider: Mapped[str] = mapped_column(
        String, ForeignKey("providers.name", onupdate="CASCADE", ondelete="RESTRICT"), index=True
    )
    model: Mapped[str] = mapped_column(String)
    input_per_mtok: Mapped[float | None] = mapped_column(Float)
    output_per_mtok: Mapped[float | None] = mapped_column(Float)
    cache_read_per_mtok: Mapped[float | None] = mapped_column(Float)
    cache_write_per_mtok: Mapped[float | None] = mapped_column(Float)
    breaker: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)  # per-target breaker settings
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class RouteRow(Base):
    """A route: its timeouts, retry, cache and output settings, and its ordered rules."""

    __tablename__ = "routes"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    rules: Mapped[list[Any]] = mapped_column(JSON_TYPE)
    on_all_open: Mapped[str] = mapped_column(String(16))  # fail_fast | try_anyway
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class BudgetRow(Base):
    """A budget (semantics.md section 7): scope, period, limits, warnings, action."""

    __tablename__ = "budgets"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    scope: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    period: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64))
    limit_usd: Mapped[float | None] = mapped_column(Float)
    limit_tokens: Mapped[int | None] = mapped_column(BigInteger)
    warn_at: Mapped[list[float]] = mapped_column(JSON_TYPE)
    action: Mapped[str] = mapped_column(String(16))  # alert_only | block | downgrade
    downgrade_to: Mapped[list[str] | None] = mapped_column(JSON_TYPE)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class BudgetWarningFired(Base):
    """A warning level that has alerted in a period: each level alerts once per period."""

    __tablename__ = "budget_warnings_fired"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    budget: Mapped[str] = mapped_column(String)
    period_start: Mapped[float] = mapped_column(Float)
    level: Mapped[float] = mapped_column(Float)
    ts: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("budget", "period_start", "level"),)


class BreakerOverrideRow(Base):
    """The operator's switch for one target's breaker (semantics.md section 5).

    One row per target: the latest decision.  Its history is in the audit log.
    No foreign key to ``targets``: a gateway configured in code has targets the
    store does not list, and an operator must still be able to open them.
    """

    __tablename__ = "breaker_overrides"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String, unique=True)
    state: Mapped[str] = mapped_column(String(16))  # force_open | force_closed | auto
    reason: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(String)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float | None] = mapped_column(Float)


class BreakerTransitionRow(Base):
    """One breaker state change, for the breaker timeline."""

    __tablename__ = "breaker_transitions"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String)
    ts: Mapped[float] = mapped_column(Float)
    from_state: Mapped[str] = mapped_column(String(16))
    to_state: Mapped[str] = mapped_column(String(16))
    cause: Mapped[str] = mapped_column(String)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON_TYPE)

    __table_args__ = (Index("ix_breaker_transitions_target_ts", "target", "ts"),)


class AuditRow(Base):
    """Who changed what, when, and why; before and after as JSON."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    ts: Mapped[float] = mapped_column(Float, index=True)
    actor: Mapped[str] = mapped_column(String)
    action: Mapped[str] = mapped_column(String(32))
    object_type: Mapped[str] = mapped_column(String(32))
    object_name: Mapped[str] = mapped_column(String)
    before: Mapped[Any] = mapped_column(JSON_TYPE, nullable=True)  # None when created
    after: Mapped[Any] = mapped_column(JSON_TYPE, nullable=True)  # None when deleted
    reason: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_audit_log_object_type_object_name", "object_type", "object_name"),)


class ControlVersion(Base):
    """A single-row counter, bumped by every control change; gateways poll it cheaply."""

    __tablename__ = "control_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


# --- the tables, typed for Core queries (``__table__`` is typed as a bare FromClause) ---

EVENTS = cast(Table, EventRow.__table__)
ROLLUP_MINUTE = cast(Table, RollupMinute.__table__)
PROVIDERS = cast(Table, ProviderRow.__table__)
TARGETS = cast(Table, TargetRow.__table__)
ROUTES = cast(Table, RouteRow.__table__)
BUDGETS = cast(Table, BudgetRow.__table__)
BUDGET_WARNINGS_FIRED = cast(Table, BudgetWarningFired.__table__)
BREAKER_OVERRIDES = cast(Table, BreakerOverrideRow.__table__)
BREAKER_TRANSITIONS = cast(Table, BreakerTransitionRow.__table__)
AUDIT_LOG = cast(Table, AuditRow.__table__)
CONTROL_VERSION = cast(Table, ControlVersion.__table__)


# --- ingest: quarantine, file positions, source configs, provider usage (migration 0002) ---


class QuarantineRow(Base):
    """A record a source could not read as an event, kept aside with its reason (never dropped).

    ``position`` is where it came from in the source's terms (``line 12 @ byte
    3456``); ``excerpt`` is bounded (``app.sources.base.EXCERPT_CHARS``) and
    printable: invalid UTF-8 and NUL are escaped.
    """

    __tablename__ = "quarantine"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String)
    position: Mapped[str] = mapped_column(String)
    reason: Mapped[str] = mapped_column(Text)
    excerpt: Mapped[str] = mapped_column(Text)
    ts: Mapped[float] = mapped_column(Float)
    #: Names the record within its source (a file's fingerprint and byte offset): re-reading a
    #: file quarantines each bad line once.  ``None``: no stable name; always kept.
    record_key: Mapped[str | None] = mapped_column(String)

    __table_args__ = (
        Index("ix_quarantine_source_ts", "source", "ts"),
        UniqueConstraint("source", "record_key"),
    )


class SourcePositionRow(Base):
    """How far a file source has read, committed in the same transaction as the events read.

    ``identity`` is the file's ``dev:inode`` (a rotated file is recognised by
    it, not by its path); ``fingerprint`` hashes the file's first bytes (up to
    256), which tells a truncated-and-rewritten file from the one we read.
    """

    __tablename__ = "source_positions"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String, unique=True)
    identity: Mapped[str] = mapped_column(String)
    offset: Mapped[int] = mapped_column(BigInteger)
    fingerprint: Mapped[str] = mapped_column(String, server_default="")
    updated_at: Mapped[float] = mapped_column(Float)


class SourceConfigRow(Base):
    """A configured log source: what ``controlroom collect`` and the sources page run."""

    __tablename__ = "sources"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    kind: Mapped[str] = mapped_column(String(32))  # jsonl | otlp | http_poll | usage_api
    settings: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    paused: Mapped[bool] = mapped_column(server_default=text("false"))
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ProviderUsageRow(Base):
    """A provider's own usage/cost figure for one time bucket and model (reconciliation).

    ``bucket_width`` is in seconds (60, 3600, 86400).  ``model`` is the empty
    string for a figure not broken down by model.  ``cost_usd`` is ``None``
    when the provider reported usage but no cost for the bucket.
    """

    __tablename__ = "provider_usage"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    provider: Mapped[str] = mapped_column(String)
    bucket_start: Mapped[float] = mapped_column(Float)
    bucket_width: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String, server_default="")
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    requests: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    fetched_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("provider", "bucket_start", "bucket_width", "model"),)


QUARANTINE = cast(Table, QuarantineRow.__table__)
SOURCE_POSITIONS = cast(Table, SourcePositionRow.__table__)
SOURCES = cast(Table, SourceConfigRow.__table__)
PROVIDER_USAGE = cast(Table, ProviderUsageRow.__table__)


# --- history tiers: cube rollups, per-user rollups, dirty blocks, outliers (migration 0003) ---

#: A tier dimension value meaning "every value" (the cube's roll-up of that dimension).
ALL = "*"

#: Seconds of the blocks that ``rollup_dirty`` marks (triggers on ``rollup_minute``).
DIRTY_BLOCK_S = 300


class _TierMeasures:
    """The measure columns of :class:`RollupMinute`, counts as 64-bit (a day of a cube adds up)."""

    n_requests: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_timeout: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_rate_limited: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_overloaded: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_server_error: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_client_error: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_connection_error: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_breaker_open: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_budget_blocked: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_guardrail_blocked: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_quality_fail: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_cache_hits: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    n_cost_unknown: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    input_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    output_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cache_read_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cache_write_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    cost_usd: Mapped[float] = mapped_column(Float, server_default=_ZERO)
    latency_n: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    latency_sum_ms: Mapped[float] = mapped_column(Float, server_default=_ZERO)
    latency_sketch: Mapped[bytes | None] = mapped_column(LargeBinary)
    ttft_n: Mapped[int] = mapped_column(BigInteger, server_default=_ZERO)
    ttft_sum_ms: Mapped[float] = mapped_column(Float, server_default=_ZERO)
    ttft_sketch: Mapped[bytes | None] = mapped_column(LargeBinary)


class RollupTier(_TierMeasures, Base):
    """History at a coarser grain (60, 300, 3600 or 86400 s), as a cube over the four dimensions.

    Each dimension is a value or :data:`ALL`, so "model gpt-4o on every route"
    is one row per bucket, not one per route and feature.  Built from
    ``rollup_minute`` by ``storage.queries.compaction``; read by
    ``storage.queries.series``.  The percentile columns are the row's own
    sketch's, so a chart at the tier's own step decodes no sketch.
    """

    __tablename__ = "rollup_tier"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    grain: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[float] = mapped_column(Float)
    provider: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    route: Mapped[str] = mapped_column(String)
    feature: Mapped[str] = mapped_column(String)
    latency_p50: Mapped[float | None] = mapped_column(Float)
    latency_p95: Mapped[float | None] = mapped_column(Float)
    latency_p99: Mapped[float | None] = mapped_column(Float)
    ttft_p50: Mapped[float | None] = mapped_column(Float)
    ttft_p95: Mapped[float | None] = mapped_column(Float)
    ttft_p99: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("grain", "provider", "model", "route", "feature", "bucket"),
        Index("ix_rollup_tier_grain_bucket", "grain", "bucket"),
    )


class RollupUser(_TierMeasures, Base):
    """The same figures per user and key (not a cube: users are unbounded), built from events."""

    __tablename__ = "rollup_user"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    grain: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[float] = mapped_column(Float)
    user: Mapped[str] = mapped_column(String)
    provider: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    route: Mapped[str] = mapped_column(String)
    feature: Mapped[str] = mapped_column(String)

    __table_args__ = (
        UniqueConstraint("grain", "user", "bucket", "provider", "model", "route", "feature"),
        Index("ix_rollup_user_grain_bucket", "grain", "bucket"),
    )


class RollupDirty(Base):
    """A 5-minute block whose minute rows changed since the tiers were built (grain 300, set by
    triggers on ``rollup_minute``), or a day whose day rows wait for a rebuild (grain 86400)."""

    __tablename__ = "rollup_dirty"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    grain: Mapped[int] = mapped_column(Integer)
    bucket: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("grain", "bucket"),)


class OutlierRow(Base):
    """A request far above its route's usual tokens or latency (kind ``tokens`` or ``latency``)."""

    __tablename__ = "outliers"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(32))
    ts: Mapped[float] = mapped_column(Float, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String)
    model: Mapped[str] = mapped_column(String)
    route: Mapped[str] = mapped_column(String)
    feature: Mapped[str] = mapped_column(String)
    user: Mapped[str | None] = mapped_column(String)
    value: Mapped[float] = mapped_column(Float)
    baseline: Mapped[float] = mapped_column(Float)
    ratio: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("event_id", "kind"),)


ROLLUP_TIER = cast(Table, RollupTier.__table__)
ROLLUP_USER = cast(Table, RollupUser.__table__)
ROLLUP_DIRTY = cast(Table, RollupDirty.__table__)
OUTLIERS = cast(Table, OutlierRow.__table__)


# --- prompt registry and A/B lab (migration 0004) ---------------------------------------


class PromptRow(Base):
    """A named prompt; ``active_version`` is what the gateway uses when a request names it."""

    __tablename__ = "prompts"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    description: Mapped[str] = mapped_column(Text, server_default="")
    active_version: Mapped[int | None] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class PromptVersionRow(Base):
    """One immutable version of a prompt: template with ``{{variables}}``, system prompt, parameters."""

    __tablename__ = "prompt_versions"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    prompt: Mapped[str] = mapped_column(
        String, ForeignKey("prompts.name", onupdate="CASCADE", ondelete="CASCADE")
    )
    version: Mapped[int] = mapped_column(Integer)
    template: Mapped[str] = mapped_column(Text)
    system: Mapped[str | None] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    note: Mapped[str] = mapped_column(Text, server_default="")
    author: Mapped[str] = mapped_column(String)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("prompt", "version"),)


class ExperimentRow(Base):
    """An experiment's definition: the parsed experiment file (config.md), as JSON."""

    __tablename__ = "experiments"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    revision: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class ExperimentRunRow(Base):
    """One run of an experiment, with a snapshot of the spec it ran."""

    __tablename__ = "experiment_runs"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String, unique=True)
    experiment: Mapped[str] = mapped_column(String, index=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON_TYPE)
    status: Mapped[str] = mapped_column(String(16))  # running | cancelled | done | failed
    total: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)


class ExperimentResultRow(Base):
    """One run x variant x case x repetition; its unique key makes a resumed run skip finished work."""

    __tablename__ = "experiment_results"

    id: Mapped[int] = mapped_column(ID_TYPE, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String)
    variant: Mapped[str] = mapped_column(String)
    case_index: Mapped[int] = mapped_column(Integer)
    repetition: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # ok | error
    output: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    input_tokens: Mapped[int | None] = mapped_column(Integer)
    output_tokens: Mapped[int | None] = mapped_column(Integer)
    cost_usd: Mapped[float | None] = mapped_column(Float)
    passed: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    checks: Mapped[list[Any]] = mapped_column(JSON_TYPE)  # [{type, passed, score, reason}]
    event_id: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("run_id", "variant", "case_index", "repetition"),)


PROMPTS = cast(Table, PromptRow.__table__)
PROMPT_VERSIONS = cast(Table, PromptVersionRow.__table__)
EXPERIMENTS = cast(Table, ExperimentRow.__table__)
EXPERIMENT_RUNS = cast(Table, ExperimentRunRow.__table__)
EXPERIMENT_RESULTS = cast(Table, ExperimentResultRow.__table__)
