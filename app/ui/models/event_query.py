"""What the events table asks the store: one filter, a search, one sort, read in keyset pages.

Time order walks the ``(ts_start, id)`` index, so any depth is cheap.  Other
orders (most tokens, slowest, ...) page by ``(value, id)``: each page is one
top-N sort over the filtered rows, which SQLite does in one pass without
holding the table in memory; never ``OFFSET``, so page 2,000 costs what page 2
costs.  Rows carry only what the table shows; the detail panel reads the whole
event (``storage.queries.events.get_event``) when it opens.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import ColumnElement, Engine, String, and_, func, literal, or_, select, tuple_, type_coerce

from app.core.event import Failure
from app.sources.live import prompt_key, split_prompt
from storage.engine import transaction
from storage.models import EVENTS
from storage.queries.events import EventFilter

c = EVENTS.c

#: Sort keys and the SQL value they order by.  NULLs sort as the lowest value so keyset paging stays total.
SORT_EXPRESSIONS: dict[str, Any] = {
    "time": c.ts_start,
    "provider": c.provider,
    "model": c.model,
    "route": func.coalesce(c.route, ""),
    "feature": func.coalesce(c.feature, ""),
    "user": func.coalesce(c.user, ""),
    "status": func.coalesce(c.status_code, 0),
    "failure": c.failure,
    "latency": func.coalesce(c.latency_ms, -1.0),
    "ttft": func.coalesce(c.ttft_ms, -1.0),
    "tokens": c.input_tokens + c.output_tokens,
    "cost": func.coalesce(c.cost_usd, -1.0),
    "attempts": c.attempts,
    "prompt": func.coalesce(c.prompt_name, ""),
}
SORT_KEYS: tuple[str, ...] = tuple(SORT_EXPRESSIONS)

#: ``field:value`` words of the search box and the column each one matches exactly.
SEARCH_FIELDS: dict[str, Any] = {
    "provider": c.provider,
    "model": c.model,
    "route": c.route,
    "feature": c.feature,
    "user": c.user,
    "source": c.source,
    "failure": c.failure,
    "status": c.status_code,
    "id": c.event_id,
    "target": c.targets_tried,
    "prompt": c.prompt_name,  # prompt:NAME (every version) or prompt:NAME@VERSION
}

#: Plain words match any of these (case-insensitive substring).
_TEXT_COLUMNS = (c.event_id, c.provider, c.model, c.route, c.feature, c.user, c.error_message)


class SearchError(ValueError):
    """The search box holds something we cannot run; the message says how to fix it."""


@dataclass(frozen=True, slots=True)
class EventRow:
    """One line of the table: the columns shown, not the stored text."""

    id: int
    event_id: str
    ts_start: float
    source: str
    provider: str
    model: str
    route: str | None
    feature: str | None
    user: str | None
    status_code: int | None
    failure: Failure
    error_message: str | None
    attempts: int
    latency_ms: float | None
    ttft_ms: float | None
    input_tokens: int
    output_tokens: int
    cost_usd: float | None
    cache_hit: str
    prompt_name: str | None = None
    prompt_version: int | None = None
    sort_value: Any = field(compare=False, default=None)

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    @property
    def prompt(self) -> str | None:
        """``name@version`` (``name`` for a label without a version), or ``None``."""
        return prompt_key(self.prompt_name, self.prompt_version) or None


_ROW_COLUMNS = [
    c.id, c.event_id, c.ts_start, c.source, c.provider, c.model, c.route, c.feature, c.user,
    c.status_code, c.failure, c.error_message, c.attempts, c.latency_ms, c.ttft_ms,
    c.input_tokens, c.output_tokens, c.cost_usd, c.cache_hit, c.prompt_name, c.prompt_version,
]  # fmt: skip


@dataclass(frozen=True, slots=True)
class RowCursor:
    """Where a page ended: the last row's sort value and id."""

    value: Any
    id: int


@dataclass(frozen=True, slots=True)
class RowPage:
    rows: list[EventRow]
    next_cursor: RowCursor | None  # None: nothing after this page


@dataclass(frozen=True, slots=True)
class EventQuery:
    """Everything that decides which rows the table shows, and in what order."""

    filters: EventFilter = field(default_factory=EventFilter)
    search: str = ""
    sort: str = "time"
    descending: bool = True

    def __post_init__(self) -> None:
        if self.sort not in SORT_EXPRESSIONS:
            raise ValueError(f"unknown sort key {self.sort!r}; one of {', '.join(SORT_KEYS)}")


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def search_conditions(search: str) -> list[ColumnElement[bool]]:
    """``provider:openai failure:timeout slow words`` -> SQL conditions (all must hold)."""
    try:
        words = shlex.split(search)
    except ValueError as exc:
        raise SearchError(f"search: {exc} (close the quote)") from exc
    out: list[ColumnElement[bool]] = []
    for word in words:
        name, sep, value = word.partition(":")
        if sep and name.lower() in SEARCH_FIELDS:
            out.append(_field_condition(name.lower(), value))
        elif sep and name and name.isidentifier() and not value.startswith("//"):
            raise SearchError(
                f"search: unknown field {name!r}; use one of {', '.join(SEARCH_FIELDS)} "
                f'or quote the words ("{word}")'
            )
        else:
            pattern = _like(word.lower())
            out.append(or_(*(func.lower(col).like(pattern, escape="\\") for col in _TEXT_COLUMNS)))
    return out


def _field_condition(name: str, value: str) -> ColumnElement[bool]:
    if not value:
        raise SearchError(f"search: {name}: needs a value, e.g. {name}:{_EXAMPLES[name]}")
    column = SEARCH_FIELDS[name]
    if name == "failure":
        try:
            return column == Failure(value.lower()).value  # type: ignore[no-any-return]
        except ValueError:
            raise SearchError(
                f"search: failure:{value} is not a failure type; one of {', '.join(f.value for f in Failure)}"
            ) from None
    if name == "status":
        if not value.isdigit():
            raise SearchError(f"search: status:{value} must be an HTTP status number, e.g. status:429")
        return column == int(value)  # type: ignore[no-any-return]
    if name == "target":
        # targets_tried is a JSON list of names: match the quoted name inside it.
        # type_coerce: compare the stored text, not a JSON-encoded pattern.
        return type_coerce(column, String).like(_like(f'"{value}"'), escape="\\")
    if name == "prompt":
        prompt, version = split_prompt(value)
        if version is None:
            return column == prompt  # type: ignore[no-any-return]
        return and_(column == prompt, c.prompt_version == version)
    return column == value  # type: ignore[no-any-return]


_EXAMPLES = {
    "provider": "openai",
    "model": "gpt-4o-mini",
    "route": "default",
    "feature": "search",
    "user": "ana",
    "source": "gateway",
    "failure": "timeout",
    "status": "429",
    "id": "0192…",
    "target": "fast",
    "prompt": "ticket-summary@2",
}


def _conditions(query: EventQuery) -> list[ColumnElement[bool]]:
    return [*query.filters.conditions(), *search_conditions(query.search)]


def fetch_rows(
    engine: Engine, query: EventQuery, after: RowCursor | None = None, limit: int = 500
) -> RowPage:
    """One page of table rows in the query's order, after ``after`` (keyset)."""
    if limit <= 0:
        raise ValueError("limit must be positive")
    conditions = _conditions(query)
    key = SORT_EXPRESSIONS[query.sort]
    # Time order pages by (ts_start, id): exactly the index.  Others by (value, id).
    stmt = select(*_ROW_COLUMNS, key.label("sort_value"))
    if conditions:
        stmt = stmt.where(and_(*conditions))
    if after is not None:
        pair = tuple_(key, c.id)
        bound = tuple_(literal(after.value), literal(after.id))
        stmt = stmt.where(pair < bound if query.descending else pair > bound)
    if query.descending:
        stmt = stmt.order_by(key.desc(), c.id.desc())
    else:
        stmt = stmt.order_by(key.asc(), c.id.asc())
    stmt = stmt.limit(limit + 1)
    with transaction(engine) as conn:
        result = conn.execute(stmt).all()
    more = len(result) > limit
    rows = [_to_row(r) for r in result[:limit]]
    cursor = RowCursor(rows[-1].sort_value, rows[-1].id) if more and rows else None
    return RowPage(rows, cursor)


def _to_row(r: Any) -> EventRow:
    values = list(r)
    values[10] = Failure(values[10])
    return EventRow(*values)


def count_rows(engine: Engine, query: EventQuery) -> int:
    """How many events match (the sort does not matter)."""
    conditions = _conditions(query)
    stmt = select(func.count()).select_from(EVENTS)
    if conditions:
        stmt = stmt.where(and_(*conditions))
    with transaction(engine) as conn:
        return int(conn.execute(stmt).scalar_one())


@dataclass(frozen=True, slots=True)
class Preset:
    """A one-click question about outliers: which sort, which failures."""

    key: str
    title: str
    tooltip: str
    sort: str = "time"
    only_failures: bool = False

    def query(self, filters: EventFilter, failure: Failure | None = None, search: str = "") -> EventQuery:
        """The query of this preset within ``filters`` (the shared filter bar); ``failure`` narrows "failed"."""
        if self.only_failures:
            filters = replace(
                filters,
                failures=(failure,) if failure is not None else filters.failures,
                only_failures=True,
            )
        return EventQuery(filters=filters, search=search, sort=self.sort, descending=True)


PRESETS: tuple[Preset, ...] = (
    Preset("newest", "Newest", "Every event, the newest first"),
    Preset("tokens", "Most tokens", "The biggest requests first (input + output tokens)", sort="tokens"),
    Preset("slowest", "Slowest", "The slowest requests first (total latency)", sort="latency"),
    Preset(
        "failed",
        "Failed",
        "Failed requests, the newest first; pick a failure type to narrow",
        only_failures=True,
    ),
)


def preset(key: str) -> Preset:
    for p in PRESETS:
        if p.key == key:
            return p
    raise KeyError(f"no preset {key!r}; one of {', '.join(p.key for p in PRESETS)}")


__all__ = [
    "PRESETS",
    "SEARCH_FIELDS",
    "SORT_KEYS",
    "EventQuery",
    "EventRow",
    "Preset",
    "RowCursor",
    "RowPage",
    "SearchError",
    "count_rows",
    "fetch_rows",
    "preset",
    "search_conditions",
]
