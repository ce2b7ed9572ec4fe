"""The providers' own usage and cost figures: OpenAI organization usage and costs, Anthropic reports.

Each poll fetches daily buckets for a window (``backfill_days`` the first time,
``lookback_days`` after that: providers revise recent days) from

- OpenAI: ``GET /v1/organization/usage/completions`` and ``.../usage/embeddings``
  (``group_by[]=model``) and ``GET /v1/organization/costs``
  (``group_by[]=line_item``; a line item ``"gpt-4o-mini, input"`` is cost of
  that model), amounts in dollars;
- Anthropic: ``GET /v1/organizations/usage_report/messages``
  (``group_by[]=model``) and ``GET /v1/organizations/cost_report``
  (``group_by[]=description``), amounts as decimal strings in **cents**;

follows their pages, and replaces the provider's figures for that window in
``provider_usage`` (one transaction: a failed fetch changes nothing).  Input
tokens are stored as the total input, cached and cache-write included, for
both providers.  :func:`storage.queries.series.reconcile` sets them beside
our own events.

Admin keys come from the keyring (or ``env:VAR``) through
``app.secrets.resolve_key_ref(ref, provider, KeyKind.ADMIN)`` at the moment of
use; they never appear in a status, an error or a log line.  Failures back off
like the HTTP poll source and show as ``failing`` with the last error.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
from sqlalchemy import Engine

from app.sources.base import BatchSink, SourceState, SourceStatus
from app.sources.http_poll import Backoff, PollError, PollHealth, PollStatus, safe_url
from storage.queries.provider_usage import UsageFigure, list_usage, replace_usage

log = logging.getLogger(__name__)

DAY = 86_400
PROVIDER_KINDS = ("openai", "anthropic")
DEFAULT_BASE_URLS = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
ANTHROPIC_VERSION = "2023-06-01"
_MAX_PAGES = 100  # per endpoint and poll: a provider that keeps saying has_more is not followed for ever


@dataclass(frozen=True)
class UsageApiConfig:
    """One provider account's usage/cost polling (settings of a ``usage_api`` source)."""

    provider: str  # the provider's name in the store: what ``provider_usage.provider`` says
    kind: str  # openai | anthropic
    base_url: str | None = None  # as the provider's SDK takes it; None: the public endpoint
    admin_key: str = "keyring"  # a reference, never the key
    interval_s: float = 3600.0
    lookback_days: int = 7
    backfill_days: int = 30
    timeout_s: float = 30.0
    backoff_base_s: float = 5.0
    max_backoff_s: float = 1800.0

    def __post_init__(self) -> None:
        problems = []
        if self.kind not in PROVIDER_KINDS:
            problems.append(
                f"kind must be one of {', '.join(PROVIDER_KINDS)} (usage APIs exist only for them)"
            )
        if not (self.admin_key in ("keyring", "none") or self.admin_key.startswith(("keyring:", "env:"))):
            problems.append("admin_key must be a reference (keyring or env:VAR), never the key")
        for name in ("interval_s", "timeout_s", "backoff_base_s", "max_backoff_s"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or v <= 0:
                problems.append(f"{name} must be a positive number of seconds")
        for name in ("lookback_days", "backfill_days"):
            v = getattr(self, name)
            if type(v) is not int or not 1 <= v <= 400:
                problems.append(f"{name} must be a whole number of days from 1 to 400")
        if problems:
            raise ValueError(f"usage source for {self.provider!r}: " + "; ".join(problems))

    @property
    def root(self) -> str:
        return (self.base_url or DEFAULT_BASE_URLS[self.kind]).rstrip("/")


def _rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any, where: str) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()
    raise PollError(f"{where}: a bucket time {value!r} is neither unix seconds nor RFC 3339")


def _int(value: Any) -> int:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 0


class UsagePoller:
    """Polls one provider's usage and cost APIs into ``provider_usage``.  A :class:`app.sources.base.Source`."""

    kind = "usage_api"

    def __init__(
        self,
        name: str,
        config: UsageApiConfig,
        engine: Engine,
        *,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.engine = engine
        self.detail = PollStatus()
        self.figures = 0  # rows stored by the last successful poll
        self._clock = clock
        self._backoff = Backoff(config.backoff_base_s, config.max_backoff_s, rng)
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._key: str | None = None
        self._key_loaded = False
        self._backfilled: bool | None = None
        self._window: tuple[float, float] | None = None

    # -- the Source protocol ----------------------------------------------------------------
    def status(self) -> SourceStatus:
        d = self.detail
        state = {
            PollHealth.STARTING: SourceState.STARTING,
            PollHealth.CONNECTED: SourceState.RUNNING,
            PollHealth.LAGGING: SourceState.RUNNING,
            PollHealth.FAILING: SourceState.ERROR,
            PollHealth.STOPPED: SourceState.STOPPED,
        }[d.health]
        text = f"{d.health.value} · {self.config.kind} usage and costs of {self.config.provider}"
        if self._window is not None and d.last_success_at is not None:
            days = round((self._window[1] - self._window[0]) / DAY)
            text += f" · {self.figures:,} figures over {days} days"
        if d.health is PollHealth.FAILING and d.next_attempt_at is not None:
            text += f" · attempt {d.consecutive_failures} failed, retry in {max(0.0, d.next_attempt_at - time.time()):.0f} s"
        return SourceStatus(
            self.name, self.kind, state, self.figures, 0, 0, d.last_error, d.last_success_at, text
        )

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is None or stop is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(stop.set)

    async def run(self, sink: BatchSink | None = None) -> None:
        """Poll until :meth:`stop`.  (The figures go to the store directly, not through ``sink``.)"""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            async with httpx.AsyncClient(
                timeout=self.config.timeout_s, follow_redirects=False, trust_env=False
            ) as client:
                while not self._stop.is_set():
                    delay = await self.poll_once(client)
                    self.detail.next_attempt_at = time.time() + delay
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            self.detail.health = PollHealth.STOPPED
            self.detail.next_attempt_at = None

    # -- one poll ------------------------------------------------------------------------------
    async def poll_once(self, client: httpx.AsyncClient) -> float:
        """Fetch the window and store it; return the seconds until the next poll."""
        d = self.detail
        d.polls += 1
        d.last_attempt_at = time.time()
        try:
            since, until = await self._next_window()
            figures = await self.fetch(client, since, until)
            stored = await asyncio.to_thread(
                replace_usage, self.engine, self.config.provider, since, until, figures
            )
        except PollError as exc:
            if exc.auth:
                self._key_loaded = False
            d.consecutive_failures += 1
            d.last_error = self._redact(exc.message)
            d.health = PollHealth.FAILING
            delay = self._backoff.next_delay(exc.retry_after)
            log.warning("source %s: %s (retry in %.1f s)", self.name, d.last_error, delay)
            return delay
        except Exception as exc:  # the store refused (locked, gone): retried like a remote failure
            d.consecutive_failures += 1
            d.last_error = self._redact(f"could not store the figures, will retry: {exc}")
            d.health = PollHealth.FAILING
            return self._backoff.next_delay()
        self._backfilled = True
        self._window = (since, until)
        self.figures = stored
        self._backoff.reset()
        d.consecutive_failures = 0
        d.last_error = None
        d.last_success_at = time.time()
        d.health = PollHealth.CONNECTED
        d.pages += 1
        d.records += len(figures)
        return self.config.interval_s

    async def _next_window(self) -> tuple[float, float]:
        now = self._clock()
        until = (math.floor(now / DAY) + 1) * DAY  # through the end of today (UTC): today is partial
        if self._backfilled is None:
            held = await asyncio.to_thread(list_usage, self.engine, self.config.provider)
            self._backfilled = bool(held)
        days = self.config.lookback_days if self._backfilled else self.config.backfill_days
        return until - days * DAY, until

    async def _admin_key(self) -> str:
        if not self._key_loaded:
            from app.secrets import KeyKind, resolve_key_ref

            try:
                key = await asyncio.to_thread(
                    resolve_key_ref, self.config.admin_key, self.config.provider, KeyKind.ADMIN
                )
            except Exception as exc:  # SecretsUnavailable, a bad reference: the message never holds a key
                raise PollError(f"no admin key for {self.config.provider}: {exc}") from None
            if not key:
                raise PollError(
                    f"no admin key for {self.config.provider}: its usage and cost APIs need one "
                    f"(`controlroom keys set {self.config.provider} --admin`)"
                )
            self._key, self._key_loaded = key, True
        assert self._key is not None
        return self._key

    def _redact(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "***")
        return text[:1000]

    async def fetch(self, client: httpx.AsyncClient, since: float, until: float) -> list[UsageFigure]:
        """The provider's figures for daily buckets in ``[since, until)``, merged per day and model."""
        key = await self._admin_key()
        acc: dict[tuple[float, str], dict[str, Any]] = {}
        if self.config.kind == "openai":
            await self._openai(client, key, since, until, acc)
        else:
            await self._anthropic(client, key, since, until, acc)
        return [
            UsageFigure(
                provider=self.config.provider,
                bucket_start=day,
                bucket_width=DAY,
                model=model,
                input_tokens=v["input"],
                output_tokens=v["output"],
                cached_tokens=v["cached"],
                cache_write_tokens=v["cache_write"],
                requests=v["requests"],
                cost_usd=float(v["cost"]) if v["cost"] is not None else None,
            )
            for (day, model), v in sorted(acc.items())
            if since <= day < until
        ]

    # -- OpenAI ------------------------------------------------------------------------------------
    async def _openai(
        self,
        client: httpx.AsyncClient,
        key: str,
        since: float,
        until: float,
        acc: dict[tuple[float, str], dict[str, Any]],
    ) -> None:
        headers = {"Authorization": f"Bearer {key}"}
        window = {"start_time": int(since), "end_time": int(until), "bucket_width": "1d"}
        for endpoint in ("completions", "embeddings"):
            params = {**window, "group_by[]": "model", "limit": 31}
            async for bucket in self._pages(client, f"/organization/usage/{endpoint}", params, headers):
                day = _day(_parse_time(bucket.get("start_time"), f"usage/{endpoint}"))
                for r in _results(bucket):
                    v = _cell(acc, day, str(r.get("model") or ""))
                    v["input"] += _int(r.get("input_tokens"))
                    v["output"] += _int(r.get("output_tokens"))
                    v["cached"] += _int(r.get("input_cached_tokens"))
                    v["requests"] += _int(r.get("num_model_requests"))
        params = {**window, "group_by[]": "line_item", "limit": 180}
        async for bucket in self._pages(client, "/organization/costs", params, headers):
            day = _day(_parse_time(bucket.get("start_time"), "costs"))
            for r in _results(bucket):
                amount = _mapping(r.get("amount"))
                currency = str(amount.get("currency") or "usd").lower()
                if currency != "usd":
                    raise PollError(f"OpenAI reports costs in {currency.upper()}; only USD is reconciled")
                value = _decimal(amount.get("value"), "costs amount.value")
                item = r.get("line_item")
                # "gpt-4o-mini-2024-07-18, input": the model, then the kind of tokens.
                model = str(item).rsplit(", ", 1)[0] if item else ""
                v = _cell(acc, day, model)
                v["cost"] = (v["cost"] or Decimal(0)) + value

    # -- Anthropic ---------------------------------------------------------------------------------
    async def _anthropic(
        self,
        client: httpx.AsyncClient,
        key: str,
        since: float,
        until: float,
        acc: dict[tuple[float, str], dict[str, Any]],
    ) -> None:
        headers = {"x-api-key": key, "anthropic-version": ANTHROPIC_VERSION}
        window = {
            "starting_at": _rfc3339(since),
            "ending_at": _rfc3339(until),
            "bucket_width": "1d",
            "limit": 31,
        }
        params = {**window, "group_by[]": "model"}
        async for bucket in self._pages(client, "/v1/organizations/usage_report/messages", params, headers):
            day = _day(_parse_time(bucket.get("starting_at"), "usage_report"))
            for r in _results(bucket):
                creation = _mapping(r.get("cache_creation"))
                write = _int(creation.get("ephemeral_5m_input_tokens")) + _int(
                    creation.get("ephemeral_1h_input_tokens")
                )
                read = _int(r.get("cache_read_input_tokens"))
                v = _cell(acc, day, str(r.get("model") or ""))
                v["input"] += _int(r.get("uncached_input_tokens")) + read + write
                v["cached"] += read
                v["cache_write"] += write
                v["output"] += _int(r.get("output_tokens"))
        params = {**window, "group_by[]": "description"}
        async for bucket in self._pages(client, "/v1/organizations/cost_report", params, headers):
            day = _day(_parse_time(bucket.get("starting_at"), "cost_report"))
            for r in _results(bucket):
                currency = str(r.get("currency") or "USD").upper()
                if currency != "USD":
                    raise PollError(f"Anthropic reports costs in {currency}; only USD is reconciled")
                cents = _decimal(r.get("amount"), "cost_report amount")
                v = _cell(acc, day, str(r.get("model") or ""))
                v["cost"] = (v["cost"] or Decimal(0)) + cents / 100

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _pages(
        self, client: httpx.AsyncClient, path: str, params: dict[str, Any], headers: dict[str, str]
    ) -> Any:
        url = self.config.root + path
        where = safe_url(url)
        page: str | None = None
        for _ in range(_MAX_PAGES):
            query = {**params, **({"page": page} if page else {})}
            try:
                response = await client.get(url, params=query, headers=headers)
            except httpx.TimeoutException:
                raise PollError(f"{where}: no answer within {self.config.timeout_s:g} s") from None
            except httpx.ConnectError as exc:
                raise PollError(f"cannot connect to {where}: {str(exc).splitlines()[0][:300]}") from None
            except httpx.HTTPError as exc:
                raise PollError(f"{where}: {type(exc).__name__}: {str(exc)[:300]}") from None
            body = _json(response, where)
            data = body.get("data")
            if not isinstance(data, list):
                raise PollError(f"{where}: the answer has no list of buckets ('data')")
            for bucket in data:
                if isinstance(bucket, Mapping):
                    yield bucket
            page = body.get("next_page") if body.get("has_more") else None
            if not page:
                return
        raise PollError(f"{where}: still more pages after {_MAX_PAGES}; narrow lookback_days")


def _json(response: httpx.Response, where: str) -> dict[str, Any]:
    status = response.status_code
    message = _error_message(response)
    if status in (401, 403):
        raise PollError(
            f"{where} refused the admin key (HTTP {status}{': ' + message if message else ''}); "
            "usage and cost APIs need an organization admin key",
            auth=True,
        )
    if status == 429 or status >= 500:
        retry = response.headers.get("retry-after")
        try:
            hint = float(retry) if retry else None
        except ValueError:
            hint = None
        raise PollError(
            f"{where} answered HTTP {status}{': ' + message if message else ''}", retry_after=hint
        )
    if status != 200:
        raise PollError(f"{where} answered HTTP {status}{': ' + message if message else ''}")
    try:
        body = response.json()
    except ValueError:
        raise PollError(f"{where} sent a body that is not JSON: {response.text[:200]!r}") from None
    if not isinstance(body, dict):
        raise PollError(f"{where}: expected a JSON object, got a {type(body).__name__}")
    return body


def _error_message(response: httpx.Response) -> str:
    if response.status_code < 400:
        return ""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, Mapping):
        return str(err.get("message") or err.get("type") or "")[:300]
    return str(body)[:200]


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _results(bucket: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    results = bucket.get("results")
    return [r for r in results if isinstance(r, Mapping)] if isinstance(results, list) else []


def _day(ts: float) -> float:
    return math.floor(ts / DAY) * DAY


def _cell(acc: dict[tuple[float, str], dict[str, Any]], day: float, model: str) -> dict[str, Any]:
    v = acc.get((day, model))
    if v is None:
        v = acc[(day, model)] = {
            "input": 0,
            "output": 0,
            "cached": 0,
            "cache_write": 0,
            "requests": 0,
            "cost": None,
        }
    return v


def _decimal(value: Any, where: str) -> Decimal:
    try:
        d = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise PollError(f"{where}: {value!r} is not a number") from None
    if not d.is_finite():
        raise PollError(f"{where}: {value!r} is not a finite number")
    return d


__all__ = ["DEFAULT_BASE_URLS", "UsageApiConfig", "UsagePoller"]
