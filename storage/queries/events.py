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
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import chain, islice
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Engine, Select, and_, func, literal, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.elements import ColumnElement

from app.core.event import EVENT_FIELDS, CacheHit, CostSource, Event, Failure
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
_SQLITE_LIMIT_VARIABLE_NUMBER = getattr(sqlite3, "SQLITE_LIMIT_VARIABLE_NUMBER", 9)


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


def json_string_map(value: object) -> str | None:
    """Compact JSON of a map of strings (the ``tags`` column), or ``None`` when it is not one."""
    if type(value) is not dict:
        return None
    if not value:
        return "{}"
    try:
        key = tuple(value.items())
        text = _map_cache.get(key)
    except TypeError:  # an unhashable value: not a plain string map
        return None
    if text is None:
        if not all(type(v) is str for v in value.values()) or not all(type(k) is str for k in value):
            return None
        text = "{" + ",".join([_escape(k) + ":" + _escape(v) for k, v in key]) + "}"
        if len(_map_cache) >= _JSON_CACHE_MAX:
            _map_cache.clear()
        _map_cache[key] = text
    return text


def json_string_list(value: object) -> str | None:
    """Compact JSON of a list of strings (the ``targets_tried`` column), or ``None`` when it is not one."""
    if type(value) is not list:
        return None
    if not value:
        return "[]"
    try:
        key = tuple(value)
        text = _list_cache.get(key)
    except TypeError:
        return None
    if text is None:
        if not all(type(v) is str for v in key):
            return None
        text = "[" + ",".join([_escape(v) for v in key]) + "]"
        if len(_list_cache) >= _JSON_CACHE_MAX:
            _list_cache.clear()
        _list_cache[key] = text
    return text


def _json_map(value: dict[str, str]) -> str:
    text = json_string_map(value)
    return text if text is not None else _json_dumps(value)  # json says what it can and cannot encode


def _json_list(value: list[str]) -> str:
    text = json_string_list(value)
    return text if text is not None else _json_dumps(value)


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


# Rows per statement on SQLite: one ``INSERT ... VALUES (...), (...), ...`` of up to this many
# rows beats ``executemany`` by about a fifth, measured (tests/bench/test_bench_insert.py): one
# statement step per few hundred rows instead of one per row.  Bounded by the build's limit on
# bound parameters (32,766 since SQLite 3.32; 999 before).
_SQLITE_ROWS_PER_STATEMENT = 500
_multi_row_sql: dict[int, str] = {}


def _sqlite_rows_per_statement(dbapi_conn: Any) -> int:
    getlimit = getattr(dbapi_conn, "getlimit", None)  # Python 3.11+
    limit = getlimit(_SQLITE_LIMIT_VARIABLE_NUMBER) if getlimit is not None else 999
    return max(1, min(_SQLITE_ROWS_PER_STATEMENT, limit // len(EVENT_COLUMNS)))


def _sqlite_multi_row_sql(conn: Connection, n: int) -> str:
    sql = _multi_row_sql.get(n)
    if sql is None:
        quote = conn.dialect.identifier_preparer.quote
        columns = ", ".join(quote(c) for c in EVENT_COLUMNS)
        one = "(" + ",".join("?" * len(EVENT_COLUMNS)) + ")"
        sql = (
            f"INSERT INTO {quote(EVENTS.name)} ({columns}) VALUES {','.join([one] * n)} "
            "ON CONFLICT (event_id) DO NOTHING"
        )
        if len(_multi_row_sql) > 64:  # only the full size and a few tails are ever reused
            _multi_row_sql.clear()
        _multi_row_sql[n] = sql
    return sql


def _insert_rows_sqlite(conn: Connection, rows: Sequence[Sequence[Any]]) -> int:
    """Multi-row inserts straight on the sqlite3 connection, inside ``conn``'s transaction.

    SQLAlchemy's ``exec_driver_sql`` costs a quarter of the insert rate on this
    path (it inspects every parameter set); the DBAPI connection is the one the
    transaction runs on, so the statements join it.  Driver errors are wrapped
    as SQLAlchemy would wrap them, so callers see one kind of exception.
    """
    dbapi_conn: Any = conn.connection.driver_connection
    step = _sqlite_rows_per_statement(dbapi_conn)
    flatten = chain.from_iterable
    inserted = 0
    cursor = dbapi_conn.cursor()
    sql = ""
    try:
        for start in range(0, len(rows), step):
            part = rows[start : start + step]
            sql = _sqlite_multi_row_sql(conn, len(part))
            cursor.execute(sql, tuple(flatten(part)))
            inserted += cursor.rowcount
    except Exception as exc:
        dbapi = conn.dialect.loaded_dbapi
        if isinstance(exc, dbapi.Error):
            raise DBAPIError.instance(
                sql, None, exc, dbapi.Error, hide_parameters=True, dialect=conn.dialect
            ) from exc
        raise
    finally:
        cursor.close()
    return inserted


def insert_rows(bind: Engine | Connection, rows: Sequence[Sequence[Any]]) -> InsertResult:
    """Insert rows already in :data:`EVENT_COLUMNS` order (JSON columns as text, enums as values).

    The ingest hot path: a JSONL reader builds these rows straight from the
    decoded lines, without :class:`Event` objects.  Idempotent on
    ``event_id`` like :func:`insert_events`; the rows' ids must be unique
    within the call for the counts to be right.  A row the store cannot take
    raises (a SQLAlchemy error) and, given an engine, nothing of the call is kept.
    """
    if not rows:
        return InsertResult(0, 0)
    with transaction(bind, write=True) as conn:
        if conn.dialect.name == "sqlite":
            inserted = _insert_rows_sqlite(conn, rows)
        else:
            compiled = _compiled_insert(conn)
            inserted = 0
            for start in range(0, len(rows), _CHUNK):
                chunk = rows[start : start + _CHUNK]
                params: list[Any] = (
                    list(chunk)
                    if compiled.positional
                    else [dict(zip(EVENT_COLUMNS, r, strict=True)) for r in chunk]
                )
                # psycopg sums rowcount over executemany; a skipped conflict counts 0.
                inserted += conn.exec_driver_sql(compiled.sql, params).rowcount
    return InsertResult(inserted=inserted, duplicates=len(rows) - inserted)


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
        for chunk in _chunks(events):
            rows = _rows(chunk)
            inserted += insert_rows(conn, rows).inserted
            total += len(rows)
    return InsertResult(inserted=inserted, duplicates=total - inserted)


def event_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """The rows :func:`insert_rows` takes, built from events; a malformed event raises, naming it."""
    return _rows(events)


_tags_of_text: dict[str, dict[str, str]] = {}
_targets_of_text: dict[str, list[str]] = {}
# A row's values in Event's field order (Event(*values) is the cheapest way to build one).
_FIELDS_OF_ROW = itemgetter(*(EVENT_COLUMNS.index(f) for f in EVENT_FIELDS))
_F = {name: i for i, name in enumerate(EVENT_FIELDS)}
_F_TAGS, _F_TARGETS, _F_STREAM = _F["tags"], _F["targets_tried"], _F["stream"]
_F_FAILURE, _F_COST_SOURCE, _F_CACHE_HIT = _F["failure"], _F["cost_source"], _F["cache_hit"]
_FAILURE_OF = {f.value: f for f in Failure}
_COST_SOURCE_OF = {c.value: c for c in CostSource}
_CACHE_HIT_OF = {c.value: c for c in CacheHit}


def _parsed_json(cache: dict[str, Any], text: str) -> Any:
    value = cache.get(text)
    if value is None:
        value = json.loads(text)
        if len(cache) >= _JSON_CACHE_MAX:
            cache.clear()
        cache[text] = value
    return value


def event_from_row(row: Sequence[Any]) -> Event:
    """The :class:`Event` a row in :data:`EVENT_COLUMNS` order stands for (the inverse of building it)."""
    values = list(_FIELDS_OF_ROW(row))
    values[_F_FAILURE] = _FAILURE_OF[values[_F_FAILURE]]
    values[_F_COST_SOURCE] = _COST_SOURCE_OF[values[_F_COST_SOURCE]]
    values[_F_CACHE_HIT] = _CACHE_HIT_OF[values[_F_CACHE_HIT]]
    values[_F_STREAM] = bool(values[_F_STREAM])
    tags, targets = values[_F_TAGS], values[_F_TARGETS]
    if isinstance(tags, str):
        values[_F_TAGS] = dict(_parsed_json(_tags_of_text, tags))  # each event owns its dict
    if isinstance(targets, str):
        values[_F_TARGETS] = list(_parsed_json(_targets_of_text, targets))
    return Event(*values)


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
    prompt_name: str | None = None
    prompt_version: int | None = None  # with ``prompt_name``: that version; alone: any prompt's version
    failures: tuple[Failure, ...] = ()  # any of these
    only_failures: bool = False  # failure other than ``none``

    def conditions(self) -> list[ColumnElement[bool]]:
        c = EVENTS.c
        out: list[ColumnElement[bool]] = []
        if self.since is not None:
            out.append(c.ts_start >= self.since)
        if self.until is not None:
            out.append(c.ts_start < self.until)
        for name in _EQUAL_FIELDS:
            value = getattr(self, name)
            if value is not None:
                out.append(c[name] == value)
        if self.failures:
            out.append(c.failure.in_([Failure(f).value for f in self.failures]))
        if self.only_failures:
            out.append(c.failure != Failure.NONE.value)
        return out


_EQUAL_FIELDS = ("source", "provider", "model", "route", "feature", "user", "prompt_name", "prompt_version")


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
    "event_from_row",
    "event_rows",
    "fetch_events",
    "get_event",
    "insert_events",
    "insert_rows",
    "json_string_list",
    "json_string_map",
]
