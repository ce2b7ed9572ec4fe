"""The OpenAI face: ``/v1/chat/completions`` (plain, SSE with ``include_usage``, tools, ``n``),
``/v1/models``, ``/v1/embeddings`` — in the shapes of wire-formats.md, judged by the official SDK."""

from __future__ import annotations

import base64
import hashlib
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any

import numpy as np
from aiohttp import web

from app.core.tokens import count_messages
from app.sim import answers as ans
from app.sim.engine import CACHE_MIN_TOKENS, OPENAI_CACHE_TTL, Decision, SimEngine
from app.sim.ratelimit import go_duration, openai_headers
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

PROVIDER = "openai"
_FINISH = {
    "stop": "stop",
    "stop_sequence": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "refusal": "stop",
}
_EMBED_DIMS = {"text-embedding-3-large": 3072, "text-embedding-3-small": 1536, "text-embedding-ada-002": 1536}
_CREATED = 1_715_367_049  # a fixed "created" for listed models


def error(
    status: int, message: str, type_: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class OpenAIFace:
    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/v1/chat/completions", self.chat),
            web.post("/v1/embeddings", self.embeddings),
        ]

    # --- common -----------------------------------------------------------------------------------

    def _auth(self, request: web.Request, request_id: str) -> str:
        key = bearer(request)
        headers = {"x-request-id": request_id}
        if key is None:
            raise ApiError(
                401,
                error(
                    401,
                    "You didn't provide an API key. You need to provide your API key in an Authorization header "
                    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                    "invalid_request_error",
                ),
                headers,
            )
        if key_is_invalid(key):
            raise ApiError(
                401,
                error(401, "Incorrect API key provided.", "invalid_request_error", "invalid_api_key"),
                headers,
            )
        return key_id(key)

    def _check_model(self, model: str, request_id: str) -> None:
        scenario = self.engine.scenario
        if model.startswith(MISSING_MODEL_PREFIX) or (
            scenario.unknown_models == "reject" and not scenario.knows(model)
        ):
            raise ApiError(
                404,
                error(
                    404,
                    f"The model `{model}` does not exist or you do not have access to it.",
                    "invalid_request_error",
                    "model_not_found",
                ),
                {"x-request-id": request_id},
            )

    def _fault_response(self, decision: Decision, model: str, headers: dict[str, str]) -> web.Response:
        fault = decision.fault
        if decision.retry_after is not None:
            headers["retry-after"] = _seconds_header(decision.retry_after)
            headers["retry-after-ms"] = str(max(round(decision.retry_after * 1000), 0))
        if fault == "rate_limit":
            kind = decision.limit_kind or "requests"
            limit = decision.verdict.rpm if decision.verdict and kind == "requests" else None
            limit = decision.verdict.tpm if decision.verdict and kind == "tokens" else limit
            detail = f"Limit {limit}, " if limit else ""
            wait = go_duration(decision.retry_after or 0.0)
            msg = (
                f"Rate limit reached for {model} in organization org-sim on {kind} per min "
                f"({'RPM' if kind == 'requests' else 'TPM'}): {detail}Please try again in {wait}."
            )
            return json_response(error(429, msg, kind, "rate_limit_exceeded"), status=429, headers=headers)
        if fault == "quota_exceeded":
            msg = "You exceeded your current quota, please check your plan and billing details."
            return json_response(
                error(429, msg, "insufficient_quota", "insufficient_quota"), status=429, headers=headers
            )
        if fault == "server_error":
            msg = "The server had an error while processing your request. Sorry about that!"
            return json_response(error(500, msg, "server_error"), status=500, headers=headers)
        if fault == "overloaded":
            msg = "The engine is currently overloaded, please try again later."
            return json_response(error(503, msg, "server_error", "overloaded"), status=503, headers=headers)
        msg = "The server is temporarily unable to handle your request. Please try again later."
        return json_response(
            error(503, msg, "server_error", "service_unavailable"), status=503, headers=headers
        )

    # --- chat completions -------------------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        engine = self.engine
        arrived = time.monotonic()
        seq = engine.next_seq()
        request_id = "req_" + engine.make_id(seq, "request", 32)
        served = Entry(
            engine, PROVIDER, seq=seq, endpoint="chat.completions", request_id=request_id, arrived=arrived
        )
        try:
            served.key = self._auth(request, request_id)
            try:
                body = await read_json(request, _BadRequest)
                call = _parse_chat(body)
            except _BadRequest as exc:
                raise ApiError(
                    400,
                    error(400, str(exc), "invalid_request_error", None, exc.param),
                    {"x-request-id": request_id},
                ) from exc
            served.model, served.stream = call.model, call.stream
            self._check_model(call.model, request_id)
            return await self._chat(request, call, served)
        except ApiError as exc:
            served.finish(exc.status)
            return exc.response()
        finally:
            served.finish(served.status)  # a client that went away mid-stream still leaves its record

    async def _chat(self, request: web.Request, call: _ChatCall, served: Entry) -> web.StreamResponse:
        engine = self.engine
        seq, model = served.seq, call.model
        profile = engine.scenario.profile(model)
        prompt_tokens, cached = _prompt_tokens(engine, call)
        choices = [
            ans.compose(
                call.ask,
                engine.scenario.answers,
                engine.answer_rng(model, call.ask.text, i),
                call_id="call_" + engine.make_id(seq, f"tool{i}", 24),
            )
            for i in range(call.n)
        ]
        completion_tokens = sum(c.output_tokens for c in choices)
        decision = engine.decide(
            seq,
            PROVIDER,
            model,
            profile,
            prompt_tokens + completion_tokens,
            stream=call.stream,
            forced=forced_fault(request),
        )
        headers = {
            "x-request-id": served.request_id,
            "openai-processing-ms": "0",
            "openai-version": "2020-10-01",
        }
        if decision.verdict is not None:
            headers.update(openai_headers(decision.verdict))
        served.fault, served.ttft, served.retry_after = decision.fault, decision.ttft, decision.retry_after
        fault = decision.fault
        if fault == "hang":
            served.finish(0)
            await hang(request, decision.hang_seconds)
            raise web.HTTPRequestTimeout()  # not reached by a client that gave up; the socket is closed
        if fault in ("rate_limit", "quota_exceeded", "server_error", "unavailable", "overloaded"):
            await pause(decision.ttft * 0.25)
            resp = self._fault_response(decision, model, headers)
            served.finish(resp.status)
            return resp
        usage = _usage(prompt_tokens, completion_tokens, cached)
        served.set_usage(
            profile, prompt_tokens, completion_tokens, cache_read=cached, finish=choices[0].finish
        )
        ident = "chatcmpl-" + engine.make_id(seq, "completion", 29)
        created = int(time.time())
        if not call.stream:
            await pause(decision.ttft + decision.generation_time(completion_tokens))
            headers["openai-processing-ms"] = str(round((time.monotonic() - served.arrived) * 1000))
            if fault == "wrong_content_type":
                served.finish(200)
                return html_response(headers)
            obj = {
                "id": ident,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [_choice(i, c) for i, c in enumerate(choices)],
                "usage": usage,
                "service_tier": "default",
                "system_fingerprint": _FINGERPRINT,
            }
            raw = dumps(obj).encode("utf-8")
            if fault == "malformed_json":
                raw = spoil(raw)
            served.finish(200)
            return web.Response(body=raw, status=200, headers=headers, content_type="application/json")

        await pause(decision.ttft)
        if fault == "wrong_content_type":
            served.finish(200)
            return html_response(headers)
        frames = _stream_frames(
            ident, created=created, model=model, choices=choices, usage=usage if call.include_usage else None
        )
        sse = await start_sse(request, headers)
        served.status = 200
        err = dumps(error(500, "The server had an error while processing your request.", "server_error"))
        try:
            sent, _finished = await send_frames(
                request,
                sse,
                frames,
                decision,
                error_frame=f"data: {err}\n\n".encode(),
                spoil_frame=fault == "malformed_json",
            )
        except (ConnectionResetError, OSError):
            drop_connection(request)
            sent = served.output_tokens  # the client went away; count what we meant to send
        if fault in ("stream_cut", "stream_error"):
            served.output_tokens = sent
            served.reprice(profile)
        served.finish(200)
        return sse

    # --- embeddings -------------------------------------------------------------------------------

    async def embeddings(self, request: web.Request) -> web.StreamResponse:
        engine = self.engine
        arrived = time.monotonic()
        seq = engine.next_seq()
        request_id = "req_" + engine.make_id(seq, "request", 32)
        served = Entry(
            engine, PROVIDER, seq=seq, endpoint="embeddings", request_id=request_id, arrived=arrived
        )
        try:
            served.key = self._auth(request, request_id)
            try:
                body = await read_json(request, _BadRequest)
                model, inputs, fmt, dims = _parse_embeddings(body)
            except _BadRequest as exc:
                raise ApiError(
                    400,
                    error(400, str(exc), "invalid_request_error", None, exc.param),
                    {"x-request-id": request_id},
                ) from exc
            served.model = model
            self._check_model(model, request_id)
            profile = engine.scenario.profile(model)
            texts = [x if isinstance(x, str) else None for x in inputs]
            tokens = sum(
                ans.count(t, model) if t is not None else len(x) for t, x in zip(texts, inputs, strict=True)
            )
            decision = engine.decide(
                seq, PROVIDER, model, profile, tokens, stream=False, forced=forced_fault(request)
            )
            headers = {"x-request-id": request_id, "openai-version": "2020-10-01"}
            if decision.verdict is not None:
                headers.update(openai_headers(decision.verdict))
            served.fault, served.ttft, served.retry_after = (
                decision.fault,
                decision.ttft,
                decision.retry_after,
            )
            if decision.fault == "hang":
                served.finish(0)
                await hang(request, decision.hang_seconds)
                raise web.HTTPRequestTimeout()
            if decision.fault in (
                "rate_limit",
                "quota_exceeded",
                "server_error",
                "unavailable",
                "overloaded",
            ):
                await pause(decision.ttft * 0.25)
                resp = self._fault_response(decision, model, headers)
                served.finish(resp.status)
                return resp
            await pause(decision.ttft)
            served.set_usage(profile, tokens, 0, finish=None)
            if decision.fault == "wrong_content_type":
                served.finish(200)
                return html_response(headers)
            size = dims or profile.dimensions or _EMBED_DIMS.get(model, 1536)
            data = []
            for i, x in enumerate(inputs):
                vec = _vector(engine.seed, model, x if isinstance(x, str) else json.dumps(x), size)
                emb: Any = (
                    base64.b64encode(vec.tobytes()).decode("ascii") if fmt == "base64" else vec.tolist()
                )
                data.append({"object": "embedding", "index": i, "embedding": emb})
            obj = {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
            raw = dumps(obj).encode("utf-8")
            if decision.fault == "malformed_json":
                raw = spoil(raw)
            served.finish(200)
            return web.Response(body=raw, headers=headers, content_type="application/json")
        except ApiError as exc:
            served.finish(exc.status)
            return exc.response()

    # --- models -----------------------------------------------------------------------------------

    def list_models(self) -> dict[str, Any]:
        names = self.engine.scenario.listed_models(PROVIDER)
        return {"object": "list", "data": [_model_obj(n) for n in names]}

    def model(self, name: str) -> dict[str, Any] | None:
        if name.startswith(MISSING_MODEL_PREFIX):
            return None
        scenario = self.engine.scenario
        if scenario.unknown_models == "reject" and not scenario.knows(name):
            return None
        return _model_obj(name)


_FINGERPRINT = "fp_sim0c0ffee"
_quote = json.encoder.encode_basestring  # a JSON string literal, C-accelerated


def _model_obj(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": _CREATED, "owned_by": "system"}


def _seconds_header(seconds: float) -> str:
    # Real servers send whole seconds (rounded up); a configured sub-second hint stays a decimal so fast
    # tests stay fast.
    if seconds >= 1:
        return str(math.ceil(seconds))
    return f"{seconds:.3f}".rstrip("0").rstrip(".") or "0"


# --- parsing -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _ChatCall:
    model: str
    messages: list[dict[str, Any]]
    ask: ans.Ask
    n: int
    stream: bool
    include_usage: bool
    tools: list[Any]


def _parse_chat(body: Any) -> _ChatCall:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array", "messages")
    texts: list[str] = []
    last_user = ""
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in (
            "system",
            "developer",
            "user",
            "assistant",
            "tool",
        ):
            raise _BadRequest(f"messages[{i}] must be an object with a valid role", f"messages[{i}]")
        text = _content_text(m.get("content"))
        texts.append(text)
        if m["role"] == "user":
            last_user = text
    n = body.get("n", 1)
    if n is None:
        n = 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise _BadRequest("'n' must be an integer between 1 and 128", "n")
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (
        not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1
    ):
        raise _BadRequest("'max_completion_tokens' must be a positive integer", "max_completion_tokens")
    stop = body.get("stop")
    stops: tuple[str, ...] = (
        (stop,) if isinstance(stop, str) else tuple(s for s in (stop or []) if isinstance(s, str))
    )
    tools_raw = body.get("tools") or []
    if not isinstance(tools_raw, list):
        raise _BadRequest("'tools' must be an array", "tools")
    tools: list[ans.ToolSpec] = []
    for i, t in enumerate(tools_raw):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise _BadRequest(f"tools[{i}] must be a function tool with a name", f"tools[{i}]")
        params = fn.get("parameters")
        tools.append(ans.ToolSpec(fn["name"], params if isinstance(params, dict) else {}))
    choice = body.get("tool_choice", "auto")
    if isinstance(choice, dict):
        choice = str((choice.get("function") or {}).get("name", "required"))
    elif choice not in ("auto", "none", "required"):
        raise _BadRequest("'tool_choice' must be none, auto, required or a named function", "tool_choice")
    rf = body.get("response_format") or {}
    if not isinstance(rf, dict):
        raise _BadRequest("'response_format' must be an object", "response_format")
    schema = (rf.get("json_schema") or {}).get("schema") if rf.get("type") == "json_schema" else None
    stream = bool(body.get("stream", False))
    options = body.get("stream_options") or {}
    include_usage = bool(options.get("include_usage")) if isinstance(options, dict) else False
    ask = ans.Ask(
        model=model,
        text="\n".join(texts),
        last_user=last_user,
        tools=tuple(tools),
        tool_choice=str(choice),
        answered_tool=messages[-1].get("role") == "tool",
        json_mode=rf.get("type") == "json_object",
        json_schema=schema if isinstance(schema, dict) else None,
        stop=stops,
        max_tokens=max_tokens,
    )
    return _ChatCall(model, messages, ask, n=n, stream=stream, include_usage=include_usage, tools=tools_raw)


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text", ""), str)
        )
    return str(content)


def _prompt_tokens(engine: SimEngine, call: _ChatCall) -> tuple[int, int]:
    """Prompt tokens as OpenAI bills them, and how many of them its automatic prompt cache served."""
    model = call.model
    extra = ans.count(json.dumps(call.tools), model) if call.tools else 0
    for m in call.messages:
        for tc in m.get("tool_calls") or []:
            fn = tc.get("function", {}) if isinstance(tc, dict) else {}
            extra += ans.count(str(fn.get("name", "")) + str(fn.get("arguments", "")), model)
    total = count_messages(call.messages, model).tokens + extra
    if total < CACHE_MIN_TOKENS or len(call.messages) < 2:
        return total, 0
    # OpenAI caches prompt prefixes automatically, in 128-token steps past the first 1024.
    prefix = call.messages[:-1]
    prefix_tokens = count_messages(prefix, model).tokens + extra
    key = (
        "openai:"
        + hashlib.blake2b(
            json.dumps([model, call.tools, prefix], sort_keys=True, default=str).encode(), digest_size=16
        ).hexdigest()
    )
    if prefix_tokens < CACHE_MIN_TOKENS:
        return total, 0
    hit = engine.cache_seen(key, OPENAI_CACHE_TTL)
    return total, (prefix_tokens // 128) * 128 if hit else 0


def _parse_embeddings(body: Any) -> tuple[str, list[Any], str, int | None]:
    if not isinstance(body, dict):
        raise _BadRequest("the request body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    raw = body.get("input")
    if isinstance(raw, str):
        inputs: list[Any] = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, str | list) for x in raw):
        inputs = list(raw)
    else:
        raise _BadRequest(
            "'input' must be a non-empty string, array of strings or array of token arrays", "input"
        )
    if any(isinstance(x, str) and not x for x in inputs):
        raise _BadRequest("'input' cannot contain an empty string", "input")
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be float or base64", "encoding_format")
    dims = body.get("dimensions")
    if dims is not None and (not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= 8192):
        raise _BadRequest("'dimensions' must be a positive integer", "dimensions")
    return model, inputs, fmt, dims


def _vector(seed: int, model: str, text: str, size: int) -> np.ndarray[Any, np.dtype[np.float32]]:
    digest = hashlib.blake2b(
        f"{seed}|{model}|{text}".encode("utf-8", "surrogatepass"), digest_size=8
    ).digest()
    rng = np.random.default_rng(int.from_bytes(digest, "little"))
    vec = rng.standard_normal(size)
    vec /= np.linalg.norm(vec) or 1.0
    return vec.astype("<f4")


# --- response shapes -----------------------------------------------------------------------------------


def _usage(prompt: int, completion: int, cached: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _choice(index: int, a: ans.Answer) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": None if a.tool_calls and not a.text else a.text,
        "refusal": a.refusal,
        "annotations": [],
    }
    if a.tool_calls:
        message["tool_calls"] = [
            {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": tc.arguments}}
            for tc in a.tool_calls
        ]
    return {"index": index, "message": message, "logprobs": None, "finish_reason": _FINISH[a.finish]}


def _stream_frames(
    ident: str, *, created: int, model: str, choices: list[ans.Answer], usage: Mapping[str, Any] | None
) -> list[Frame]:
    tail = ',"usage":null}' if usage is not None else "}"
    head = (
        f'data: {{"id":{dumps(ident)},"object":"chat.completion.chunk","created":{created},'
        f'"model":{dumps(model)},"service_tier":"default","system_fingerprint":"{_FINGERPRINT}","choices":['
    )

    def frame(index: int, delta: Mapping[str, Any], finish: str | None = None, tokens: int = 0) -> Frame:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
        return Frame(f"{head}{dumps(choice)}]{tail}\n\n".encode(), tokens, content=tokens > 0)

    def text_frame(index: int, field: str, piece: str) -> Frame:
        # The hot path of every stream: format by hand rather than json.dumps a fresh dict per token.
        body = (
            f'{{"index":{index},"delta":{{"{field}":{_quote(piece)}}},"logprobs":null,"finish_reason":null}}'
        )
        return Frame(f"{head}{body}]{tail}\n\n".encode(), 1, content=True)

    per_choice: list[list[Frame]] = []
    for i, a in enumerate(choices):
        frames: list[Frame] = []
        if a.tool_calls and not a.text:
            frames.append(frame(i, {"role": "assistant", "content": None, "refusal": None}))
        else:
            frames.append(frame(i, {"role": "assistant", "content": "", "refusal": None}))
        if a.refusal is not None:
            for piece in ans.token_pieces(a.text_tokens, model):
                frames.append(text_frame(i, "refusal", piece))
        elif a.text:
            for piece in ans.token_pieces(a.text_tokens, model):
                frames.append(text_frame(i, "content", piece))
        for j, tc in enumerate(a.tool_calls):
            first = {
                "index": j,
                "id": tc.id,
                "type": "function",
                "function": {"name": tc.name, "arguments": ""},
            }
            frames.append(frame(i, {"tool_calls": [first]}, tokens=ans.count(tc.name, model)))
            for piece in ans.text_pieces(tc.arguments, model):
                frames.append(
                    frame(i, {"tool_calls": [{"index": j, "function": {"arguments": piece}}]}, tokens=1)
                )
        frames.append(frame(i, {}, _FINISH[a.finish]))
        per_choice.append(frames)
    out = [f for group in zip_longest(*per_choice) for f in group if f is not None]
    if usage is not None:
        out.append(Frame(f'{head}],"usage":{dumps(usage)}}}\n\n'.encode()))
    out.append(Frame(b"data: [DONE]\n\n"))
    return out
