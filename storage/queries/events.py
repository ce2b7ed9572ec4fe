"""Raw events: idempotent batch insert, and reads for paging in the UI.

The insert is the ingest hot path (architecture.md: one writer, in batches).
It compiles SQLAlchemy Core's ``INSERT ... ON CONFLICT (event_id) DO NOTHING``
once per dialect and hands the driver plain tuples through
``Connection.exec_driver_sql`` (one ``executemany``): going through Core's
per-row parameter processing costs about half the insert rate, ORM objects
about 50x (platform-notes.md).  Rows are built here, so JSON columns are
serialized here too, with a fast path for the usual string maps and lists.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, func, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from app.core.event import CacheHit, CostSource, Event, Failure
from storage.engine import transaction
from storage.models import EVENTS

#: Columns written by :func:`insert_events`, in the order of the row tuples.
EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "ts_start", "ts_end", "source", "provider", "model", "response_model", "route", "feature",
    "user", "tags", "prompt_name", "prompt_version", "stream", "status_code", "failure", "error_message",
    "attempts", "targets_tried", "latency_ms", "ttft_ms", "input_tokens", "output_tokens",
    "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "cost_source", "cache_hit",
    "breaker_state", "input_text", "output_text",
)  # fmt: skip

# Rows handed to the driver per executemany call: bounds memory for huge iterables.
_CHUNK = 10_000

_escape = json.encoder.encode_basestring  # the C string escaper behind json.dumps


@dataclass(frozen=True, slots=True)
class InsertResult:
    inserted: int
    duplicates: int  # already in the store (or repeated within the batch): skipped

    @property
    def total(self) -> int:
        return self.inserted + self.duplicates


# Encoded JSON of recently seen tag maps and target lists.  Traffic repeats a
# few shapes ({"team": "growth", "env": "prod"}, ["fast"]) and encoding is
# most of the cost of building a row.  Only all-string values are cached:
# their tuple keys cannot collide with non-strings that compare equal (1 == True).
_JSON_CACHE_MAX = 4096
_map_cache: dict[tuple[tuple[str, str], ...], str] = {}
_list_cache: dict[tuple[str, ...], str] = {}


def _json_dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _json_map(value: dict[str, str]) -> str:
    if not value:
        return "{}"
    try:
        key = tuple(value.items())
        text = _map_cache.get(key)
    except TypeError:  # an unhashable value: not a plain string map
        return _json_dumps(value)
    if text is None:
        try:
            text = "{" + ",".join([_escape(k) + ":" + _escape(v) for k, v in key]) + "}"
        except TypeError:  # not all strings: let json say what it can and cannot encode
            return _json_dumps(value)
        if len(_map_cache) >= _JSON_CACHE_MAX:
            _map_cache.clear()
        _map_cache[key] = text
    return text


def _json_list(value: list[str]) -> str:
    if not value:
        return "[]"
    try:
        key = tuple(value)
        text = _list_cache.get(key)
    except TypeError:
        return _json_dumps(value)
    if text is None:
        try:
            text = "[" + ",".join([_escape(v) for v in key]) + "]"
        except TypeError:
            return _json_dumps(value)
        if len(_list_cache) >= _JSON_CACHE_MAX:
            _list_cache.clear()
        _list_cache[key] = text
    return text


def _event_row(e: Event) -> tuple[Any, ...]:
    # Same order as EVENT_COLUMNS.  ``._value_`` is the enum's value without
    # the ``.value`` descriptor (4x cheaper on this path).
    return (
        e.event_id, e.ts_start, e.ts_end, e.source, e.provider, e.model, e.response_model, e.route, e.feature,
        e.user, _json_map(e.tags), e.prompt_name, e.prompt_version, e.stream, e.status_code,
        e.failure._value_, e.error_message, e.attempts, _json_list(e.targets_tried), e.latency_ms, e.ttft_ms,
        e.input_tokens, e.output_tokens, e.cache_read_tokens, e.cache_write_tokens, e.reasoning_tokens,
        e.cost_usd, e.cost_source._value_, e.cache_hit._value_, e.breaker_state, e.input_text, e.output_text,
    )  # fmt: skip


def _check_event(index: int, e: object) -> None:
    """Say which event of a batch is malformed, and how (only run once building rows failed)."""
    where = f"event #{index}"
    if not isinstance(e, Event):
        raise TypeError(f"{where}: expected an app.core.event.Event, got {type(e).__name__}")
    where = f"event #{index} ({e.event_id!r})"
    for name, enum in (("failure", Failure), ("cost_source", CostSource), ("cache_hit", CacheHit)):
        if not isinstance(getattr(e, name), enum):
            raise TypeError(f"{where}: {name} must be a {enum.__name__}, got {getattr(e, name)!r}")
    try:
        _event_row(e)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    try:
        return [_event_row(e) for e in events]
    except (AttributeError, TypeError, ValueError):
        for index, e in enumerate(events):
            _check_event(index, e)
        raise


@dataclass(frozen=True)
class _CompiledInsert:
    sql: str
    positional: bool


_compiled_inserts: dict[tuple[str, str], _CompiledInsert] = {}


def _compiled_insert(conn: Connection) -> _CompiledInsert:
    dialect = conn.dialect
    key = (dialect.name, dialect.paramstyle)
    cached = _compiled_inserts.get(key)
    if cached is None:
        if dialect.name == "postgresql":
            stmt: Any = postgresql.insert(EVENTS).on_conflict_do_nothing(index_elements=["event_id"])
        elif dialect.name == "sqlite":
            stmt = sqlite.insert(EVENTS).on_conflict_do_nothing(index_elements=["event_id"])
        else:  # pragma: no cover - normalize_store_url refuses other backends
            raise NotImplementedError(dialect.name)
        compiled = stmt.compile(dialect=dialect, column_keys=list(EVENT_COLUMNS))
        if compiled.positional:
            order = tuple(compiled.positiontup or ())
            assert order == EVENT_COLUMNS, f"compiled bind order {order} differs from EVENT_COLUMNS"
        cached = _CompiledInsert(compiled.string, compiled.positional)
        _compiled_inserts[key] = cached
    return cached


def _chunks(events: Iterable[Event]) -> Iterator[Sequence[Event]]:
    if isinstance(events, list | tuple):
        for start in range(0, len(events), _CHUNK):
            yield events[start : start + _CHUNK]
        return
    iterator = iter(events)
    while chunk := list(islice(iterator, _CHUNK)):
        yield chunk


def insert_events(bind: Engine | Connection, events: Iterable[Event]) -> InsertResult:
    """Insert events; an event whose ``event_id`` is already stored is skipped, not an error.

    Idempotent: replaying a batch inserts nothing twice.  Given an engine, the
    whole call is one transaction; given a connection, it joins the
    connection's transaction.  A malformed event raises ``TypeError`` or
    ``ValueError`` naming it, and nothing of the call is kept.
    """
    inserted = total = 0
    with transaction(bind, write=True) as conn:
        compiled = _compiled_insert(conn)
        for chunk in _chunks(events):
            rows = _rows(chunk)
            params: list[Any] = (
                rows if compiled.positional else [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in rows]
            )
            result = conn.exec_driver_sql(compiled.sql, params)
            # Both drivers sum rowcount over executemany; a skipped conflict counts 0.
            inserted += result.rowcount
            total += len(rows)
    return InsertResult(inserted=inserted, duplicates=total - inserted)


# --- reads -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventFilter:
    """What the events page filters by.  Every field set must match; ``None`` means any."""

    since: float | None = None  # ts_start >= since
    until: float | None = None  # ts_start < until
    source: str | None = None
    provider: str | None = None
    model: str | None = None
    route: str | None = None
    feature: str | None = None
    user: str | None = None
    failures: tuple[Failure, ...] = ()  # any of these
    only_failures: bool = False  # failure other than ``none``

    def conditions(self) -> list[ColumnElement[bool]]:
        c = EVENTS.c
        out: list[ColumnElement[bool]] = []
        if self.since is not None:
            out.append(c.ts_start >= self.since)
        if self.until is not None:
            out.append(c.ts_start < self.until)
        for name in ("source", "provider", "model", "route", "feature", "user"):
            value = getattr(self, name)
            if value is not None:
                out.append(c[name] == value)
        if self.failures:
            out.append(c.failure.in_([Failure(f).value for f in self.failures]))
        if self.only_failures:
            out.append(c.failure != Failure.NONE.value)
        return out


@dataclass(frozen=True, slots=True)
class EventCursor:
    """Where a page ended: the last row's ``(ts_start, id)``.  Pages stay stable while events arrive."""

    ts_start: float
    id: int


@dataclass(frozen=True, slots=True)
class EventPage:
    events: list[Event]
    next_cursor: EventCursor | None  # None: this was the last page


_READ_COLUMNS = [EVENTS.c.id, *(EVENTS.c[name] for name in EVENT_COLUMNS)]


def _to_event(row: Any) -> Event:
    values = dict(zip(EVENT_COLUMNS, row[1:], strict=True))
    values["failure"] = Failure(values["failure"])
    values["cost_source"] = CostSource(values["cost_source"])
    values["cache_hit"] = CacheHit(values["cache_hit"])
    values["stream"] = bool(values["stream"])
    return Event(**values)


def _filtered(stmt: Select[Any], filters: EventFilter | None) -> Select[Any]:
    conditions = filters.conditions() if filters is not None else []
    return stmt.where(and_(*conditions)) if conditions else stmt


def count_events(bind: Engine | Connection, filters: EventFilter | None = None) -> int:
    with transaction(bind) as conn:
        return int(conn.execute(_filtered(select(func.count()).select_from(EVENTS), filters)).scalar_one())


def get_event(bind: Engine | Connection, event_id: str) -> Event | None:
    with transaction(bind) as conn:
        row = conn.execute(select(*_READ_COLUMNS).where(EVENTS.c.event_id == event_id)).first()
    return _to_event(row) if row is not None else None


def fetch_events(
    bind: Engine | Connection,
    filters: EventFilter | None = None,
    *,
    limit: int = 100,
    after: EventCursor | None = None,
    offset: int = 0,
    newest_first: bool = True,
) -> EventPage:
    """One page of events in time order (``ts_start``, then insert order).

    Page with ``after=page.next_cursor`` (keyset: cheap at any depth, stable
    while events arrive); ``offset`` is there for small jumps only.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    if offset < 0:
        raise ValueError("offset must not be negative")
    c = EVENTS.c
    stmt = _filtered(select(*_READ_COLUMNS), filters)
    if after is not None:
        key = tuple_(c.ts_start, c.id)
        bound = tuple_(literal(after.ts_start), literal(after.id))
        stmt = stmt.where(key < bound if newest_first else key > bound)
    if newest_first:
        stmt = stmt.order_by(c.ts_start.desc(), c.id.desc())
    else:
        stmt = stmt.order_by(c.ts_start.asc(), c.id.asc())
    # One extra row says whether another page exists.
    stmt = stmt.limit(limit + 1).offset(offset)
    with transaction(bind) as conn:
        rows = conn.execute(stmt).all()
    more = len(rows) > limit
    rows = rows[:limit]
    events = [_to_event(r) for r in rows]
    cursor = EventCursor(ts_start=rows[-1].ts_start, id=rows[-1].id) if more and rows else None
    return EventPage(events=events, next_cursor=cursor)


def delete_events_before(bind: Engine | Connection, ts: float) -> int:
    """Drop raw events that started before ``ts`` (retention); rollups keep the history."""
    with transaction(bind, write=True) as conn:
        return int(conn.execute(EVENTS.delete().where(EVENTS.c.ts_start < ts)).rowcount)


__all__ = [
    "EVENT_COLUMNS",
    "EventCursor",
    "EventFilter",
    "EventPage",
    "InsertResult",
    "count_events",
    "delete_events_before",
    "fetch_events",
    "get_event",
    "insert_events",
]
