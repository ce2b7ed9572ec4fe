"""The Anthropic face: ``/v1/messages`` (plain, and the full event stream with ``ping``),
``/v1/messages/count_tokens`` and ``/v1/models`` — in the shapes of wire-formats.md.

Prompt caching is simulated: blocks marked ``cache_control`` are breakpoints;
the longest breakpoint prefix seen within its TTL (5 min, or 1 h with
``ttl: "1h"``) is read from cache, the rest up to the last breakpoint is
written, and ``input_tokens`` excludes both, as the real API reports it.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from app.sim import answers as ans
from app.sim.engine import CACHE_MIN_TOKENS, Decision, SimEngine
from app.sim.ratelimit import anthropic_headers
from app.sim.wire import (
    MISSING_MODEL_PREFIX,
    ApiError,
    Entry,
    Frame,
    bearer,
    drop_connection,
    dumps,
    forced_fault,
    hang,
    html_response,
    json_response,
    key_id,
    key_is_invalid,
    pause,
    read_json,
    send_frames,
    spoil,
    start_sse,
)

PROVIDER = "anthropic"
_STOP = {
    "stop": "end_turn",
    "stop_sequence": "stop_sequence",
    "length": "max_tokens",
    "tool_calls": "tool_use",
    "refusal": "refusal",
}
_PING_EVERY = 40  # content deltas between pings on long streams
_quote = json.encoder.encode_basestring  # a JSON string literal, C-accelerated


def error(type_: str, message: str, request_id: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": type_, "message": message}, "request_id": request_id}


class _BadRequest(Exception):
    pass


class AnthropicFace:
    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/messages", self.messages),
            web.post("/v1/messages/count_tokens", self.count_tokens),
        ]

    # --- common -----------------------------------------------------------------------------------

    def auth(self, request: web.Request, request_id: str) -> str:
        key = request.headers.get("x-api-key") or bearer(request)
        headers = {"request-id": request_id}
        if not key:
            raise ApiError(
                401, error("authentication_error", "x-api-key header is required", request_id), headers
            )
        if key_is_invalid(key):
            raise ApiError(401, error("authentication_error", "invalid x-api-key", request_id), headers)
        if not request.headers.get("anthropic-version"):
            raise ApiError(
                400,
                error("invalid_request_error", "anthropic-version: header is required", request_id),
                headers,
            )
        return key_id(key)

    def _check_model(self, model: str, request_id: str) -> None:
        scenario = self.engine.scenario
        if model.startswith(MISSING_MODEL_PREFIX) or (
            scenario.unknown_models == "reject" and not scenario.knows(model)
        ):
            raise ApiError(
                404, error("not_found_error", f"model: {model}", request_id), {"request-id": request_id}
            )

    def _begin(self, request: web.Request, endpoint: str) -> Entry:
        engine = self.engine
        seq = engine.next_seq()
        request_id = "req_" + engine.make_id(seq, "request", 24)
        return Entry(
            engine, PROVIDER, seq=seq, endpoint=endpoint, request_id=request_id, arrived=time.monotonic()
        )

    def _fault_response(
        self, decision: Decision, model: str, headers: dict[str, str], rid: str
    ) -> web.Response:
        fault = decision.fault
        if decision.retry_after is not None and fault != "overloaded":
            headers["retry-after"] = _seconds_header(decision.retry_after)
        if fault == "rate_limit":
            kind = "tokens" if decision.limit_kind == "tokens" else "requests"
            msg = (
                f"This request would exceed the rate limit for your organization of {kind} per minute "
                f"for {model}. Please reduce the prompt length or the maximum tokens requested, or try again later."
            )
            return json_response(error("rate_limit_error", msg, rid), status=429, headers=headers)
        if fault == "quota_exceeded":
            msg = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing."
            return json_response(error("invalid_request_error", msg, rid), status=400, headers=headers)
        if fault == "server_error":
            return json_response(
                error("api_error", "Internal server error", rid), status=500, headers=headers
            )
        if fault == "overloaded":
            return json_response(error("overloaded_error", "Overloaded", rid), status=529, headers=headers)
        return json_response(error("api_error", "Service unavailable", rid), status=503, headers=headers)

    # --- messages ---------------------------------------------------------------------------------

    async def messages(self, request: web.Request) -> web.StreamResponse:
        served = self._begin(request, "messages")
        rid = served.request_id
        try:
            served.key = self.auth(request, rid)
            try:
                body = await read_json(request, _BadRequest)
                call = _parse_messages(body, need_max_tokens=True)
            except _BadRequest as exc:
                raise ApiError(
                    400, error("invalid_request_error", str(exc), rid), {"request-id": rid}
                ) from exc
            served.model, served.stream = call.model, call.stream
            self._check_model(call.model, rid)
            return await self._messages(request, call, served)
        except ApiError as exc:
            served.finish(exc.status)
            return exc.response()
        finally:
            served.finish(served.status)

    async def _messages(self, request: web.Request, call: _Call, served: Entry) -> web.StreamResponse:
        engine = self.engine
        seq, model, rid = served.seq, call.model, served.request_id
        profile = engine.scenario.profile(model)
        tokens = _input_tokens(call)
        answer = ans.compose(
            call.ask,
            engine.scenario.answers,
            engine.answer_rng(model, call.ask.text, 0),
            call_id="toolu_" + engine.make_id(seq, "tool", 24),
        )
        decision = engine.decide(
            seq,
            PROVIDER,
            model,
            profile,
            tokens.total + answer.output_tokens,
            stream=call.stream,
            forced=forced_fault(request),
        )
        headers = {"request-id": rid, "anthropic-organization-id": "org-sim"}
        if decision.verdict is not None:
            headers.update(anthropic_headers(decision.verdict))
        served.fault, served.ttft, served.retry_after = decision.fault, decision.ttft, decision.retry_after
        fault = decision.fault
        if fault == "hang":
            served.finish(0)
            await hang(request, decision.hang_seconds)
            raise web.HTTPRequestTimeout()
        if fault in ("rate_limit", "quota_exceeded", "server_error", "unavailable", "overloaded"):
            await pause(decision.ttft * 0.25)
            resp = self._fault_response(decision, model, headers, rid)
            served.finish(resp.status)
            return resp
        read, write, write_1h = _use_cache(engine, tokens)
        uncached = tokens.total - read - write
        served.set_usage(
            profile,
            uncached,
            answer.output_tokens,
            cache_read=read,
            cache_write=write,
            cache_write_1h=write_1h,
            finish=_STOP[answer.finish],
        )
        usage = {
            "input_tokens": uncached,
            "cache_creation_input_tokens": write,
            "cache_read_input_tokens": read,
            "cache_creation": {
                "ephemeral_5m_input_tokens": write - write_1h,
                "ephemeral_1h_input_tokens": write_1h,
            },
            "output_tokens": answer.output_tokens,
            "service_tier": "standard",
        }
        ident = "msg_" + engine.make_id(seq, "message", 24)
        if not call.stream:
            await pause(decision.ttft + decision.generation_time(answer.output_tokens))
            if fault == "wrong_content_type":
                served.finish(200)
                return html_response(headers)
            obj = {
                "id": ident,
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": _blocks(answer),
                "stop_reason": _STOP[answer.finish],
                "stop_sequence": answer.stop_sequence,
                "usage": usage,
            }
            raw = dumps(obj).encode("utf-8")
            if fault == "malformed_json":
                raw = spoil(raw)
            served.finish(200)
            return web.Response(body=raw, headers=headers, content_type="application/json")

        await pause(decision.ttft)
        if fault == "wrong_content_type":
            served.finish(200)
            return html_response(headers)
        frames = _stream_frames(ident, model, answer, usage)
        sse = await start_sse(request, headers)
        served.status = 200
        err = error("overloaded_error", "Overloaded", rid)
        try:
            sent, _finished = await send_frames(
                request,
                sse,
                frames,
                decision,
                error_frame=_event("error", err),
                spoil_frame=fault == "malformed_json",
            )
        except (ConnectionResetError, OSError):
            drop_connection(request)
            sent = served.output_tokens
        if fault in ("stream_cut", "stream_error"):
            served.output_tokens = sent
            served.reprice(profile)
        served.finish(200)
        return sse

    # --- count_tokens -----------------------------------------------------------------------------

    async def count_tokens(self, request: web.Request) -> web.StreamResponse:
        served = self._begin(request, "count_tokens")
        rid = served.request_id
        try:
            served.key = self.auth(request, rid)
            try:
                body = await read_json(request, _BadRequest)
                call = _parse_messages(body, need_max_tokens=False)
            except _BadRequest as exc:
                raise ApiError(
                    400, error("invalid_request_error", str(exc), rid), {"request-id": rid}
                ) from exc
            served.model = call.model
            self._check_model(call.model, rid)
            total = _input_tokens(call).total
            served.finish(200)
            return json_response({"input_tokens": total}, headers={"request-id": rid})
        except ApiError as exc:
            served.finish(exc.status)
            return exc.response()

    # --- models -----------------------------------------------------------------------------------

    def list_models(self) -> dict[str, Any]:
        data = [_model_obj(n) for n in self.engine.scenario.listed_models(PROVIDER)]
        return {
            "data": data,
            "has_more": False,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }

    def model(self, name: str) -> dict[str, Any] | None:
        scenario = self.engine.scenario
        if name.startswith(MISSING_MODEL_PREFIX) or (
            scenario.unknown_models == "reject" and not scenario.knows(name)
        ):
            return None
        return _model_obj(name)


def _model_obj(name: str) -> dict[str, Any]:
    display = " ".join(p.capitalize() if not p[:1].isdigit() else p for p in name.split("-"))
    return {"type": "model", "id": name, "display_name": display, "created_at": "2025-09-29T00:00:00Z"}


def _seconds_header(seconds: float) -> str:
    # Real servers send whole seconds (rounded up); a configured sub-second hint stays a decimal so fast
    # tests stay fast.
    if seconds >= 1:
        return str(math.ceil(seconds))
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


# --- parsing -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Call:
    model: str
    messages: list[Any]
    system: Any
    tools: list[Any]
    ask: ans.Ask
    stream: bool


def _parse_messages(body: Any, *, need_max_tokens: bool) -> _Call:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("model: Field required")
    max_tokens = body.get("max_tokens")
    if need_max_tokens and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _BadRequest("max_tokens: Field required (a positive integer)")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("messages: Field required (a non-empty list)")
    texts: list[str] = []
    system = body.get("system")
    if system is not None:
        if not isinstance(system, str | list):
            raise _BadRequest("system: Input should be a string or a list of text blocks")
        texts.append(_blocks_text(system))
    last_user = ""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise _BadRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        content = m.get("content")
        if not isinstance(content, str | list):
            raise _BadRequest(f"messages.{i}.content: Input should be a string or a list of content blocks")
        text = _blocks_text(content)
        texts.append(text)
        if m["role"] == "user":
            last_user = text
    last = messages[-1]
    answered_tool = (
        last["role"] == "user"
        and isinstance(last.get("content"), list)
        and any(isinstance(b, dict) and b.get("type") == "tool_result" for b in last["content"])
    )
    tools_raw = body.get("tools") or []
    if not isinstance(tools_raw, list):
        raise _BadRequest("tools: Input should be a list")
    tools = tuple(
        ans.ToolSpec(t["name"], _schema(t))
        for t in tools_raw
        if isinstance(t, dict) and isinstance(t.get("name"), str) and "input_schema" in t
    )
    tc = body.get("tool_choice") or {"type": "auto"}
    kind = tc.get("type") if isinstance(tc, dict) else None
    if kind not in ("auto", "any", "tool", "none"):
        raise _BadRequest("tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'")
    choice = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or str(tc.get("name", ""))
    fmt = (body.get("output_config") or {}).get("format") or body.get("output_format")
    schema = fmt.get("schema") if isinstance(fmt, dict) and fmt.get("type") == "json_schema" else None
    stops = body.get("stop_sequences") or []
    ask = ans.Ask(
        model=model,
        text="\n".join(texts),
        last_user=last_user,
        tools=tools,
        tool_choice=choice,
        answered_tool=answered_tool,
        json_schema=schema if isinstance(schema, dict) else None,
        stop=tuple(s for s in stops if isinstance(s, str)) if isinstance(stops, list) else (),
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        preamble=choice == "auto",
    )
    return _Call(model, messages, system, tools_raw, ask=ask, stream=bool(body.get("stream", False)))


def _schema(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    schema = tool.get("input_schema")
    return schema if isinstance(schema, dict) else {}


def _blocks_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for b in content if isinstance(content, list) else []:
        if not isinstance(b, dict):
            continue
        if b.get("type") == "text":
            parts.append(str(b.get("text", "")))
        elif b.get("type") == "tool_result":
            parts.append(_blocks_text(b.get("content", "")))
    return "".join(parts)


class _Tokens:
    __slots__ = ("breakpoints", "total")

    def __init__(self, total: int, breakpoints: list[tuple[str, int, float]]) -> None:
        self.total, self.breakpoints = total, breakpoints


def _input_tokens(call: _Call) -> _Tokens:
    """All input tokens, and the cache breakpoints (prefix key, tokens up to it, TTL) in prompt order."""
    model = call.model
    hasher = hashlib.blake2b(model.encode(), digest_size=16)
    running = 3  # reply priming
    breakpoints: list[tuple[str, int, float]] = []

    def piece(text: str, cache_control: Any) -> None:
        nonlocal running
        running += ans.count(text, model)
        hasher.update(text.encode("utf-8", "surrogatepass"))
        if isinstance(cache_control, dict):
            ttl = 3600.0 if cache_control.get("ttl") == "1h" else 300.0
            breakpoints.append((hasher.copy().hexdigest(), running, ttl))

    for t in call.tools:
        if isinstance(t, dict):
            piece(dumps({k: v for k, v in t.items() if k != "cache_control"}), t.get("cache_control"))
    if call.system is not None:
        running += 3
        if isinstance(call.system, str):
            piece(call.system, None)
        else:
            for b in call.system:
                if isinstance(b, dict):
                    piece(str(b.get("text", "")), b.get("cache_control"))
    for m in call.messages:
        running += 3
        hasher.update(str(m["role"]).encode())
        content = m.get("content")
        if isinstance(content, str):
            piece(content, None)
            continue
        for b in content:
            if isinstance(b, dict):
                piece(_block_text(b), b.get("cache_control"))
    return _Tokens(running, breakpoints)


def _block_text(b: Mapping[str, Any]) -> str:
    kind = b.get("type")
    if kind == "text":
        return str(b.get("text", ""))
    if kind == "tool_use":
        return str(b.get("name", "")) + dumps(b.get("input", {}))
    if kind == "tool_result":
        return _blocks_text(b.get("content", ""))
    return dumps({k: v for k, v in b.items() if k != "cache_control"})


def _use_cache(engine: SimEngine, tokens: _Tokens) -> tuple[int, int, int]:
    """(cache read, cache written, of which with a 1 h TTL) for this request; updates the cache."""
    eligible = [bp for bp in tokens.breakpoints if bp[1] >= CACHE_MIN_TOKENS]
    if not eligible:
        return 0, 0, 0
    read = 0
    for key, upto, _ttl in reversed(eligible):
        if engine.cache_peek(key):
            read = upto
            break
    _last_key, last_upto, last_ttl = eligible[-1]
    write = max(last_upto - read, 0)
    for key, _upto, ttl in eligible:
        engine.cache_seen(key, ttl)
    return read, write, write if last_ttl > 300.0 else 0


# --- response shapes -----------------------------------------------------------------------------------


def _blocks(a: ans.Answer) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    text = a.refusal if a.refusal is not None else a.text
    if text or not a.tool_calls:
        blocks.append({"type": "text", "text": text or ""})
    for tc in a.tool_calls:
        blocks.append({"type": "tool_use", "id": tc.id, "name": tc.name, "input": _loads(tc.arguments)})
    return blocks


def _loads(text: str) -> Any:
    return json.loads(text)


def _event(name: str, obj: Mapping[str, Any]) -> bytes:
    return f"event: {name}\ndata: {dumps(obj)}\n\n".encode()


def _stream_frames(ident: str, model: str, a: ans.Answer, usage: Mapping[str, Any]) -> list[Frame]:
    start_usage = {**usage, "output_tokens": min(1, a.output_tokens)}
    message: dict[str, Any] = {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    frames = [Frame(_event("message_start", {"type": "message_start", "message": message}))]
    index = 0
    deltas = 0
    text = a.refusal if a.refusal is not None else a.text
    if text or not a.tool_calls:
        frames.append(
            Frame(
                _event(
                    "content_block_start",
                    {
                        "type": "content_block_start",
                        "index": 0,
                        "content_block": {"type": "text", "text": ""},
                    },
                )
            )
        )
        frames.append(Frame(_event("ping", {"type": "ping"})))
        for piece in ans.token_pieces(a.text_tokens, model):
            # The hot path of every stream: format by hand rather than json.dumps a fresh dict per token.
            data = f'{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":{_quote(piece)}}}}}'
            frames.append(Frame(f"event: content_block_delta\ndata: {data}\n\n".encode(), 1, content=True))
            deltas += 1
            if deltas % _PING_EVERY == 0:
                frames.append(Frame(_event("ping", {"type": "ping"})))
        frames.append(Frame(_event("content_block_stop", {"type": "content_block_stop", "index": 0})))
        index = 1
    for tc in a.tool_calls:
        block = {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}}
        frames.append(
            Frame(
                _event(
                    "content_block_start",
                    {"type": "content_block_start", "index": index, "content_block": block},
                ),
                ans.count(tc.name, model),
                content=True,
            )
        )
        if index == 0:
            frames.append(Frame(_event("ping", {"type": "ping"})))
        for piece in ans.text_pieces(tc.arguments, model):
            delta = {
                "type": "content_block_delta",
                "index": index,
                "delta": {"type": "input_json_delta", "partial_json": piece},
            }
            frames.append(Frame(_event("content_block_delta", delta), 1, content=True))
        frames.append(Frame(_event("content_block_stop", {"type": "content_block_stop", "index": index})))
        index += 1
    frames.append(
        Frame(
            _event(
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": _STOP[a.finish], "stop_sequence": a.stop_sequence},
                    "usage": {"output_tokens": a.output_tokens},
                },
            )
        )
    )
    frames.append(Frame(_event("message_stop", {"type": "message_stop"})))
    return frames
