"""The providers' usage and cost reports, computed from the ledger's per-minute rollups.

OpenAI: ``GET /v1/organization/usage/completions``, ``/v1/organization/usage/embeddings``
and ``/v1/organization/costs`` (unix seconds, ``amount.value`` in dollars).
Anthropic: ``GET /v1/organizations/usage_report/messages`` and
``/v1/organizations/cost_report`` (RFC 3339 times, ``amount`` a decimal string
in cents).  Buckets snap to the start of their minute, hour or UTC day; every
bucket in range is listed, empty ones with no results; ``limit`` and
``page``/``next_page`` paginate.  Only billed traffic counts (see ledger.py).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from app.sim.ledger import Ledger, Rollup, RollupKey
from app.sim.wire import ApiError, bearer, json_response, key_is_invalid

_WIDTH = {"1m": 60, "1h": 3600, "1d": 86400}
#: (default, max) number of buckets per page, as the providers document them.
_LIMITS = {"1m": (60, 1440), "1h": (24, 168), "1d": (7, 31)}


class _Bad(Exception):
    pass


def _page_token(start: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(start).encode()).decode().rstrip("=")


def _page_start(token: str) -> int:
    raw = token.removeprefix("page_")
    try:
        return int(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode())
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise _Bad(f"page: not a cursor this server issued: {token!r}") from exc


def _buckets(
    start: float,
    end: float | None,
    width_name: str,
    *,
    limit_raw: str | None,
    page: str | None,
    max_limit: int | None,
) -> tuple[list[tuple[int, int]], str | None]:
    if width_name not in _WIDTH:
        raise _Bad(f"bucket_width: must be one of {', '.join(_WIDTH)}, got {width_name!r}")
    width = _WIDTH[width_name]
    default, maximum = _LIMITS[width_name]
    maximum = max_limit or maximum
    try:
        limit = int(limit_raw) if limit_raw is not None else default
    except ValueError as exc:
        raise _Bad(f"limit: not an integer: {limit_raw!r}") from exc
    if not 1 <= limit <= maximum:
        raise _Bad(f"limit: must be within 1..{maximum} for bucket_width={width_name}, got {limit}")
    first = int(start // width) * width
    if page:
        first = _page_start(page)
    stop = end if end is not None else (time.time() // width + 1) * width
    out: list[tuple[int, int]] = []
    b = first
    while b < stop and len(out) < limit:
        out.append((b, b + width))
        b += width
    return out, (_page_token(b) if b < stop else None)


def _query_list(request: web.Request, name: str) -> list[str]:
    return [*request.query.getall(f"{name}[]", []), *request.query.getall(name, [])]


def _cells(
    ledger: Ledger, provider: str, kinds: Iterable[str], buckets: list[tuple[int, int]]
) -> dict[int, list[tuple[RollupKey, Rollup]]]:
    """Rollup cells per bucket start."""
    by_bucket: dict[int, list[tuple[RollupKey, Rollup]]] = defaultdict(list)
    if not buckets:
        return by_bucket
    lo, hi = buckets[0][0], buckets[-1][1]
    width = buckets[0][1] - buckets[0][0]
    for kind in kinds:
        for key, cell in ledger.rollups(provider, kind, lo, hi):
            by_bucket[lo + (key[0] - lo) // width * width].append((key, cell))
    return by_bucket


def _group(
    cells: list[tuple[RollupKey, Rollup]], fields: Callable[[RollupKey], tuple[Any, ...]]
) -> dict[tuple[Any, ...], Rollup]:
    groups: dict[tuple[Any, ...], Rollup] = {}
    for key, cell in cells:
        g = groups.setdefault(fields(key), Rollup())
        g.requests += cell.requests
        g.input_tokens += cell.input_tokens
        g.cache_read_tokens += cell.cache_read_tokens
        g.cache_write_tokens += cell.cache_write_tokens
        g.cache_write_1h_tokens += cell.cache_write_1h_tokens
        g.output_tokens += cell.output_tokens
        for item, usd in cell.cost.items():
            g.cost[item] = g.cost.get(item, 0.0) + usd
    return groups


# --- OpenAI ------------------------------------------------------------------------------------------


class OpenAIReports:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/organization/usage/completions", self.completions),
            web.get("/v1/organization/usage/embeddings", self.embeddings),
            web.get("/v1/organization/costs", self.costs),
        ]

    def _common(
        self, request: web.Request, *, costs: bool
    ) -> tuple[list[tuple[int, int]], str | None, set[str]]:
        key = bearer(request)
        if key is None or key_is_invalid(key):
            raise ApiError(
                401,
                {
                    "error": {
                        "message": "Invalid admin API key.",
                        "type": "invalid_request_error",
                        "param": None,
                        "code": "invalid_api_key",
                    }
                },
            )
        q = request.query
        try:
            try:
                start = int(q["start_time"])
                end = int(q["end_time"]) if "end_time" in q else None
            except KeyError as exc:
                raise _Bad("start_time: required (unix seconds)") from exc
            except ValueError as exc:
                raise _Bad("start_time/end_time: must be unix seconds") from exc
            width = q.get("bucket_width", "1d")
            if costs and width != "1d":
                raise _Bad("bucket_width: only 1d is supported for costs")
            buckets, next_page = _buckets(
                start,
                end,
                width,
                limit_raw=q.get("limit"),
                page=q.get("page"),
                max_limit=180 if costs else None,
            )
        except _Bad as exc:
            raise ApiError(
                400,
                {
                    "error": {
                        "message": str(exc),
                        "type": "invalid_request_error",
                        "param": None,
                        "code": None,
                    }
                },
            ) from exc
        return buckets, next_page, set(_query_list(request, "group_by"))

    def _page(
        self, buckets: list[tuple[int, int]], results: dict[int, list[dict[str, Any]]], nxt: str | None
    ) -> Any:
        data = [
            {"object": "bucket", "start_time": s, "end_time": e, "results": results.get(s, [])}
            for s, e in buckets
        ]
        return {"object": "page", "data": data, "has_more": nxt is not None, "next_page": nxt}

    async def completions(self, request: web.Request) -> web.Response:
        return self._usage(request, "completions")

    async def embeddings(self, request: web.Request) -> web.Response:
        return self._usage(request, "embeddings")

    def _usage(self, request: web.Request, kind: str) -> web.Response:
        try:
            buckets, nxt, group_by = self._common(request, costs=False)
        except ApiError as exc:
            return exc.response()
        models = set(_query_list(request, "models"))
        keys = set(_query_list(request, "api_key_ids"))
        results: dict[int, list[dict[str, Any]]] = {}
        for start, bucket_cells in _cells(self.ledger, "openai", [kind], buckets).items():
            cells = [
                (k, c)
                for k, c in bucket_cells
                if (not models or k[3] in models) and (not keys or k[4] in keys)
            ]
            groups = _group(
                cells,
                lambda k: (k[3] if "model" in group_by else None, k[4] if "api_key_id" in group_by else None),
            )
            out = []
            for (model, key), g in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1]))):
                row: dict[str, Any] = {
                    "object": f"organization.usage.{kind}.result",
                    "input_tokens": g.input_tokens + g.cache_read_tokens,
                    "num_model_requests": g.requests,
                    "project_id": "proj_sim" if "project_id" in group_by else None,
                    "user_id": None,
                    "api_key_id": key,
                    "model": model,
                }
                if kind == "completions":
                    row.update(
                        output_tokens=g.output_tokens,
                        input_cached_tokens=g.cache_read_tokens,
                        input_audio_tokens=0,
                        output_audio_tokens=0,
                        batch=False if "batch" in group_by else None,
                        service_tier="default" if "service_tier" in group_by else None,
                    )
                out.append(row)
            results[start] = out
        return json_response(self._page(buckets, results, nxt))

    async def costs(self, request: web.Request) -> web.Response:
        try:
            buckets, nxt, group_by = self._common(request, costs=True)
        except ApiError as exc:
            return exc.response()
        labels = {
            "input": "input",
            "cached_input": "cached input",
            "cache_write": "cache write",
            "output": "output",
        }
        results: dict[int, list[dict[str, Any]]] = {}
        for start, cells in _cells(self.ledger, "openai", ["completions", "embeddings"], buckets).items():
            amounts: dict[str | None, float] = defaultdict(float)
            for key, cell in cells:
                for item, usd in cell.cost.items():
                    amounts[f"{key[3]}, {labels[item]}" if "line_item" in group_by else None] += usd
            results[start] = [
                {
                    "object": "organization.costs.result",
                    "amount": {"value": usd, "currency": "usd"},
                    "line_item": item,
                    "project_id": "proj_sim" if "project_id" in group_by else None,
                }
                for item, usd in sorted(amounts.items(), key=lambda kv: str(kv[0]))
            ]
        return json_response(self._page(buckets, results, nxt))


# --- Anthropic ---------------------------------------------------------------------------------------


def _rfc3339(ts: int) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(raw: str, name: str) -> float:
    try:
        dt = datetime.fromisoformat(raw.replace("Z", "+00:00"))
    except ValueError as exc:
        raise _Bad(f"{name}: not an RFC 3339 time: {raw!r}") from exc
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def cents(usd: float) -> str:
    """Dollars as Anthropic's cost amount: a decimal string in cents."""
    # Rounded to 1e-9 cents: sums of float prices carry noise like 0.0015000000000000002.
    value = Decimal(repr(round(usd * 100, 9))).normalize()
    return "0" if value == 0 else format(value, "f")


_TOKEN_TYPES = (
    ("uncached_input_tokens", "input", "Input Tokens"),
    ("output_tokens", "output", "Output Tokens"),
    ("cache_read_input_tokens", "cached_input", "Cache Read"),
)


class AnthropicReports:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/organizations/usage_report/messages", self.usage),
            web.get("/v1/organizations/cost_report", self.cost),
        ]

    def _common(
        self, request: web.Request, *, cost: bool
    ) -> tuple[list[tuple[int, int]], str | None, set[str]]:
        key = request.headers.get("x-api-key") or bearer(request)
        if not key or key_is_invalid(key):
            raise ApiError(
                401,
                {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}},
            )
        q = request.query
        try:
            if "starting_at" not in q:
                raise _Bad("starting_at: Field required")
            start = _parse_time(q["starting_at"], "starting_at")
            end = _parse_time(q["ending_at"], "ending_at") if "ending_at" in q else None
            width = q.get("bucket_width", "1d")
            if cost and width != "1d":
                raise _Bad("bucket_width: Input should be '1d'")
            buckets, nxt = _buckets(
                start, end, width, limit_raw=q.get("limit"), page=q.get("page"), max_limit=None
            )
        except _Bad as exc:
            raise ApiError(
                400, {"type": "error", "error": {"type": "invalid_request_error", "message": str(exc)}}
            ) from exc
        return buckets, nxt, set(_query_list(request, "group_by"))

    @staticmethod
    def _page(
        buckets: list[tuple[int, int]], results: dict[int, list[dict[str, Any]]], nxt: str | None
    ) -> Any:
        data = [
            {"starting_at": _rfc3339(s), "ending_at": _rfc3339(e), "results": results.get(s, [])}
            for s, e in buckets
        ]
        return {"data": data, "has_more": nxt is not None, "next_page": nxt}

    async def usage(self, request: web.Request) -> web.Response:
        try:
            buckets, nxt, group_by = self._common(request, cost=False)
        except ApiError as exc:
            return exc.response()
        models = set(_query_list(request, "models"))
        keys = set(_query_list(request, "api_key_ids"))
        results: dict[int, list[dict[str, Any]]] = {}
        for start, bucket_cells in _cells(self.ledger, "anthropic", ["completions"], buckets).items():
            cells = [
                (k, c)
                for k, c in bucket_cells
                if (not models or k[3] in models) and (not keys or k[4] in keys)
            ]
            groups = _group(
                cells,
                lambda k: (k[3] if "model" in group_by else None, k[4] if "api_key_id" in group_by else None),
            )
            results[start] = [
                {
                    "uncached_input_tokens": g.input_tokens,
                    "cache_creation": {
                        "ephemeral_1h_input_tokens": g.cache_write_1h_tokens,
                        "ephemeral_5m_input_tokens": g.cache_write_tokens - g.cache_write_1h_tokens,
                    },
                    "cache_read_input_tokens": g.cache_read_tokens,
                    "output_tokens": g.output_tokens,
                    "server_tool_use": {"web_search_requests": 0},
                    "api_key_id": key,
                    "workspace_id": None,
                    "model": model,
                    "service_tier": "standard" if "service_tier" in group_by else None,
                    "context_window": "0-200k" if "context_window" in group_by else None,
                }
                for (model, key), g in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), str(kv[0][1])))
            ]
        return json_response(self._page(buckets, results, nxt))

    async def cost(self, request: web.Request) -> web.Response:
        try:
            buckets, nxt, group_by = self._common(request, cost=True)
        except ApiError as exc:
            return exc.response()
        by_description = "description" in group_by
        results: dict[int, list[dict[str, Any]]] = {}
        for start, cells in _cells(self.ledger, "anthropic", ["completions"], buckets).items():
            rows: list[dict[str, Any]] = []
            if not by_description:
                total = sum(usd for _k, c in cells for usd in c.cost.values())
                rows.append(_cost_row(total))
            else:
                for (model,), g in sorted(_group(cells, lambda k: (k[3],)).items()):
                    for token_type, item, label in _TOKEN_TYPES:
                        if item in g.cost:
                            rows.append(_cost_row(g.cost[item], model, token_type, label))
                    write = g.cost.get("cache_write", 0.0)
                    if write:
                        share_1h = (
                            g.cache_write_1h_tokens / g.cache_write_tokens if g.cache_write_tokens else 0.0
                        )
                        if share_1h < 1.0:
                            rows.append(
                                _cost_row(
                                    write * (1 - share_1h),
                                    model,
                                    "cache_creation.ephemeral_5m_input_tokens",
                                    "Cache Write (5m)",
                                )
                            )
                        if share_1h > 0.0:
                            rows.append(
                                _cost_row(
                                    write * share_1h,
                                    model,
                                    "cache_creation.ephemeral_1h_input_tokens",
                                    "Cache Write (1h)",
                                )
                            )
            results[start] = rows
        return json_response(self._page(buckets, results, nxt))


def _cost_row(
    usd: float, model: str | None = None, token_type: str | None = None, label: str = ""
) -> dict[str, Any]:
    return {
        "currency": "USD",
        "amount": cents(usd),
        "workspace_id": None,
        "description": f"{model} Usage - {label}" if model else None,
        "cost_type": "tokens" if model else None,
        "context_window": "0-200k" if model else None,
        "model": model,
        "service_tier": "standard" if model else None,
        "token_type": token_type,
    }
