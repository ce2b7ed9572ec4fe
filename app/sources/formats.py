"""Record formats: one JSON line (or one decoded OTLP request) in, events and rejections out.

Three families:

- ``event``: our own JSONL event format (:meth:`app.core.event.Event.to_json`),
  every field of semantics.md section 9.  Only ``ts_start`` is required.
- ``otlp``: OpenTelemetry GenAI spans.  One JSON line of the Collector's file
  exporter is one OTLP ``ExportTraceServiceRequest`` (wire-formats.md).
  :func:`otlp_request_to_events` is also what the OTLP/HTTP receiver uses,
  for JSON bodies and for protobuf bodies decoded to the same dict shape
  (``google.protobuf.json_format.MessageToDict``).
- field mappings: any other JSON log, read through a :class:`FieldMapping`
  (event field -> JSON path, with unit conversion), given as a file or as a
  built-in preset (:data:`PRESETS`: ``litellm``, ``openai-response``), so an
  operator reads an existing service's log without writing code.

A record that cannot be read raises :class:`RecordError` inside a format; the
line readers turn it into a :class:`~app.sources.base.Rejected` with a reason
whose category (before the colon) is one of :data:`REASONS`.

Ids: a record with an id of its own keeps it when it already is one of ours
(32 hex digits), else gets ``derived_event_id(ts, "<kind>:<id>")``; a record
without one gets ``derived_event_id(ts, key)`` with the caller's position key
(file fingerprint + byte offset), so re-reading the same file is idempotent.
An OTLP span's id is derived from its trace and span ids, so the same span
seen by the receiver and in a file is stored once.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from itertools import compress, repeat
from pathlib import Path
from typing import Any

from app.core.event import EVENT_FIELDS, CacheHit, CostSource, Event, Failure, classify_status
from app.core.ids import derived_event_id
from app.core.pricing import price_call
from app.sources.base import Rejected
from storage.queries.events import EVENT_COLUMNS, event_rows, json_string_list, json_string_map
from storage.queries.events import _list_cache as _LIST_TEXT
from storage.queries.events import _map_cache as _MAP_TEXT

#: Reason categories a format or line reader gives (the text before the colon of a reason).
REASONS: tuple[str, ...] = (
    "invalid UTF-8",
    "NUL character",
    "invalid JSON",
    "not an object",
    "missing field",
    "wrong type",
    "bad value",
    "line too long",
    "truncated line",
    "store refused",
)

_HEX32 = re.compile(r"[0-9a-f]{32}")


class RecordError(ValueError):
    """A record that is not an event: ``category`` is one of :data:`REASONS`."""

    def __init__(self, category: str, detail: str) -> None:
        super().__init__(f"{category}: {detail}")
        self.category = category
        self.detail = detail

    @property
    def reason(self) -> str:
        return f"{self.category}: {self.detail}"


@dataclass(slots=True)
class Parsed:
    """What a format made of some records."""

    events: list[Event] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    skipped: int = 0  # records that are fine but not LLM calls (an HTTP span, a metrics line)
    #: With a list here, a format that can (``EventFormat.parse_rows``) puts the store's rows
    #: (``storage.queries.events.EVENT_COLUMNS`` order) here instead of events into ``events``.
    rows: list[tuple[Any, ...]] | None = None


# --- JSON decoding, shared by the line formats ---------------------------------------------

_loads = json.loads

try:  # orjson parses a line 2-4x faster than json (measured in tests/bench); optional
    import orjson

    _fast_loads: Callable[[bytes], Any] | None = orjson.loads
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None


def decode_line(line: bytes) -> Any:
    """Bytes of one line to a JSON value, or :class:`RecordError` saying what is wrong.

    A NUL (raw or escaped) and a lone surrogate escape are refused here: no
    store can keep them in text.
    """
    if _fast_loads is not None:
        try:
            value = _fast_loads(line)  # strict: refuses invalid UTF-8 and lone surrogates
        except ValueError:
            pass  # the stdlib path below says exactly what is wrong
        else:
            if b"\\u0000" in line:
                raise RecordError("NUL character", "an escaped NUL (\\u0000) in a string")
            return value
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError("invalid UTF-8", f"byte {exc.start}: {exc.reason}") from None
    if "\x00" in text:
        raise RecordError("NUL character", f"raw NUL at character {text.index(chr(0))}")
    try:
        value = _loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError("invalid JSON", f"{exc.msg} (character {exc.pos})") from None
    except RecursionError:
        raise RecordError("invalid JSON", "nested too deeply") from None
    except ValueError as exc:  # an integer of more than 4,300 digits (int_max_str_digits)
        raise RecordError("invalid JSON", str(exc).split(";")[0]) from None
    if "\\u" in text:
        _check_escapes(text, value)
    return value


def _check_escapes(text: str, value: Any) -> None:
    # An escaped NUL or a lone surrogate cannot be stored (PostgreSQL text, UTF-8); find them here
    # rather than by the store refusing a whole batch.
    lowered = text.lower()
    if "\\u0000" in lowered:
        raise RecordError("NUL character", "an escaped NUL (\\u0000) in a string")
    if "\\ud" in lowered:
        try:
            json.dumps(value, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError("invalid UTF-8", "a lone surrogate escape in a string") from None


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RecordError("wrong type", f"{name} must be a number, got {type(value).__name__}")
    f = float(value)
    if not math.isfinite(f):
        raise RecordError("bad value", f"{name} must be finite")
    return f


# --- our own event format ---------------------------------------------------------------

_FAILURES = {f.value: f for f in Failure}
_COST_SOURCES = {c.value: c for c in CostSource}
_CACHE_HITS = {c.value: c for c in CacheHit}
_STR_FIELDS = (
    "source", "provider", "model", "response_model", "route", "feature", "user", "prompt_name",
    "error_message", "breaker_state", "input_text", "output_text",
)  # fmt: skip
_REQUIRED_STR = frozenset({"source", "provider", "model"})
_INT_FIELDS = (
    "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens",
)  # fmt: skip
_TEXT_LIMIT = 1 << 20  # a sanitized text field longer than this is cut (the row stays readable)
_MAX_TOKENS = 1 << 53
_MAX_INT32 = 1 << 31


# The fast path of event_from_dict: a record that has every field (what Event.to_json writes)
# is read positionally, its types checked in one go against what each field accepts as is.
_GET_ALL = operator.itemgetter(*EVENT_FIELDS)
_NUM: frozenset[type] = frozenset({int, float})
_OPT_NUM: frozenset[type] = frozenset({int, float, type(None)})
_OPT_STR: frozenset[type] = frozenset({str, type(None)})
_STR: frozenset[type] = frozenset({str})
_INT: frozenset[type] = frozenset({int})
_OPT_INT: frozenset[type] = frozenset({int, type(None)})
_ACCEPTS: dict[str, frozenset[type]] = {
    "ts_start": _NUM, "ts_end": _NUM, "source": _OPT_STR, "provider": _STR, "model": _STR,
    "event_id": _OPT_STR, "response_model": _OPT_STR, "route": _OPT_STR, "feature": _OPT_STR,
    "user": _OPT_STR, "tags": frozenset({dict}), "prompt_name": _OPT_STR, "prompt_version": _OPT_INT,
    "stream": frozenset({bool}), "status_code": _OPT_INT, "failure": _STR, "error_message": _OPT_STR,
    "attempts": _INT, "targets_tried": frozenset({list}), "latency_ms": _OPT_NUM, "ttft_ms": _OPT_NUM,
    "input_tokens": _INT, "output_tokens": _INT, "cache_read_tokens": _INT, "cache_write_tokens": _INT,
    "reasoning_tokens": _INT, "cost_usd": _OPT_NUM, "cost_source": _STR, "cache_hit": _STR,
    "breaker_state": _OPT_STR, "input_text": _OPT_STR, "output_text": _OPT_STR,
}  # fmt: skip
assert tuple(_ACCEPTS) == EVENT_FIELDS, "every event field needs an entry, in Event's order"
_ACCEPTS_SEQ = tuple(_ACCEPTS.values())
_FAST_SIGNATURES: set[tuple[type, ...]] = set()
_I = {name: i for i, name in enumerate(EVENT_FIELDS)}
_I_SOURCE, _I_EVENT_ID, _I_FAILURE = _I["source"], _I["event_id"], _I["failure"]
_I_COST_SOURCE, _I_CACHE_HIT = _I["cost_source"], _I["cache_hit"]
_isfinite = math.isfinite


def event_from_dict(d: Mapping[str, Any], *, key: str, source: str | None = None) -> Event:
    """Our own event format (a dict from :meth:`Event.to_dict`) to an :class:`Event`, checked.

    ``key`` gives the record a stable id when it carries none; ``source``, when
    given, is used if the record names none.  Unknown fields are ignored.
    Raises :class:`RecordError`.
    """
    try:
        values = list(_GET_ALL(d))
    except KeyError:
        return _event_from_dict_checked(d, key=key, source=source)
    sig = tuple(map(type, values))
    if sig not in _FAST_SIGNATURES:
        if not all(t in ok for t, ok in zip(sig, _ACCEPTS_SEQ, strict=True)) or len(_FAST_SIGNATURES) > 4096:
            return _event_from_dict_checked(d, key=key, source=source)
        _FAST_SIGNATURES.add(sig)
    (ts_start, ts_end, src, _provider, _model, event_id, _rm, _route, _feature, _user, tags, _pn,
     prompt_version, _stream, status, failure, error_message, attempts, targets, latency, ttft,
     i1, i2, i3, i4, i5, cost, cost_source, cache_hit, _bs, input_text, output_text) = values  # fmt: skip
    if (
        not (_isfinite(ts_start) and _isfinite(ts_end))
        or (latency is not None and not (latency >= 0 and _isfinite(latency)))
        or (ttft is not None and not (ttft >= 0 and _isfinite(ttft)))
        or (cost is not None and not _isfinite(cost))
        or min(i1, i2, i3, i4, i5) < 0
        or max(i1, i2, i3, i4, i5) > _MAX_TOKENS
        or (status is not None and not 0 <= status < 1000)
        or attempts < 0
        or (prompt_version is not None and abs(prompt_version) > _MAX_INT32)
        or (tags and not all(type(v) is str for v in tags.values()))
        or (targets and not all(type(v) is str for v in targets))
        or (input_text is not None and len(input_text) > _TEXT_LIMIT)
        or (output_text is not None and len(output_text) > _TEXT_LIMIT)
        or (error_message is not None and len(error_message) > _TEXT_LIMIT)
    ):
        return _event_from_dict_checked(d, key=key, source=source)  # says exactly what is wrong
    f = _FAILURES.get(failure)
    cs = _COST_SOURCES.get(cost_source)
    ch = _CACHE_HITS.get(cache_hit)
    if f is None or cs is None or ch is None:
        return _event_from_dict_checked(d, key=key, source=source)
    values[_I_FAILURE], values[_I_COST_SOURCE], values[_I_CACHE_HIT] = f, cs, ch
    if event_id is None:
        values[_I_EVENT_ID] = derived_event_id(ts_start, key)
    elif len(event_id) != 32 or not _HEX32.fullmatch(event_id):
        if not event_id:
            raise RecordError("wrong type", "event_id must be a non-empty string")
        values[_I_EVENT_ID] = derived_event_id(ts_start, "id:" + event_id)
    if not src:
        values[_I_SOURCE] = source or "jsonl"
    return Event(*values)


def _event_from_dict_checked(d: Mapping[str, Any], *, key: str, source: str | None = None) -> Event:
    """The field-by-field path of :func:`event_from_dict`: any subset of fields, exact messages."""
    get = d.get
    ts_start = get("ts_start")
    if ts_start is None:
        raise RecordError("missing field", "ts_start")
    ts_start = _number(ts_start, "ts_start")
    latency = get("latency_ms")
    if latency is not None:
        latency = _number(latency, "latency_ms")
        if latency < 0:
            raise RecordError("bad value", "latency_ms must not be negative")
    ts_end = get("ts_end")
    if ts_end is None:
        ts_end = ts_start + latency / 1000 if latency is not None else ts_start
    else:
        ts_end = _number(ts_end, "ts_end")
    ttft = get("ttft_ms")
    if ttft is not None:
        ttft = _number(ttft, "ttft_ms")
        if ttft < 0:
            raise RecordError("bad value", "ttft_ms must not be negative")
    strs: dict[str, str | None] = {}
    for name in _STR_FIELDS:
        v = get(name)
        if v is not None and not isinstance(v, str):
            raise RecordError("wrong type", f"{name} must be a string, got {type(v).__name__}")
        strs[name] = v
    for name in ("input_text", "output_text", "error_message"):
        v = strs[name]
        if v is not None and len(v) > _TEXT_LIMIT:
            strs[name] = v[:_TEXT_LIMIT]
    ints: dict[str, int] = {}
    for name in _INT_FIELDS:
        v = get(name, 0)
        if v is None:
            v = 0
        if type(v) is not int:
            if isinstance(v, float) and v.is_integer():
                v = int(v)
            else:
                raise RecordError("wrong type", f"{name} must be an integer, got {type(v).__name__}")
        if v < 0 or v > _MAX_TOKENS:
            raise RecordError("bad value", f"{name} out of range: {v}")
        ints[name] = v
    failure = _FAILURES.get(get("failure") or "none")
    if failure is None:
        raise RecordError("bad value", f"failure {get('failure')!r} is not one of {', '.join(_FAILURES)}")
    cost_source = _COST_SOURCES.get(get("cost_source") or "estimated")
    if cost_source is None:
        raise RecordError("bad value", f"cost_source {get('cost_source')!r}")
    cache_hit = _CACHE_HITS.get(get("cache_hit") or "none")
    if cache_hit is None:
        raise RecordError("bad value", f"cache_hit {get('cache_hit')!r}")
    cost = get("cost_usd")
    if cost is not None:
        cost = _number(cost, "cost_usd")
    tags = get("tags") or {}
    if type(tags) is not dict or not all(type(v) is str for v in tags.values()):
        raise RecordError("wrong type", "tags must be an object of strings")
    targets = get("targets_tried") or []
    if type(targets) is not list or not all(type(v) is str for v in targets):
        raise RecordError("wrong type", "targets_tried must be a list of strings")
    status = get("status_code")
    if status is not None and (type(status) is not int or not 0 <= status < 1000):
        raise RecordError("bad value", f"status_code {status!r}")
    attempts = get("attempts", 1)
    if type(attempts) is not int or attempts < 0:
        raise RecordError("bad value", f"attempts {attempts!r}")
    prompt_version = get("prompt_version")
    if prompt_version is not None and (type(prompt_version) is not int or abs(prompt_version) > _MAX_INT32):
        raise RecordError("bad value", f"prompt_version {prompt_version!r}")
    stream = get("stream", False)
    if type(stream) is not bool:
        raise RecordError("wrong type", "stream must be true or false")
    event_id = get("event_id")
    if event_id is None:
        event_id = derived_event_id(ts_start, key)
    elif type(event_id) is not str or not event_id:
        raise RecordError("wrong type", "event_id must be a non-empty string")
    elif len(event_id) != 32 or not _HEX32.fullmatch(event_id):
        event_id = derived_event_id(ts_start, "id:" + event_id)
    src = strs["source"] or source or "jsonl"
    return Event(
        ts_start=ts_start,
        ts_end=ts_end,
        source=src,
        provider=strs["provider"] or "",
        model=strs["model"] or "",
        event_id=event_id,
        response_model=strs["response_model"],
        route=strs["route"],
        feature=strs["feature"],
        user=strs["user"],
        tags=tags,
        prompt_name=strs["prompt_name"],
        prompt_version=prompt_version,
        stream=stream,
        status_code=status,
        failure=failure,
        error_message=strs["error_message"],
        attempts=attempts,
        targets_tried=targets,
        latency_ms=latency,
        ttft_ms=ttft,
        input_tokens=ints["input_tokens"],
        output_tokens=ints["output_tokens"],
        cache_read_tokens=ints["cache_read_tokens"],
        cache_write_tokens=ints["cache_write_tokens"],
        reasoning_tokens=ints["reasoning_tokens"],
        cost_usd=cost,
        cost_source=cost_source,
        cache_hit=cache_hit,
        breaker_state=strs["breaker_state"],
        input_text=strs["input_text"],
        output_text=strs["output_text"],
    )


# --- our own event format, straight to the store's rows --------------------------------------
#
# The ingest hot path (tests/bench/test_bench_ingest.py): a batch of decoded lines becomes the
# rows ``storage.queries.events.insert_rows`` takes, without an Event per line.  Types are checked
# per row by their signature (a tuple of types, looked up in a set); values per column with numpy.
# A line that fails any check is read again by ``EventFormat.parse_line``, which says exactly what
# is wrong (or fixes what event_from_dict fixes: a missing field, an over-long text).

_ROW_OF = operator.itemgetter(*EVENT_COLUMNS)
_COL = {name: i for i, name in enumerate(EVENT_COLUMNS)}
# What each row column accepts as is; tags and targets_tried are already JSON text here.
_ROW_ACCEPTS: tuple[frozenset[type], ...] = tuple(
    _STR if name in ("tags", "targets_tried") else _ACCEPTS[name] for name in EVENT_COLUMNS
)
_ROW_SIGNATURES: set[tuple[type, ...]] = set()
_HEX32_RUN = re.compile(r"(?:[0-9a-f]{32})*")
_FAILURE_VALUES = frozenset(_FAILURES)
_COST_SOURCE_VALUES = frozenset(_COST_SOURCES)
_CACHE_HIT_VALUES = frozenset(_CACHE_HITS)
_NUL_ESCAPE = b"\\u0000"
#: Distinct raw spellings of tags (and of targets) remembered by the typed decoder.
_RAW_TEXT_CACHE_MAX = 4096


def _row_of_dict(d: Any) -> tuple[Any, ...] | None:
    """A decoded record as a row (tags and targets as JSON text), or ``None`` when it lacks fields.

    Tags and targets not plainly strings become ``None``, which the signature check refuses.
    The usual shapes are found in the encoders' caches without a call (this runs once a line).
    """
    if type(d) is not dict:
        return None
    try:
        tags = d["tags"]
        targets = d["targets_tried"]
    except KeyError:
        return None
    try:
        d["tags"] = _MAP_TEXT[tuple(tags.items())]  # only maps of strings are cached
    except (KeyError, TypeError, AttributeError):
        d["tags"] = json_string_map(tags)
    try:
        d["targets_tried"] = _LIST_TEXT[tuple(targets)] if type(targets) is list else None
    except (KeyError, TypeError):
        d["targets_tried"] = json_string_list(targets)
    try:
        row: tuple[Any, ...] = _ROW_OF(d)
    except KeyError:
        return None
    return row


def _typed_row_decoder() -> Callable[[bytes], tuple[Any, ...]] | None:
    """A decoder of one plain line straight to a checked row, when msgspec is installed (optional).

    msgspec decodes into a typed record and checks every type and range the
    plain path checks, in C: about twice as fast as orjson plus the checks
    done in Python (measured, tests/bench/test_bench_ingest.py).  The record
    declares exactly what :func:`event_from_dict` takes as is; anything else
    fails to decode and takes the careful path, as with orjson.
    """
    try:
        import msgspec
    except ImportError:
        return None
    from typing import Annotated, Literal

    meta = msgspec.Meta
    text = Annotated[str, meta(max_length=_TEXT_LIMIT)] | None
    tokens = Annotated[int, meta(ge=0, le=_MAX_TOKENS)]
    millis = Annotated[float, meta(ge=0)] | Annotated[int, meta(ge=0)] | None
    number = int | float
    failures = Literal[tuple(f.value for f in Failure)]  # type: ignore[valid-type]
    cost_sources = Literal[tuple(c.value for c in CostSource)]  # type: ignore[valid-type]
    cache_hits = Literal[tuple(c.value for c in CacheHit)]  # type: ignore[valid-type]
    fields: dict[str, Any] = {
        "event_id": str | None, "ts_start": number, "ts_end": number, "source": str | None,
        "provider": str, "model": str, "response_model": str | None, "route": str | None,
        "feature": str | None, "user": str | None, "tags": msgspec.Raw, "prompt_name": str | None,
        "prompt_version": Annotated[int, meta(ge=-_MAX_INT32, le=_MAX_INT32)] | None, "stream": bool,
        "status_code": Annotated[int, meta(ge=0, le=999)] | None, "failure": failures,
        "error_message": text, "attempts": Annotated[int, meta(ge=0)], "targets_tried": msgspec.Raw,
        "latency_ms": millis, "ttft_ms": millis, "input_tokens": tokens, "output_tokens": tokens,
        "cache_read_tokens": tokens, "cache_write_tokens": tokens, "reasoning_tokens": tokens,
        "cost_usd": number | None, "cost_source": cost_sources, "cache_hit": cache_hits,
        "breaker_state": str | None, "input_text": text, "output_text": text,
    }  # fmt: skip
    assert tuple(fields) == EVENT_COLUMNS, "the record's fields are the row's columns, in order"
    record = msgspec.defstruct("PlainEventRecord", list(fields.items()), gc=False)
    decode = msgspec.json.Decoder(record).decode
    as_tuple = msgspec.structs.astuple
    # Tags and targets arrive as their raw JSON; each distinct spelling is checked (a map of
    # strings, a list of strings) and made our compact text once, then found by its bytes:
    # cheaper than building a dict or list per line and looking that up.
    tags_of = msgspec.json.Decoder(dict[str, str]).decode
    targets_of = msgspec.json.Decoder(list[str]).decode
    tag_text: dict[bytes, str] = {}
    target_text: dict[bytes, str] = {}

    def learn(cache: dict[bytes, str], raw: bytes, text: str | None) -> str:
        assert text is not None  # the decoders above checked the shape
        if len(cache) >= _RAW_TEXT_CACHE_MAX:
            cache.clear()
        cache[raw] = text
        return text

    def row_of_line(line: bytes) -> tuple[Any, ...]:
        r: Any = decode(line)
        raw = bytes(r.tags)
        text = tag_text.get(raw)
        r.tags = text if text is not None else learn(tag_text, raw, json_string_map(tags_of(raw)))
        raw = bytes(r.targets_tried)
        text = target_text.get(raw)
        r.targets_tried = (
            text if text is not None else learn(target_text, raw, json_string_list(targets_of(raw)))
        )
        row: tuple[Any, ...] = as_tuple(r)
        return row

    return row_of_line


#: One plain line to a checked row (msgspec), or ``None``: orjson and the checks in Python.
_typed_row: Callable[[bytes], tuple[Any, ...]] | None = _typed_row_decoder()


def _signature_ok(sig: tuple[type, ...]) -> bool:
    if sig in _ROW_SIGNATURES:
        return True
    if len(sig) != len(_ROW_ACCEPTS) or not all(t in ok for t, ok in zip(sig, _ROW_ACCEPTS, strict=True)):
        return False
    if len(_ROW_SIGNATURES) < 4096:
        _ROW_SIGNATURES.add(sig)
    return True


def _column(rows: list[tuple[Any, ...]], name: str) -> list[Any]:
    return list(map(operator.itemgetter(_COL[name]), rows))


def _present(values: list[Any]) -> list[Any]:
    """The values that are not ``None`` (at C speed: no Python-level loop)."""
    return list(compress(values, map(operator.is_not, values, repeat(None))))


def _out_of(values: list[Any], low: float, high: float) -> bool:
    """True when some value lies outside ``[low, high]`` (values are numbers, possibly none)."""
    return bool(values) and (min(values) < low or max(values) > high)


# Per column: (name, optional, low, high): the range the plain path accepts; anything else is
# read by parse_line, which says what is wrong.  Floats need no finiteness check: orjson, the
# only decoder of the plain path, refuses NaN and infinities.
_RANGES: tuple[tuple[str, bool, float, float], ...] = (
    ("latency_ms", True, 0, math.inf),
    ("ttft_ms", True, 0, math.inf),
    *((name, False, 0, _MAX_TOKENS) for name in _INT_FIELDS),
    ("status_code", True, 0, 999),
    ("attempts", False, 0, math.inf),
    ("prompt_version", True, -_MAX_INT32, _MAX_INT32),
)


def _outside(low: float, high: float, v: Any) -> bool:
    return v is not None and not low <= v <= high


def _too_long(v: Any) -> bool:
    return v is not None and len(v) > _TEXT_LIMIT


def _is_empty(v: Any) -> bool:
    return isinstance(v, str) and not v


def _not_in(valid: frozenset[str], v: Any) -> bool:
    return v not in valid


def _bad_values(rows: list[tuple[Any, ...]]) -> list[bool] | None:
    """Which rows (of types already checked) hold a value the plain path must not take; ``None``: none.

    The same checks as :func:`event_from_dict`'s fast path, a column at a
    time with C-speed builtins; only a column that fails is looked at row by row.
    """
    bad: list[bool] | None = None

    def flag(name: str, is_bad: Callable[[Any], bool]) -> None:
        nonlocal bad
        flags = list(map(is_bad, _column(rows, name)))
        bad = flags if bad is None else [a or b for a, b in zip(bad, flags, strict=True)]

    for name, optional, low, high in _RANGES:
        values = _column(rows, name)
        if _out_of(_present(values) if optional else values, low, high):
            flag(name, partial(_outside, low, high))
    for name in ("error_message", "input_text", "output_text"):
        if max(map(len, filter(None, _column(rows, name))), default=0) > _TEXT_LIMIT:
            flag(name, _too_long)
    for name, valid in (
        ("failure", _FAILURE_VALUES),
        ("cost_source", _COST_SOURCE_VALUES),
        ("cache_hit", _CACHE_HIT_VALUES),
    ):
        if not set(_column(rows, name)) <= valid:
            flag(name, partial(_not_in, valid))
    if "" in _column(rows, "event_id"):  # an empty id is refused (parse_line says so), not derived
        flag("event_id", _is_empty)
    return bad


def _empty_ids(rows: list[tuple[Any, ...]]) -> list[bool] | None:
    """Which rows carry an empty ``event_id`` (refused by parse_line, not derived); ``None``: none."""
    ids = _column(rows, "event_id")
    return [v == "" for v in ids] if "" in ids else None


# --- cost estimates for formats that carry none -------------------------------------------


class _Pricer:
    """Per-token rates learned once per model from genai-prices (a full lookup is ~100 us)."""

    _UNIT = 10_000

    def __init__(self) -> None:
        self._rates: dict[tuple[str, str], tuple[float, float, float, float, float] | None] = {}

    def cost(self, model: str, provider: str, i: int, o: int, *, cr: int, cw: int) -> float | None:
        if not model:
            return None
        key = (model, provider)
        if key not in self._rates:
            self._rates[key] = self._learn(model, provider)
        rates = self._rates[key]
        if rates is None:
            return None
        fixed, r_in, r_out, r_cr, r_cw = rates
        return fixed + max(i - cr - cw, 0) * r_in + o * r_out + cr * r_cr + cw * r_cw

    def _learn(self, model: str, provider: str) -> tuple[float, float, float, float, float] | None:
        u = self._UNIT

        def p(i: int = 0, o: int = 0, cr: int = 0, cw: int = 0) -> float | None:
            return price_call(
                model,
                provider=provider or None,
                input_tokens=i,
                output_tokens=o,
                cache_read_tokens=cr,
                cache_write_tokens=cw,
                input_excludes_cache=False,
            ).cost_usd

        fixed, inp, out, cr, cw = p(), p(i=u), p(o=u), p(i=u, cr=u), p(i=u, cw=u)
        if fixed is None or inp is None or out is None or cr is None or cw is None:
            return None
        return (fixed, (inp - fixed) / u, (out - fixed) / u, (cr - fixed) / u, (cw - fixed) / u)


_pricer = _Pricer()


def estimate_cost(
    model: str,
    provider: str,
    *,
    input_tokens: int,
    output_tokens: int,
    cache_read_tokens: int = 0,
    cache_write_tokens: int = 0,
) -> float | None:
    """Our price estimate for a call (input includes cache reads and writes); ``None`` if unknown."""
    return _pricer.cost(
        model, provider, input_tokens, output_tokens, cr=cache_read_tokens, cw=cache_write_tokens
    )


# --- OTLP GenAI spans -------------------------------------------------------------------------


def any_value(v: Any) -> Any:
    """An OTLP ``AnyValue`` (JSON form) as a plain Python value."""
    if not isinstance(v, dict):
        return v
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        try:
            return int(v["intValue"])
        except (TypeError, ValueError):
            return v["intValue"]
    if "doubleValue" in v:
        d = v["doubleValue"]
        try:
            return float(d)
        except (TypeError, ValueError):
            return d
    if "boolValue" in v:
        return v["boolValue"]
    if "arrayValue" in v:
        arr = v["arrayValue"] or {}
        return [any_value(x) for x in (arr.get("values") or [])] if isinstance(arr, dict) else []
    if "kvlistValue" in v:
        kv = v["kvlistValue"] or {}
        return attributes(kv.get("values")) if isinstance(kv, dict) else {}
    if "bytesValue" in v:
        return v["bytesValue"]
    return None


def attributes(attrs: Any) -> dict[str, Any]:
    """An OTLP attribute list (``[{key, value}]``) as a dict; malformed entries are ignored."""
    out: dict[str, Any] = {}
    if not isinstance(attrs, list):
        return out
    for a in attrs:
        if isinstance(a, dict):
            k = a.get("key")
            if isinstance(k, str):
                out[k] = any_value(a.get("value"))
    return out


def _nanos(value: Any, name: str) -> int:
    if isinstance(value, bool):
        raise RecordError("wrong type", f"{name} must be nanoseconds")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if isinstance(value, float) and math.isfinite(value):
        return int(value)
    if value is None:
        raise RecordError("missing field", name)
    raise RecordError("wrong type", f"{name} must be nanoseconds, got {value!r}"[:200])


def _token(attrs: Mapping[str, Any], *names: str) -> int:
    for n in names:
        v = attrs.get(n)
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 0 or v > 1 << 53:
            raise RecordError("bad value", f"{n} must be a non-negative integer, got {v!r}"[:200])
        return int(v)
    return 0


_ERROR_WORDS: tuple[tuple[str, Failure], ...] = (
    ("ratelimit", Failure.RATE_LIMITED),
    ("rate_limit", Failure.RATE_LIMITED),
    ("toomanyrequests", Failure.RATE_LIMITED),
    ("overload", Failure.OVERLOADED),
    ("unavailable", Failure.OVERLOADED),
    ("timeout", Failure.TIMEOUT),
    ("timedout", Failure.TIMEOUT),
    ("deadline", Failure.TIMEOUT),
    ("connect", Failure.CONNECTION_ERROR),
    ("badrequest", Failure.CLIENT_ERROR),
    ("invalidrequest", Failure.CLIENT_ERROR),
    ("authentication", Failure.CLIENT_ERROR),
    ("permission", Failure.CLIENT_ERROR),
    ("notfound", Failure.CLIENT_ERROR),
    ("unprocessable", Failure.CLIENT_ERROR),
    ("conflict", Failure.CLIENT_ERROR),
    ("contentfilter", Failure.GUARDRAIL_BLOCKED),
)


def failure_of_error_type(error_type: str | None, status: int | None = None) -> Failure:
    """Our failure type for an OTel ``error.type`` (a status code or an exception class name)."""
    if status is not None and status >= 400:
        return classify_status(status, error_type)
    if not error_type:
        return Failure.SERVER_ERROR
    if error_type.isdigit():
        return classify_status(int(error_type))
    word = error_type.lower().replace("_", "").replace(".", "").replace(" ", "")
    for needle, failure in _ERROR_WORDS:
        if needle.replace("_", "") in word:
            return failure
    return Failure.SERVER_ERROR


def span_is_genai(attrs: Mapping[str, Any]) -> bool:
    return any(
        k in attrs
        for k in ("gen_ai.operation.name", "gen_ai.system", "gen_ai.provider.name", "gen_ai.request.model")
    )


def span_to_event(
    span: Mapping[str, Any], *, resource: Mapping[str, Any] | None = None, source: str = "otlp"
) -> Event | None:
    """One OTLP span (JSON form) to an event; ``None`` for a span that is not a GenAI call.

    Raises :class:`RecordError` for a GenAI span that is malformed (no times,
    negative tokens).  The event id is derived from the trace and span ids.
    """
    attrs = attributes(span.get("attributes"))
    if not span_is_genai(attrs):
        return None
    start_ns = _nanos(span.get("startTimeUnixNano"), "startTimeUnixNano")
    end_ns = _nanos(span.get("endTimeUnixNano", start_ns), "endTimeUnixNano")
    if end_ns < start_ns:
        raise RecordError("bad value", "endTimeUnixNano is before startTimeUnixNano")
    ts_start, ts_end = start_ns / 1e9, end_ns / 1e9
    provider = attrs.get("gen_ai.provider.name") or attrs.get("gen_ai.system") or ""
    name = span.get("name") if isinstance(span.get("name"), str) else ""
    operation = attrs.get("gen_ai.operation.name") or (name.split(" ", 1)[0] if name else "")
    model = attrs.get("gen_ai.request.model") or attrs.get("gen_ai.response.model") or ""
    if not model and name and " " in name:
        model = name.split(" ", 1)[1]
    response_model = attrs.get("gen_ai.response.model")
    for label, value in (("gen_ai.provider.name", provider), ("gen_ai.request.model", model)):
        if not isinstance(value, str):
            raise RecordError("wrong type", f"{label} must be a string")
    input_tokens = _token(attrs, "gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens")
    output_tokens = _token(attrs, "gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens")
    cache_read = _token(attrs, "gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
    cache_write = _token(
        attrs, "gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens"
    )
    reasoning = _token(attrs, "gen_ai.usage.reasoning_tokens", "gen_ai.usage.output_tokens.reasoning")
    raw_status = span.get("status")
    status_obj: Mapping[str, Any] = raw_status if isinstance(raw_status, dict) else {}
    code = status_obj.get("code", 0)
    if isinstance(code, str):  # ProtoJSON may spell enums by name
        code = {"STATUS_CODE_UNSET": 0, "STATUS_CODE_OK": 1, "STATUS_CODE_ERROR": 2}.get(code, 0)
    http_status = attrs.get("http.response.status_code") or attrs.get("http.status_code")
    status_code = (
        int(http_status)
        if isinstance(http_status, int | float) and not isinstance(http_status, bool)
        else None
    )
    error_type = attrs.get("error.type")
    error_type = str(error_type) if error_type is not None else None
    if code == 2 or error_type or (status_code is not None and status_code >= 400):
        failure = failure_of_error_type(error_type, status_code)
        message = status_obj.get("message") or error_type or "error"
        error_message: str | None = str(message)[:1000]
    else:
        failure = Failure.NONE
        error_message = None
    if status_code is None:
        status_code = 200 if failure is Failure.NONE else None
    ttft_s = attrs.get("gen_ai.response.time_to_first_chunk") or attrs.get(
        "gen_ai.server.time_to_first_token"
    )
    ttft_ms = (
        float(ttft_s) * 1000
        if isinstance(ttft_s, int | float) and not isinstance(ttft_s, bool) and ttft_s >= 0
        else None
    )
    stream = attrs.get("gen_ai.request.stream")
    tags: dict[str, str] = {}
    res = resource or {}
    if res.get("service.name"):
        tags["service"] = str(res["service.name"])
    if operation:
        tags["operation"] = str(operation)
    for attr, tag in (("gen_ai.response.id", "response_id"), ("server.address", "server")):
        if attrs.get(attr) is not None:
            tags[tag] = str(attrs[attr])
    finish = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(finish, list) and finish:
        tags["finish_reason"] = ",".join(str(x) for x in finish)
    trace_id, span_id = _hex_id(span.get("traceId")), _hex_id(span.get("spanId"))
    if trace_id and span_id:
        key = f"otlp:{trace_id}:{span_id}"
    else:
        key = f"otlp:{ts_start!r}:{name}:{json.dumps(attrs, sort_keys=True, default=str)}"
    latency_ms = (end_ns - start_ns) / 1e6
    cost = estimate_cost(
        model,
        str(provider),
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    user = attrs.get("user.id") or attrs.get("enduser.id") or attrs.get("gen_ai.request.user")
    return Event(
        ts_start=ts_start,
        ts_end=ts_end,
        source=source,
        provider=str(provider),
        model=model,
        event_id=derived_event_id(ts_start, key),
        response_model=str(response_model) if response_model else None,
        route=_opt_str(attrs.get("controlroom.route")),
        feature=_opt_str(attrs.get("controlroom.feature") or attrs.get("app.feature")),
        user=_opt_str(user),
        tags=tags,
        stream=stream is True,
        status_code=status_code,
        failure=failure,
        error_message=error_message,
        latency_ms=latency_ms,
        ttft_ms=ttft_ms,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        cost_usd=cost,
        cost_source=CostSource.ESTIMATED,
    )


def _hex_id(value: Any) -> str:
    """A trace or span id as lowercase hex: OTLP JSON writes hex, ``MessageToDict`` writes base64."""
    if not isinstance(value, str) or not value:
        return ""
    if len(value) in (16, 32) and all(c in "0123456789abcdefABCDEF" for c in value):
        return value.lower()
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


def _opt_str(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def otlp_request_to_events(
    request: Any,
    *,
    source: str = "otlp",
    position: str = "request",
    out: Parsed | None = None,
    key: str | None = None,
) -> Parsed:
    """Every GenAI span of one OTLP trace export request (JSON form) as events.

    A malformed span is rejected alone (``position`` + `` span N``); spans that
    are not GenAI calls are counted in ``skipped``.  A request that is not an
    object, or has no ``resourceSpans`` list, is one rejection.  ``key``, when
    given, names the request stably (a file's fingerprint and offset) so its
    rejections are quarantined once however often it is read.
    """
    out = Parsed() if out is None else out
    if not isinstance(request, dict):
        out.rejected.append(
            Rejected.of(
                source, position, "not an object: an OTLP request is a JSON object", _short(request), key
            )
        )
        return out
    resource_spans = request.get("resourceSpans")
    if resource_spans is None:
        if any(k in request for k in ("resourceMetrics", "resourceLogs", "resourceProfiles")):
            out.skipped += 1  # the collector's file exporter also writes metrics and logs
            return out
        out.rejected.append(
            Rejected.of(source, position, "missing field: resourceSpans", _short(request), key)
        )
        return out
    if not isinstance(resource_spans, list):
        out.rejected.append(
            Rejected.of(source, position, "wrong type: resourceSpans must be a list", _short(request), key)
        )
        return out
    n = 0
    for i, rs in enumerate(resource_spans):
        if not isinstance(rs, dict):
            out.rejected.append(
                Rejected.of(
                    source, position, "wrong type: a resourceSpans entry", _short(rs), _sub(key, f"rs {i}")
                )
            )
            continue
        res_obj = rs.get("resource")
        resource = attributes(res_obj.get("attributes")) if isinstance(res_obj, dict) else {}
        scopes = rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or []
        if not isinstance(scopes, list):
            out.rejected.append(
                Rejected.of(
                    source,
                    position,
                    "wrong type: scopeSpans must be a list",
                    _short(rs),
                    _sub(key, f"rs {i}"),
                )
            )
            continue
        for j, ss in enumerate(scopes):
            spans = ss.get("spans") if isinstance(ss, dict) else None
            if not isinstance(spans, list):
                out.rejected.append(
                    Rejected.of(
                        source,
                        position,
                        "wrong type: spans must be a list",
                        _short(ss),
                        _sub(key, f"rs {i} ss {j}"),
                    )
                )
                continue
            for span in spans:
                n += 1
                where = f"{position} span {n}"
                span_key = _sub(key, f"span {n}")
                if not isinstance(span, dict):
                    out.rejected.append(
                        Rejected.of(source, where, "not an object: a span", _short(span), span_key)
                    )
                    continue
                try:
                    event = span_to_event(span, resource=resource, source=source)
                except RecordError as exc:
                    out.rejected.append(Rejected.of(source, where, exc.reason, _short(span), span_key))
                    continue
                except (TypeError, ValueError, AttributeError, OverflowError) as exc:
                    out.rejected.append(
                        Rejected.of(source, where, f"bad value: {exc}"[:300], _short(span), span_key)
                    )
                    continue
                if event is None:
                    out.skipped += 1
                else:
                    out.events.append(event)
    return out


def _sub(key: str | None, part: str) -> str | None:
    return f"{key}:{part}" if key is not None else None


def _short(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, default=repr)[:4096]
    except (TypeError, ValueError):
        return repr(value)[:4096]


# --- field mappings ------------------------------------------------------------------------

_TIME_FORMATS = ("auto", "iso", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns")
_DURATION_UNITS = {"ms": 1.0, "s": 1000.0, "us": 0.001, "ns": 0.000001}
_TIME_FIELDS = frozenset({"ts_start", "ts_end"})
_DURATION_FIELDS = frozenset({"latency_ms", "ttft_ms"})
_MAPPABLE = frozenset(
    {
        "event_id", "ts_start", "ts_end", "source", "provider", "model", "response_model", "route",
        "feature", "user", "prompt_name", "prompt_version", "stream", "status_code", "failure",
        "error_message", "attempts", "latency_ms", "ttft_ms", "input_tokens", "output_tokens",
        "cache_read_tokens", "cache_write_tokens", "reasoning_tokens", "cost_usd", "cost_source",
        "cache_hit", "breaker_state", "tags",
    }
)  # fmt: skip
_PATH_TOKEN = re.compile(r"""\.?([^.\[\]]+)|\[(\d+)\]|\[["']([^"']*)["']\]""")


class MappingError(ValueError):
    """A field mapping (a preset or an operator's file) that cannot work; the message says where."""


def compile_path(path: str) -> tuple[str | int, ...]:
    """``a.b[0].c`` / ``$.a["x.y"]`` to a tuple of keys and indexes."""
    text = path.strip()
    if text.startswith("$"):
        text = text[1:]
    parts: list[str | int] = []
    pos = 0
    while pos < len(text):
        m = _PATH_TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise MappingError(f"cannot read JSON path {path!r} at character {pos}")
        if m.group(1) is not None:
            parts.append(m.group(1))
        elif m.group(2) is not None:
            parts.append(int(m.group(2)))
        else:
            parts.append(m.group(3))
        pos = m.end()
    if not parts:
        raise MappingError(f"empty JSON path {path!r}")
    return tuple(parts)


def _resolve(obj: Any, parts: tuple[str | int, ...]) -> Any:
    for p in parts:
        if isinstance(p, int):
            if not isinstance(obj, list) or p >= len(obj):
                return None
            obj = obj[p]
        else:
            if not isinstance(obj, dict):
                return None
            obj = obj.get(p)
            if obj is None:
                return None
    return obj


def parse_time(value: Any, fmt: str, name: str) -> float:
    """A time in ``fmt`` (``iso``, ``epoch_s|ms|us|ns`` or ``auto``) to epoch seconds."""
    if isinstance(value, str) and fmt in ("auto", "iso"):
        text = value.strip()
        if fmt == "auto" and re.fullmatch(r"-?\d+(\.\d+)?", text):
            return parse_time(float(text), "auto", name)
        try:
            t = dt.datetime.fromisoformat(text.replace("Z", "+00:00") if text.endswith("Z") else text)
        except ValueError:
            raise RecordError("bad value", f"{name}: not an ISO 8601 time: {text[:60]!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.UTC)  # a naive time in a log is taken as UTC
        return t.timestamp()
    if isinstance(value, str) and re.fullmatch(r"-?\d+(\.\d+)?", value.strip()):
        value = float(value)
    n = _number(value, name)
    if fmt == "auto":
        a = abs(n)
        fmt = "epoch_ns" if a > 1e17 else "epoch_us" if a > 1e14 else "epoch_ms" if a > 1e11 else "epoch_s"
    scale = {"epoch_s": 1.0, "epoch_ms": 1e-3, "epoch_us": 1e-6, "epoch_ns": 1e-9}.get(fmt)
    if scale is None:
        raise RecordError("bad value", f"{name}: expected an ISO time, got a number")
    return n * scale


@dataclass(frozen=True)
class FieldSpec:
    """How one event field is read: from a JSON path, or a constant; with a unit or a value map."""

    path: tuple[str | int, ...] | None = None
    const: Any = None
    time: str = "auto"  # for ts_start / ts_end
    unit: str = "ms"  # for latency_ms / ttft_ms: the unit in the log
    map: Mapping[str, Any] | None = None  # log value (as a string) -> event value

    def read(self, record: Any) -> Any:
        v = self.const if self.path is None else _resolve(record, self.path)
        if v is not None and self.map is not None:
            key = str(v).lower() if isinstance(v, bool) else str(v)
            v = self.map.get(key, self.map.get("*", v))
        return v


@dataclass(frozen=True)
class FieldMapping:
    """A named field mapping: event field -> :class:`FieldSpec`.

    Written as data (JSON or YAML), for example::

        name: my-service
        fields:
          ts_start: {path: time, time: iso}
          latency_ms: {path: duration, unit: s}
          provider: {const: openai}
          model: request.model
          status_code: http.status
          input_tokens: usage.prompt_tokens
          failure: {path: outcome, map: {ok: none, throttled: rate_limited, "*": server_error}}
          tags: {path: labels}          # an object of strings

    Times (``time``): ``iso``, ``epoch_s``, ``epoch_ms``, ``epoch_us``,
    ``epoch_ns`` or ``auto`` (by magnitude).  Durations (``unit``): ``ms``,
    ``s``, ``us``, ``ns``.  A ``map`` value of ``null`` means "not given": a
    failure is then derived from ``status_code`` (or a server error when
    there is an ``error_message``).  A missing ``cost_usd`` is priced by us
    from the tokens (``cost_source`` estimated).
    """

    name: str
    fields: Mapping[str, FieldSpec]
    description: str = ""

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, where: str = "mapping") -> FieldMapping:
        if not isinstance(data, Mapping):
            raise MappingError(f"{where}: a mapping is an object with 'name' and 'fields'")
        fields = data.get("fields")
        if not isinstance(fields, Mapping) or not fields:
            raise MappingError(f"{where}: 'fields' must be an object of event field -> JSON path")
        specs: dict[str, FieldSpec] = {}
        problems: list[str] = []
        for name, raw in fields.items():
            if name not in _MAPPABLE:
                problems.append(f"unknown event field {name!r}")
                continue
            try:
                specs[name] = _spec(name, raw)
            except MappingError as exc:
                problems.append(f"{name}: {exc}")
        if "ts_start" not in specs and "ts_end" not in specs:
            problems.append("ts_start (or ts_end) must be mapped")
        if problems:
            raise MappingError(f"{where}: " + "; ".join(problems))
        return cls(
            name=str(data.get("name") or where), fields=specs, description=str(data.get("description", ""))
        )

    @classmethod
    def load(cls, path: Path) -> FieldMapping:
        """A mapping from a ``.json`` or ``.yaml`` file."""
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise MappingError(f"cannot read the mapping file {path}: {exc.strerror}") from None
        try:
            if path.suffix.lower() in (".yaml", ".yml"):
                import yaml

                data = yaml.safe_load(text)
            else:
                data = json.loads(text)
        except Exception as exc:
            raise MappingError(
                f"{path}: not valid {'YAML' if path.suffix.lower() in ('.yaml', '.yml') else 'JSON'}: {exc}"
            ) from None
        return cls.from_dict(data, where=str(path))

    def to_event(self, record: Any, *, key: str, source: str) -> Event:
        """Read one record (a parsed JSON value) through this mapping.  Raises :class:`RecordError`."""
        if not isinstance(record, dict):
            raise RecordError("not an object", f"a {type(record).__name__}")
        v: dict[str, Any] = {}
        for name, spec in self.fields.items():
            value = spec.read(record)
            if value is None:
                continue
            if name in _TIME_FIELDS:
                value = parse_time(value, spec.time, name)
            elif name in _DURATION_FIELDS:
                if isinstance(value, str):
                    try:
                        value = float(value)
                    except ValueError:
                        raise RecordError("wrong type", f"{name} must be a number") from None
                value = _number(value, name) * _DURATION_UNITS[spec.unit]
            v[name] = value
        if "ts_start" not in v:
            if "ts_end" not in v:
                raise RecordError("missing field", "ts_start")
            v["ts_start"] = v["ts_end"] - v.get("latency_ms", 0.0) / 1000
        if "ts_end" not in v and "latency_ms" not in v:
            v["ts_end"] = v["ts_start"]
        if "latency_ms" not in v and "ts_end" in v:
            v["latency_ms"] = max(0.0, (v["ts_end"] - v["ts_start"]) * 1000)
        status = v.get("status_code")
        if status is not None:
            try:
                v["status_code"] = int(status)
            except (TypeError, ValueError):
                raise RecordError("wrong type", f"status_code {status!r} is not a number"[:200]) from None
        if "failure" not in v:
            if v.get("status_code") is not None:
                v["failure"] = classify_status(v["status_code"]).value
            elif v.get("error_message"):
                v["failure"] = Failure.SERVER_ERROR.value
        for name in _INT_FIELDS:
            if name in v and isinstance(v[name], str) and v[name].isdigit():
                v[name] = int(v[name])
        for name in ("provider", "model", "route", "feature", "user", "response_model", "error_message"):
            if name in v and not isinstance(v[name], str):
                v[name] = str(v[name])
        if "tags" in v and isinstance(v["tags"], dict):
            v["tags"] = {str(k): str(x) for k, x in v["tags"].items() if x is not None}
        if "event_id" in v and not isinstance(v["event_id"], str):
            v["event_id"] = str(v["event_id"])
        if "cost_usd" not in v:
            v["cost_usd"] = estimate_cost(
                str(v.get("model", "")),
                str(v.get("provider", "")),
                input_tokens=_int_or0(v.get("input_tokens")),
                output_tokens=_int_or0(v.get("output_tokens")),
                cache_read_tokens=_int_or0(v.get("cache_read_tokens")),
                cache_write_tokens=_int_or0(v.get("cache_write_tokens")),
            )
        if isinstance(v.get("cache_hit"), bool):
            v["cache_hit"] = "exact" if v["cache_hit"] else "none"
        return event_from_dict(v, key=key, source=source)


def _int_or0(v: Any) -> int:
    return v if type(v) is int and v >= 0 else 0


def _spec(name: str, raw: Any) -> FieldSpec:
    if isinstance(raw, str):
        return FieldSpec(path=compile_path(raw))
    if not isinstance(raw, Mapping):
        raise MappingError("expected a JSON path or an object with 'path' or 'const'")
    unknown = set(raw) - {"path", "const", "time", "unit", "map"}
    if unknown:
        raise MappingError(f"unknown keys {sorted(unknown)}")
    if ("path" in raw) == ("const" in raw):
        raise MappingError("give exactly one of 'path' and 'const'")
    time_fmt = str(raw.get("time", "auto"))
    if time_fmt not in _TIME_FORMATS:
        raise MappingError(f"time must be one of {', '.join(_TIME_FORMATS)}")
    if "time" in raw and name not in _TIME_FIELDS:
        raise MappingError("'time' applies to ts_start and ts_end only")
    unit = str(raw.get("unit", "ms"))
    if unit not in _DURATION_UNITS:
        raise MappingError(f"unit must be one of {', '.join(_DURATION_UNITS)}")
    if "unit" in raw and name not in _DURATION_FIELDS:
        raise MappingError("'unit' applies to latency_ms and ttft_ms only")
    value_map = raw.get("map")
    if value_map is not None and not isinstance(value_map, Mapping):
        raise MappingError("'map' must be an object of log value -> event value")
    return FieldSpec(
        path=compile_path(str(raw["path"])) if "path" in raw else None,
        const=raw.get("const"),
        time=time_fmt,
        unit=unit,
        map={str(k): v for k, v in value_map.items()} if value_map is not None else None,
    )


#: Built-in mappings for logs operators already have.
PRESETS: dict[str, FieldMapping] = {
    # LiteLLM's StandardLoggingPayload (its JSON callback / proxy spend logs).
    "litellm": FieldMapping.from_dict(
        {
            "name": "litellm",
            "description": "LiteLLM StandardLoggingPayload lines (callbacks, proxy spend logs)",
            "fields": {
                "event_id": "id",
                "ts_start": {"path": "startTime", "time": "auto"},
                "ts_end": {"path": "endTime", "time": "auto"},
                "provider": "custom_llm_provider",
                "model": "model",
                "route": "model_group",
                "user": "end_user",
                "input_tokens": "prompt_tokens",
                "output_tokens": "completion_tokens",
                "cost_usd": "response_cost",
                "cache_hit": "cache_hit",
                "stream": "stream",
                "error_message": "error_str",
                # A failure's type comes from its error code (408 -> timeout), else server_error.
                "failure": {"path": "status", "map": {"success": "none", "failure": None}},
                "status_code": "error_information.error_code",
            },
        },
        where="preset litellm",
    ),
    # Raw OpenAI chat completion responses, one per line (a service that logs what it got back).
    "openai-response": FieldMapping.from_dict(
        {
            "name": "openai-response",
            "description": "OpenAI chat.completion response objects, one per line",
            "fields": {
                "event_id": "id",
                "ts_start": {"path": "created", "time": "epoch_s"},
                "provider": {"const": "openai"},
                "model": "model",
                "response_model": "model",
                "input_tokens": "usage.prompt_tokens",
                "output_tokens": "usage.completion_tokens",
                "cache_read_tokens": "usage.prompt_tokens_details.cached_tokens",
                "reasoning_tokens": "usage.completion_tokens_details.reasoning_tokens",
                "status_code": {"const": 200},
            },
        },
        where="preset openai-response",
    ),
}


# --- line formats: what the JSONL reader and `controlroom ingest --format` name --------------


class LineFormat:
    """Reads one line (bytes, no newline) into ``out``; a bad line becomes one rejection."""

    name = "base"

    def parse_line(self, line: bytes, *, source: str, key: str, position: str, out: Parsed) -> None:
        try:
            self._parse(decode_line(line), source=source, key=key, position=position, out=out)
        except RecordError as exc:
            out.rejected.append(Rejected.of(source, position, exc.reason, line, key))

    def _parse(self, value: Any, *, source: str, key: str, position: str, out: Parsed) -> None:
        raise NotImplementedError


class EventFormat(LineFormat):
    """Our own event format, one :meth:`Event.to_json` per line."""

    name = "event"

    def parse_many(
        self, lines: list[tuple[int, bytes]], *, source: str, fingerprint: str, out: Parsed
    ) -> None:
        """Lines ``(offset, bytes)`` of one file: the ingest hot path.

        Good lines take the shortest way (no position text, no key unless the
        record has no id); any line that is not plainly good goes through
        :meth:`parse_line`, which says exactly what is wrong with it.
        """
        loads = _fast_loads
        append = out.events.append
        slow = self.parse_line
        for off, line in lines:
            d: Any = None
            if loads is not None and b"\\u0000" not in line:
                try:
                    d = loads(line)
                except ValueError:
                    d = None
            if type(d) is dict:
                key = f"{fingerprint}:{off}" if d.get("event_id") is None else ""
                try:
                    append(event_from_dict(d, key=key, source=source))
                    continue
                except RecordError:
                    pass
            slow(line, source=source, key=f"{fingerprint}:{off}", position=f"byte {off}", out=out)

    def parse_rows(
        self, lines: list[tuple[int, bytes]], *, source: str, fingerprint: str, out: Parsed
    ) -> None:
        """Lines ``(offset, bytes)`` of one file to the store's rows in ``out.rows``: the ingest hot path.

        Plain records (every field present, as :meth:`Event.to_json` writes
        them) go through in bulk: decoded, type-checked by signature,
        value-checked a column at a time, and taken as rows without an
        :class:`Event` each.  Any other line is read by :meth:`parse_line`,
        which fixes what it can and quarantines the rest with its reason;
        its event becomes a row too.  Rows keep the lines' order.
        """
        rows = out.rows
        if rows is None:
            raise ValueError("parse_rows needs Parsed(rows=[])")
        careful: list[int] = []  # line indexes for parse_line
        typed = _typed_row
        if typed is not None:
            plain, index = self._typed_rows(typed, lines, careful)
        else:
            plain, index = self._plain_rows(lines, careful)
        if plain and typed is None:
            sigs = {tuple(map(type, r)) for r in plain}
            wrong = {sig for sig in sigs if not _signature_ok(sig)}
            if wrong:
                keep = [tuple(map(type, r)) not in wrong for r in plain]
                careful += [i for i, k in zip(index, keep, strict=True) if not k]
                plain = list(compress(plain, keep))
                index = list(compress(index, keep))
        if plain:
            bad = _bad_values(plain) if typed is None else _empty_ids(plain)
            if bad is not None:
                keep = [not b for b in bad]
                careful += [i for i, k in zip(index, keep, strict=True) if not k]
                plain = list(compress(plain, keep))
                index = list(compress(index, keep))
        if plain:
            self._fix_ids_and_sources(plain, index, lines, source=source, fingerprint=fingerprint)
        if not careful:
            rows += plain
            return
        # The careful path, line by line; its events become rows, in the lines' order.
        careful.sort()
        slow = Parsed()
        taken: list[tuple[int, tuple[Any, ...]]] = []
        for i in careful:
            off, line = lines[i]
            before = len(slow.events)
            self.parse_line(line, source=source, key=f"{fingerprint}:{off}", position=f"byte {off}", out=slow)
            if len(slow.events) > before:
                taken.append((i, event_rows(slow.events[before:])[0]))
        out.rejected += slow.rejected
        if not taken:
            rows += plain
            return
        merged = list(zip(index, plain, strict=True)) + taken
        merged.sort(key=operator.itemgetter(0))
        rows += [r for _, r in merged]

    @staticmethod
    def _typed_rows(
        typed: Callable[[bytes], tuple[Any, ...]], lines: list[tuple[int, bytes]], careful: list[int]
    ) -> tuple[list[Any], list[int]]:
        """Lines decoded and checked by msgspec (see :func:`_typed_row_decoder`); others to ``careful``."""
        raw = [line for _, line in lines]
        nul = _NUL_ESCAPE
        if nul in b"".join(raw):  # msgspec keeps an escaped NUL; parse_line refuses it
            careful += [i for i, line in enumerate(raw) if nul in line]
            raw = [b"" if nul in line else line for line in raw]  # fails to decode: skipped below
        try:
            return list(map(typed, raw)), list(range(len(raw)))
        except ValueError:  # msgspec's DecodeError and ValidationError; find the lines, one at a time
            pass
        plain: list[Any] = []
        index: list[int] = []
        taken = set(careful)
        for i, line in enumerate(raw):
            try:
                plain.append(typed(line))
            except ValueError:
                if i not in taken:
                    careful.append(i)
                continue
            index.append(i)
        return plain, index

    @staticmethod
    def _plain_rows(lines: list[tuple[int, bytes]], careful: list[int]) -> tuple[list[Any], list[int]]:
        """Decode lines with orjson straight into rows (types not checked yet) and their line indexes.

        A line orjson refuses, with an escaped NUL, not an object or without
        every field goes to ``careful``.  Each decoded dict is dropped as soon
        as its row is taken: the batch's working set stays small.
        """
        loads = _fast_loads
        if loads is None:  # no orjson: every line takes the careful path
            careful += range(len(lines))
            return [], []
        raw = [line for _, line in lines]
        nul = _NUL_ESCAPE
        if nul in b"".join(raw):
            careful += [i for i, line in enumerate(raw) if nul in line]
            raw = [b"null" if nul in line else line for line in raw]  # not an object: skipped below
        try:
            plain: list[Any] = list(map(_row_of_dict, map(loads, raw)))
        except ValueError:  # some line is not JSON orjson reads; find which, one at a time
            plain = []
            for i, line in enumerate(raw):
                try:
                    plain.append(_row_of_dict(loads(line)))
                except ValueError:
                    plain.append(None)
                    careful.append(i)
        if None not in plain:
            return plain, list(range(len(plain)))
        index = [i for i, r in enumerate(plain) if r is not None]
        taken = set(careful)
        careful += [i for i, r in enumerate(plain) if r is None and i not in taken]
        return [plain[i] for i in index], index

    @staticmethod
    def _fix_ids_and_sources(
        rows: list[tuple[Any, ...]],
        index: list[int],
        lines: list[tuple[int, bytes]],
        *,
        source: str,
        fingerprint: str,
    ) -> None:
        """Give records without one of our ids a derived one, and records without a source ours."""
        i_id, i_src, i_ts = _COL["event_id"], _COL["source"], _COL["ts_start"]
        ids = _column(rows, "event_id")
        if None not in ids and set(map(len, ids)) == {32} and _HEX32_RUN.fullmatch("".join(ids)):
            fix_ids = False
        else:
            fix_ids = True
        sources = set(_column(rows, "source"))
        fix_sources = None in sources or "" in sources
        if not (fix_ids or fix_sources):
            return
        default_source = source or "jsonl"
        for k, row in enumerate(rows):
            event_id, src = row[i_id], row[i_src]
            if fix_ids and (event_id is None or len(event_id) != 32 or not _HEX32.fullmatch(event_id)):
                if event_id is None:
                    event_id = derived_event_id(row[i_ts], f"{fingerprint}:{lines[index[k]][0]}")
                else:  # non-empty: the signature and parse_line's checks keep "" out of here
                    event_id = derived_event_id(row[i_ts], "id:" + event_id)
            if fix_sources and not src:
                src = default_source
            if event_id is not row[i_id] or src is not row[i_src]:
                fixed = list(row)
                fixed[i_id], fixed[i_src] = event_id, src
                rows[k] = tuple(fixed)

    def parse_line(self, line: bytes, *, source: str, key: str, position: str, out: Parsed) -> None:
        try:
            d = decode_line(line)
            if type(d) is not dict:
                raise RecordError("not an object", f"a JSON {type(d).__name__}, not an event object")
            out.events.append(event_from_dict(d, key=key, source=source))
        except RecordError as exc:
            out.rejected.append(Rejected.of(source, position, exc.reason, line, key))


class OtlpFormat(LineFormat):
    """The OpenTelemetry Collector file exporter: one OTLP JSON export request per line."""

    name = "otlp"

    def _parse(self, value: Any, *, source: str, key: str, position: str, out: Parsed) -> None:
        otlp_request_to_events(value, source=source, position=position, out=out, key=key)


class MappedFormat(LineFormat):
    """Any JSON log, read through a :class:`FieldMapping`."""

    def __init__(self, mapping: FieldMapping) -> None:
        self.mapping = mapping
        self.name = mapping.name

    def _parse(self, value: Any, *, source: str, key: str, position: str, out: Parsed) -> None:
        out.events.append(self.mapping.to_event(value, key=key, source=source))


FORMAT_NAMES: tuple[str, ...] = ("event", "otlp", *PRESETS)


def get_format(name: str) -> LineFormat:
    """A format by name (``event``, ``otlp``, a preset) or a mapping file path (``.json``/``.yaml``)."""
    if name == "event":
        return EventFormat()
    if name == "otlp":
        return OtlpFormat()
    if name in PRESETS:
        return MappedFormat(PRESETS[name])
    path = Path(name)
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        return MappedFormat(FieldMapping.load(path))
    raise MappingError(
        f"unknown format {name!r}: use one of {', '.join(FORMAT_NAMES)}, or a mapping file (.json/.yaml)"
    )


def detect_format(lines: Iterable[bytes]) -> LineFormat | None:
    """Guess a file's format from its first lines; ``None`` when no line looks like a known one."""
    for line in lines:
        if not line.strip():
            continue
        try:
            value = decode_line(line)
        except RecordError:
            continue
        if not isinstance(value, dict):
            continue
        if any(k in value for k in ("resourceSpans", "resourceMetrics", "resourceLogs")):
            return OtlpFormat()
        if "ts_start" in value and ("event_id" in value or "provider" in value or "model" in value):
            return EventFormat()
        if "call_type" in value and ("startTime" in value or "response_cost" in value):
            return MappedFormat(PRESETS["litellm"])
        if value.get("object") == "chat.completion" and "usage" in value:
            return MappedFormat(PRESETS["openai-response"])
    return None


Reader = Callable[[bytes], Any]

__all__ = [
    "FORMAT_NAMES",
    "PRESETS",
    "REASONS",
    "EventFormat",
    "FieldMapping",
    "FieldSpec",
    "LineFormat",
    "MappedFormat",
    "MappingError",
    "OtlpFormat",
    "Parsed",
    "RecordError",
    "any_value",
    "attributes",
    "compile_path",
    "decode_line",
    "detect_format",
    "estimate_cost",
    "event_from_dict",
    "failure_of_error_type",
    "get_format",
    "otlp_request_to_events",
    "parse_time",
    "span_is_genai",
    "span_to_event",
]
