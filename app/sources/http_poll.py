"""Poll a remote HTTP endpoint that serves records as JSON or NDJSON, with a cursor.

Each poll is ``GET URL?{cursor_param}={cursor}`` (no cursor on the very first
poll, unless ``initial_cursor`` is set).  The answer is either

- JSON: a list of records, or an object holding the records (``records_field``,
  or the first of ``data``/``events``/``records``/``items``), the next cursor
  (``cursor_field``, default ``next_cursor``) and ``has_more``; or
- NDJSON (``application/x-ndjson``, ``application/jsonl``, ``text/plain``):
  one record per line.

The next cursor comes from the ``X-Next-Cursor`` header, else the body's
cursor field, else ``cursor_record_field`` of the last record (e.g.
``ts_start``).  While the endpoint says there is more, pages follow at once
(up to ``max_pages_per_poll``, then the source reports it is lagging).

Records are read with the same formats as files (``event``, ``otlp``, a
preset, a mapping file: :mod:`app.sources.formats`); a bad record is
quarantined with its reason, never dropped silently.  The cursor is committed
to the store in the same transaction as the page's events (as the source's
read position), so a restart resumes after the last stored page: nothing lost,
nothing twice.

When the remote fails (refused, timeout, 5xx, a body that is not JSON) the
source backs off exponentially with jitter up to ``max_backoff_s``, honouring
``Retry-After``; its status says ``failing`` with the last error until a poll
succeeds again.  A bearer token, when configured, is read from the keyring
(``token: keyring`` for the entry named like the source, ``keyring:ENTRY``)
or the environment (``env:VAR``), never from the config itself; it never
appears in a status, a log line or an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

import httpx

from app.sources.base import Batch, BatchSink, Position, SourceState, SourceStatus
from app.sources.formats import LineFormat, Parsed, compile_path, get_format

log = logging.getLogger(__name__)

_RECORD_FIELDS = ("data", "events", "records", "items")
_NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/x-jsonlines", "application/ndjson")
_CURSOR_IDENTITY = "http-cursor "  # + the endpoint URL: a cursor is only good for the URL that issued it


class PollHealth(StrEnum):
    """What the sources page shows for a polled source."""

    STARTING = "starting"
    CONNECTED = "connected"  # the last poll succeeded and found the endpoint caught up
    LAGGING = "lagging"  # polls succeed but pages keep coming faster than we read them
    FAILING = "failing"  # the last poll failed; retrying with backoff
    STOPPED = "stopped"


class PollError(Exception):
    """One failed poll.  ``retry_after``: the remote's own hint, in seconds."""

    def __init__(self, message: str, *, retry_after: float | None = None, auth: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.auth = auth


class Backoff:
    """Exponential backoff with jitter: the n-th failure waits between half and all of
    ``min(cap, base * 2**n)`` (never near zero, so a failing remote is not hammered)."""

    def __init__(self, base: float, cap: float, rng: random.Random | None = None) -> None:
        if base <= 0 or cap < base:
            raise ValueError("backoff needs 0 < base <= cap")
        self.base, self.cap = base, cap
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, hint: float | None = None) -> float:
        ceiling = min(self.cap, self.base * 2**self.failures)
        self.failures += 1
        delay: float = ceiling / 2 + self._rng.uniform(0, ceiling / 2)
        if hint is not None and hint > 0:
            delay = float(min(max(delay, hint), max(self.cap, hint)))
        return delay

    def reset(self) -> None:
        self.failures = 0


@dataclass(slots=True)
class PollStatus:
    """A polled source's health in detail (the UI's sources page; ``status()`` summarises it)."""

    health: PollHealth = PollHealth.STARTING
    last_error: str | None = None
    last_attempt_at: float | None = None
    last_success_at: float | None = None
    next_attempt_at: float | None = None
    consecutive_failures: int = 0
    behind_since: float | None = None  # when pages started outrunning us (lagging after lag_after_s)
    polls: int = 0
    pages: int = 0
    records: int = 0
    cursor: str | None = None


def resolve_token(ref: str | None, name: str) -> str | None:
    """A bearer token from its reference: ``keyring`` (entry ``name``), ``keyring:ENTRY``, ``env:VAR``, ``none``."""
    from app.secrets import KeyKind, resolve_key_ref

    if ref is None or ref == "none":
        return None
    if ref == "keyring":
        return resolve_key_ref("keyring", name, KeyKind.API)
    if ref.startswith("keyring:"):
        return resolve_key_ref("keyring", ref.split(":", 1)[1], KeyKind.API)
    if ref.startswith("env:"):
        return resolve_key_ref(ref, name, KeyKind.API)
    raise ValueError(f"unknown token reference {ref!r}: use keyring, keyring:ENTRY, env:VAR or none")


def safe_url(url: str) -> str:
    """The URL without user name or password: fit for a status line or an error."""
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class HttpPollConfig:
    """Settings of a polled endpoint (the ``settings`` of an ``http_poll`` source config)."""

    url: str
    format: str = "event"
    cursor_param: str = "cursor"
    cursor_field: str = "next_cursor"
    cursor_header: str = "X-Next-Cursor"
    cursor_record_field: str | None = None
    records_field: str | None = None
    has_more_field: str = "has_more"
    initial_cursor: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)
    token: str | None = None  # a reference, never the token
    interval_s: float = 10.0
    timeout_s: float = 10.0
    backoff_base_s: float = 1.0
    max_backoff_s: float = 300.0
    lag_after_s: float = 60.0
    max_pages_per_poll: int = 50
    max_response_bytes: int = 32 << 20

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], *, where: str = "http_poll") -> HttpPollConfig:
        """From a config mapping; every problem is listed in one ``ValueError``."""
        known = {f for f in cls.__dataclass_fields__}
        problems = [f"unknown setting {k!r}" for k in sorted(set(settings) - known)]
        url = settings.get("url")
        if not isinstance(url, str) or urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            problems.append("url must be an http:// or https:// URL")
        if "authorization" in {str(k).lower() for k in (settings.get("headers") or {})}:
            problems.append("headers must not hold an Authorization header: use token: keyring (or env:VAR)")
        token = settings.get("token")
        if token is not None and not (
            isinstance(token, str)
            and (token in ("keyring", "none") or token.startswith(("keyring:", "env:")))
        ):
            problems.append(
                "token must be a reference (keyring, keyring:ENTRY, env:VAR or none), never the token"
            )
        kwargs = {k: v for k, v in settings.items() if k in known}
        for name in ("interval_s", "timeout_s", "backoff_base_s", "max_backoff_s", "lag_after_s"):
            if name in kwargs:
                v = kwargs[name]
                if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                    problems.append(f"{name} must be a positive number of seconds")
        for name in ("max_pages_per_poll", "max_response_bytes"):
            if name in kwargs and (type(kwargs[name]) is not int or kwargs[name] <= 0):
                problems.append(f"{name} must be a positive integer")
        for name in ("params", "headers"):
            if name in kwargs and not isinstance(kwargs[name], Mapping):
                problems.append(f"{name} must be an object of strings")
        for name in ("cursor_field", "cursor_record_field", "records_field", "has_more_field"):
            value = kwargs.get(name)
            if value is not None:
                try:
                    compile_path(str(value))
                except ValueError as exc:
                    problems.append(f"{name}: {exc}")
        if isinstance(kwargs.get("format"), str):
            try:
                get_format(kwargs["format"])
            except ValueError as exc:
                problems.append(f"format: {exc}")
        if problems:
            raise ValueError(f"{where}: " + "; ".join(problems))
        return cls(**kwargs)


@dataclass(slots=True)
class _Page:
    records: list[Any]
    lines: list[bytes] | None  # NDJSON: the raw lines (excerpts for bad ones)
    next_cursor: str | None
    has_more: bool


class HttpPoller:
    """A polled remote endpoint.  A :class:`app.sources.base.Source`."""

    kind = "http_poll"

    def __init__(self, name: str, config: HttpPollConfig, *, rng: random.Random | None = None) -> None:
        self.name = name
        self.config = config
        self.key = f"http_poll:{name}"
        self.detail = PollStatus(cursor=config.initial_cursor)
        self._format: LineFormat = get_format(config.format)
        self._backoff = Backoff(config.backoff_base_s, config.max_backoff_s, rng)
        self._status = SourceStatus(name=name, kind=self.kind)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._token: str | None = None
        self._token_loaded = False
        self._resume_loaded = False

    # -- the Source protocol --------------------------------------------------------------
    def status(self) -> SourceStatus:
        s, d = self._status, self.detail
        state = {
            PollHealth.STARTING: SourceState.STARTING,
            PollHealth.CONNECTED: SourceState.RUNNING,
            PollHealth.LAGGING: SourceState.RUNNING,
            PollHealth.FAILING: SourceState.ERROR,
            PollHealth.STOPPED: SourceState.STOPPED,
        }[d.health]
        text = f"{d.health.value} · {safe_url(self.config.url)}"
        if d.health is PollHealth.FAILING and d.next_attempt_at is not None:
            text += f" · attempt {d.consecutive_failures} failed, retry in {max(0.0, d.next_attempt_at - time.time()):.0f} s"
        if d.health is PollHealth.LAGGING and d.behind_since is not None:
            text += f" · catching up for {time.time() - d.behind_since:.0f} s"
        text += f" · {d.records:,} records in {d.pages:,} pages"
        return SourceStatus(
            s.name, s.kind, state, s.ingested, s.duplicates, s.rejected, d.last_error, s.last_event_at, text
        )

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(stop.set)

    async def run(self, sink: BatchSink) -> None:
        """Poll until :meth:`stop`, handing each page to ``sink`` (a pipeline fits)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if not self._resume_loaded:
            await self._load_cursor(sink)
        try:
            async with httpx.AsyncClient(
                timeout=self.config.timeout_s, follow_redirects=False, trust_env=False
            ) as client:
                while not self._stop.is_set():
                    delay = await self.poll_once(client, sink)
                    self.detail.next_attempt_at = time.time() + delay
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            self.detail.health = PollHealth.STOPPED
            self.detail.next_attempt_at = None

    async def _load_cursor(self, sink: BatchSink) -> None:
        loader = getattr(sink, "load_position", None)
        if loader is not None:
            stored: Position | None = await asyncio.to_thread(loader, self.key)
            if stored is not None and stored.identity == _CURSOR_IDENTITY + safe_url(self.config.url):
                self.detail.cursor = stored.fingerprint or None
        self._resume_loaded = True

    # -- one poll --------------------------------------------------------------------------
    async def poll_once(self, client: httpx.AsyncClient, sink: BatchSink) -> float:
        """Read pages until caught up (or ``max_pages_per_poll``); return the seconds until the next poll."""
        d = self.detail
        d.polls += 1
        d.last_attempt_at = time.time()
        pages = 0
        try:
            while True:
                before = d.cursor
                page = await self._fetch(client, before)
                batch = self._to_batch(page, before)
                if len(batch) or batch.positions:
                    try:
                        result: Any = await sink(batch)
                    except Exception as exc:
                        raise PollError(f"the store could not take a page, will retry it: {exc}") from exc
                    self._count(result, len(batch))
                d.cursor = page.next_cursor if page.next_cursor is not None else before
                d.pages += 1
                d.records += len(page.records)
                pages += 1
                if not page.has_more:
                    d.behind_since = None
                    break
                if page.next_cursor is None or page.next_cursor == before:
                    raise PollError(
                        f"the endpoint says it has more but gave no new cursor (still {before!r}); "
                        f"set cursor_field, cursor_header or cursor_record_field"
                    )
                if pages >= self.config.max_pages_per_poll:
                    if d.behind_since is None:
                        d.behind_since = time.time()
                    break
        except PollError as exc:
            if exc.auth:
                self._token_loaded = False  # read the token again: it may have been replaced
            d.consecutive_failures += 1
            d.last_error = self._redact(exc.message)
            d.health = PollHealth.FAILING
            delay = self._backoff.next_delay(exc.retry_after)
            log.warning("source %s: %s (retry in %.1f s)", self.name, d.last_error, delay)
            return delay
        self._backoff.reset()
        d.consecutive_failures = 0
        d.last_error = None
        d.last_success_at = time.time()
        lagging = d.behind_since is not None and time.time() - d.behind_since >= self.config.lag_after_s
        d.health = PollHealth.LAGGING if lagging else PollHealth.CONNECTED
        return 0.0 if d.behind_since is not None else self.config.interval_s

    def _count(self, result: Any, n: int) -> None:
        s = self._status
        s.ingested += int(getattr(result, "ingested", 0))
        s.duplicates += int(getattr(result, "duplicates", 0))
        s.rejected += int(getattr(result, "rejected", 0))
        if n:
            s.last_event_at = time.time()

    async def _bearer(self) -> str | None:
        if not self._token_loaded:
            try:
                self._token = await asyncio.to_thread(resolve_token, self.config.token, self.name)
            except Exception as exc:  # SecretsUnavailable, an unknown reference: say it, never the key
                raise PollError(f"no token for {self.name}: {exc}") from None
            self._token_loaded = True
        return self._token

    def _redact(self, text: str) -> str:
        if self._token:
            text = text.replace(self._token, "***")
        return text[:1000]

    async def _fetch(self, client: httpx.AsyncClient, cursor: str | None) -> _Page:
        cfg = self.config
        params = dict(cfg.params)
        if cursor is not None:
            params[cfg.cursor_param] = cursor
        headers = {"Accept": "application/json, application/x-ndjson;q=0.9", **cfg.headers}
        token = await self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        where = safe_url(cfg.url)
        try:
            async with client.stream("GET", cfg.url, params=params, headers=headers) as response:
                body = await _read_limited(response, cfg.max_response_bytes, where)
        except httpx.TimeoutException:
            raise PollError(f"{where}: no answer within {cfg.timeout_s:g} s") from None
        except httpx.ConnectError as exc:
            raise PollError(f"cannot connect to {where}: {_reason(exc)}") from None
        except httpx.HTTPError as exc:
            raise PollError(f"{where}: {type(exc).__name__}: {_reason(exc)}") from None
        status = response.status_code
        if status in (401, 403):
            ref = cfg.token or "none"
            raise PollError(
                f"{where} refused the credentials (HTTP {status}); check the token reference {ref!r}",
                auth=True,
            )
        if status == 429 or status >= 500:
            raise PollError(
                f"{where} answered HTTP {status}: {_excerpt(body)}",
                retry_after=_retry_after(response.headers),
            )
        if status == 204:
            return _Page([], None, response.headers.get(cfg.cursor_header), False)
        if status != 200:
            raise PollError(f"{where} answered HTTP {status}: {_excerpt(body)}")
        return self._page(response, body, where)

    def _page(self, response: httpx.Response, body: bytes, where: str) -> _Page:
        cfg = self.config
        ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
        header_cursor = response.headers.get(cfg.cursor_header)
        lines: list[bytes] | None = None
        cursor: Any = None
        has_more = False
        if ctype in _NDJSON_TYPES or ctype == "text/plain":
            lines = [ln for ln in body.splitlines() if ln.strip()]
            records: list[Any] = [None] * len(lines)
        else:
            try:
                value = json.loads(body) if body.strip() else []
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                if isinstance(exc, json.JSONDecodeError) and exc.msg == "Extra data":
                    lines = [ln for ln in body.splitlines() if ln.strip()]  # NDJSON sent as application/json
                    records = [None] * len(lines)
                    value = None
                else:
                    raise PollError(
                        f"{where} sent a body that is not JSON or NDJSON: {_excerpt(body)}"
                    ) from None
            if lines is None:
                if isinstance(value, list):
                    records = value
                elif isinstance(value, dict):
                    records_key = cfg.records_field or next((k for k in _RECORD_FIELDS if k in value), None)
                    got = _lookup(value, records_key) if records_key else None
                    if not isinstance(got, list):
                        raise PollError(
                            f"{where}: the JSON object holds no list of records "
                            f"(looked for {records_key or ', '.join(_RECORD_FIELDS)}); set records_field"
                        )
                    records = got
                    cursor = _lookup(value, cfg.cursor_field)
                    has_more = bool(_lookup(value, cfg.has_more_field))
                else:
                    raise PollError(f"{where}: expected a JSON list or object, got a {type(value).__name__}")
        if header_cursor is not None:
            cursor = header_cursor
        if cursor is None and cfg.cursor_record_field:
            last = _last_record(records, lines)
            if isinstance(last, dict):
                cursor = _lookup(last, cfg.cursor_record_field)
        if has_more is False and response.headers.get("X-Has-More", "").lower() in ("1", "true", "yes"):
            has_more = True
        return _Page(records, lines, None if cursor is None else str(cursor), has_more)

    def _to_batch(self, page: _Page, cursor: str | None) -> Batch:
        parsed = Parsed()
        fmt = self._format
        for i in range(len(page.records)):
            line = page.lines[i] if page.lines is not None else _dumps(page.records[i])
            # Ids of records without one derive from the page's cursor and place: re-reading is idempotent.
            key = f"{self.key}:{cursor}:{i}"
            fmt.parse_line(
                line, source=self.name, key=key, position=f"page after {cursor!r} record {i + 1}", out=parsed
            )
        positions = []
        if page.next_cursor is not None and page.next_cursor != cursor:
            positions.append(
                Position(
                    self.key,
                    _CURSOR_IDENTITY + safe_url(self.config.url),
                    self.detail.pages + 1,
                    page.next_cursor,
                )
            )
        return Batch(events=parsed.events, rejected=parsed.rejected, positions=positions)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _last_record(records: list[Any], lines: list[bytes] | None) -> Any:
    if lines is not None:
        for line in reversed(lines):
            try:
                return json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
        return None
    return records[-1] if records else None


def _lookup(value: Any, path: str | None) -> Any:
    if not path:
        return None
    node = value
    for part in compile_path(path):
        if isinstance(part, int):
            if not isinstance(node, list) or not -len(node) <= part < len(node):
                return None
            node = node[part]
        else:
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
    return node


async def _read_limited(response: httpx.Response, limit: int, where: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > limit:
            raise PollError(f"{where}: the response is larger than {limit:,} bytes; ask for smaller pages")
        chunks.append(chunk)
    return b"".join(chunks)


def _retry_after(headers: httpx.Headers) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:300]


def _excerpt(body: bytes, limit: int = 200) -> str:
    text = body[:limit].decode("utf-8", errors="replace").replace("\n", " ").strip()
    return (text + "...") if len(body) > limit else (text or "(empty body)")


__all__ = [
    "Backoff",
    "HttpPollConfig",
    "HttpPoller",
    "PollError",
    "PollHealth",
    "PollStatus",
    "resolve_token",
    "safe_url",
]
