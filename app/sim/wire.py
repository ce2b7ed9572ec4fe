"""HTTP plumbing both provider faces share: errors, JSON bodies, paced SSE frames, dropped connections."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app.sim.engine import Decision, SimEngine
from app.sim.ledger import Served
from app.sim.scenario import Profile

#: Keys that start like this are refused with the provider's 401, so tests can check auth errors.
INVALID_KEY_PREFIXES = ("sk-invalid", "sk-ant-invalid")
#: A request header that forces one fault on that request (tests and demos; never sent by real clients).
FORCE_FAULT_HEADER = "x-sim-fault"
#: Model names that start like this answer 404, so tests can check the not-found path.
MISSING_MODEL_PREFIX = "missing-"
#: Bound on how long we wait for a client's body.
MAX_BODY_BYTES = 32 * 1024 * 1024


class ApiError(Exception):
    """A finished error response, raised from deep inside a handler."""

    def __init__(
        self, status: int, body: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return json_response(self.body, status=self.status, headers=self.headers)


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def json_response(obj: Any, *, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps(obj).encode("utf-8"), status=status, headers=headers, content_type="application/json"
    )


def key_id(key: str) -> str:
    """A stable, non-reversible name for an API key (usage reports group by it); the key itself is never kept."""
    return "key_" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


def key_is_invalid(key: str) -> bool:
    return not key.strip() or key.startswith(INVALID_KEY_PREFIXES)


def bearer(request: web.Request) -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return None


async def read_json(request: web.Request, error: type[Exception]) -> Any:
    """The request body as JSON; ``error(message)`` is raised for anything else."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise error("the request body is too large") from exc
    if not raw:
        raise error("the request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"the request body is not valid JSON: {exc}") from exc


def forced_fault(request: web.Request) -> str | None:
    return request.headers.get(FORCE_FAULT_HEADER) or None


# --- timing, faults that never answer, and spoiled answers --------------------------------------------


async def pause(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def drop_connection(request: web.Request) -> None:
    """Close the socket without finishing the response (a cut stream or a hang that gives up)."""
    transport = request.transport
    if transport is not None and not transport.is_closing():
        transport.close()


async def hang(request: web.Request, seconds: float) -> None:
    """Say nothing until the client gives up (its disconnect cancels us) or ``seconds`` pass; then drop."""
    await asyncio.sleep(seconds)
    drop_connection(request)


def html_response(headers: Mapping[str, str] | None = None) -> web.Response:
    body = (
        "<!DOCTYPE html><html><head><title>Service notice</title></head>"
        "<body><h1>We'll be right back</h1><p>The service is undergoing maintenance.</p></body></html>"
    )
    return web.Response(text=body, status=200, headers=headers, content_type="text/html")


def spoil(raw: bytes) -> bytes:
    """Valid JSON cut short: the client's parser must fail on it."""
    return raw[: max(len(raw) // 2, 1)]


# --- server-sent events --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Frame:
    data: bytes
    tokens: int = 0  # output tokens this frame delivers
    content: bool = False  # a frame that carries model output (faults strike among these)


_PACE_SLICE = 0.02  # write at most this often: tokens arriving within 20 ms share one write


async def start_sse(request: web.Request, headers: Mapping[str, str]) -> web.StreamResponse:
    resp = web.StreamResponse(status=200, headers={**headers, "Cache-Control": "no-cache"})
    resp.content_type = "text/event-stream"
    resp.charset = "utf-8"
    await resp.prepare(request)
    return resp


async def send_frames(
    request: web.Request,
    resp: web.StreamResponse,
    frames: list[Frame],
    decision: Decision,
    *,
    error_frame: bytes | None = None,
    spoil_frame: bool = False,
) -> tuple[int, bool]:
    """Write ``frames`` at the decided speed, applying a stream fault; (output tokens sent, finished)."""
    fault = decision.fault
    if fault in ("stream_cut", "stream_error") or spoil_frame:
        content_at = [i for i, f in enumerate(frames) if f.content]
        k = content_at[min(decision.cut_after, len(content_at) - 1)] if content_at else len(frames) // 2
        if fault == "stream_cut":
            frames = frames[:k]
        elif fault == "stream_error":
            frames = [*frames[:k], Frame(error_frame or b"")]
        else:
            frames = [*frames[:k], Frame(_spoil_sse(frames[k].data), frames[k].tokens), *frames[k + 1 :]]
    sent_tokens = 0
    tps = decision.tokens_per_s
    if tps <= 0:
        await resp.write(b"".join(f.data for f in frames))
        sent_tokens = sum(f.tokens for f in frames)
    else:
        buf: list[bytes] = []
        pending = 0
        for frame in frames:
            buf.append(frame.data)
            pending += frame.tokens
            if pending / tps >= _PACE_SLICE:
                await resp.write(b"".join(buf))
                sent_tokens += pending
                await asyncio.sleep(pending / tps)
                buf, pending = [], 0
        if buf:
            await resp.write(b"".join(buf))
            sent_tokens += pending
    if fault == "stream_cut":
        drop_connection(request)
        return sent_tokens, False
    await resp.write_eof()
    return sent_tokens, fault != "stream_error"


def _spoil_sse(frame: bytes) -> bytes:
    # Keep the SSE framing (so the client gets a complete event) but cut the JSON inside it.
    head, sep, data = frame.partition(b"data: ")
    payload = data.rstrip(b"\n")
    return head + sep + spoil(payload) + b"\n\n"


# --- the per-request ledger entry ----------------------------------------------------------------------


class Entry:
    """What one request did, filled in as it goes and written to the ledger exactly once."""

    def __init__(
        self, engine: SimEngine, provider: str, *, seq: int, endpoint: str, request_id: str, arrived: float
    ) -> None:
        self.engine, self.provider, self.seq = engine, provider, seq
        self.endpoint, self.request_id, self.arrived = endpoint, request_id, arrived
        self.key = "key_none"
        self.model = ""
        self.stream = False
        self.fault: str | None = None
        self.ttft = 0.0
        self.retry_after: float | None = None
        self.status = 0
        self.input_tokens = self.output_tokens = 0  # input as the provider reports it
        self.cache_read = self.cache_write = self.cache_write_1h = 0
        self.billed = False
        self.cost: float | None = None
        self.costs: dict[str, float] = {}
        self.finish_reason: str | None = None
        self.done = False

    def set_usage(
        self,
        profile: Profile,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_read: int = 0,
        cache_write: int = 0,
        cache_write_1h: int = 0,
        finish: str | None,
    ) -> None:
        self.input_tokens, self.output_tokens = input_tokens, output_tokens
        self.cache_read, self.cache_write, self.cache_write_1h = cache_read, cache_write, cache_write_1h
        self.billed = True
        self.finish_reason = finish
        self.reprice(profile)

    def reprice(self, profile: Profile) -> None:
        # OpenAI's prompt_tokens include the cached ones; Anthropic's input_tokens exclude cache reads and writes.
        uncached = self.input_tokens - (self.cache_read if self.provider == "openai" else 0)
        self.cost, self.costs = self.engine.price(
            self.provider,
            self.model,
            profile,
            uncached_input=uncached,
            cache_read=self.cache_read,
            cache_write=self.cache_write,
            output=self.output_tokens,
        )

    def finish(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        self.status = status
        billed = self.billed
        self.engine.record(
            Served(
                seq=self.seq,
                ts=time.time(),
                provider=self.provider,
                endpoint=self.endpoint,
                model=self.model,
                stream=self.stream,
                status=status,
                fault=self.fault,
                request_id=self.request_id,
                key_id=self.key,
                scenario=self.engine.scenario.name,
                input_tokens=self.input_tokens if billed else 0,
                output_tokens=self.output_tokens if billed else 0,
                cache_read_tokens=self.cache_read if billed else 0,
                cache_write_tokens=self.cache_write if billed else 0,
                cache_write_1h_tokens=self.cache_write_1h if billed else 0,
                billed=billed,
                cost_usd=self.cost if billed else None,
                ttft_s=self.ttft,
                duration_s=time.monotonic() - self.arrived,
                finish=self.finish_reason,
                retry_after=self.retry_after,
            ),
            self.costs if billed else None,
        )
