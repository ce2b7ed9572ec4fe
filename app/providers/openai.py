"""OpenAI's chat completions API, and the servers that imitate it (vLLM, Ollama, llama.cpp, LM Studio ...).

``base_url`` is what the OpenAI SDK takes: it ends in ``/v1``.  What differs
by kind, and why:

- ``openai`` sends ``max_completion_tokens`` (``max_tokens`` is deprecated and
  refused by reasoning models), ``metadata``, and asks for usage in streams
  with ``stream_options.include_usage``; a stream must end with
  ``data: [DONE]``.
- ``openai_compatible`` sends ``max_tokens`` (the field every imitation
  understands), leaves ``metadata`` out (some refuse unknown fields), still
  asks for stream usage (servers that do not know the option ignore it), works
  without an API key, and accepts a stream that ends without ``[DONE]`` once a
  ``finish_reason`` has arrived.  Usage may be missing: ``ChatResult.usage``
  is then ``None`` and the caller estimates.

Only choice 0 is parsed (``n > 1`` callers read ``ChatResult.raw``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from app.providers.base import (
    JSON,
    ChatRequest,
    ChatResult,
    FinishReason,
    ProviderAdapter,
    StreamEvent,
    StreamParser,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
    UsageUpdate,
    invalid_response,
    usage_int,
)
from app.providers.errors import ProviderError, classify_error
from app.providers.ratelimits import parse_rate_limits

_FINISH = {
    "stop": FinishReason.STOP,
    "length": FinishReason.LENGTH,
    "tool_calls": FinishReason.TOOL_CALLS,
    "function_call": FinishReason.TOOL_CALLS,
    "content_filter": FinishReason.CONTENT_FILTER,
}


def finish_reason(native: str | None) -> FinishReason | None:
    if native is None:
        return None
    return _FINISH.get(native, FinishReason.OTHER)


def parse_usage(u: Any) -> Usage | None:
    """OpenAI usage -> ours.  ``prompt_tokens`` already includes cached tokens; ``completion_tokens`` reasoning."""
    if not u:
        return None
    if not isinstance(u, dict):
        raise invalid_response(f"usage is {u!r}, not an object")
    prompt_details = u.get("prompt_tokens_details") or {}
    completion_details = u.get("completion_tokens_details") or {}
    return Usage(
        input_tokens=usage_int(u.get("prompt_tokens"), "prompt_tokens"),
        output_tokens=usage_int(u.get("completion_tokens"), "completion_tokens"),
        cache_read_tokens=usage_int(
            prompt_details.get("cached_tokens"), "prompt_tokens_details.cached_tokens"
        ),
        reasoning_tokens=usage_int(
            completion_details.get("reasoning_tokens"), "completion_tokens_details.reasoning_tokens"
        ),
    )


def error_in_body(err: Any, *, where: str) -> ProviderError:
    """An ``{"error": ...}`` object found in a 200 body or mid-stream."""
    if isinstance(err, dict):
        error_type, error_code, message = err.get("type"), err.get("code"), str(err.get("message") or "")
    else:
        error_type = error_code = None
        message = str(err)
    return ProviderError(
        classify_error(None, error_type, error_code),
        f"error {where}: {error_type or error_code or 'unknown'}: {message}",
        error_type=str(error_type) if error_type is not None else None,
        error_code=str(error_code) if error_code is not None else None,
    )


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # a few servers answer with content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise invalid_response(f"message content is {type(content).__name__}, not text")


_DONE = object()  # the decoded form of "data: [DONE]"


class OpenAIStreamParser(StreamParser):
    """``data: {chunk}`` events ending with ``data: [DONE]``; an ``{"error": ...}`` chunk is a failure.

    ``require_done=False`` (OpenAI-compatible servers) also accepts a stream
    that ends without ``[DONE]`` once a ``finish_reason`` has arrived.
    """

    __slots__ = ("_finish", "_id", "_model", "_refusal", "_require_done", "_text", "_tools", "_usage")

    def __init__(self, *, passthrough: bool = False, require_done: bool = True) -> None:
        super().__init__(passthrough=passthrough)
        self._require_done = require_done
        self._text: list[str] = []
        self._refusal: list[str] = []
        self._tools: dict[int, ToolCall] = {}
        self._finish: str | None = None
        self._usage: Usage | None = None
        self._id: str | None = None
        self._model: str | None = None

    def _load(self, event: str | None, data: bytes) -> Any:
        return _DONE if data == b"[DONE]" else super()._load(event, data)

    def _handle(self, event: str | None, obj: Any, out: list[StreamEvent]) -> None:
        if type(obj) is not dict:
            if obj is _DONE:
                self._done = True
                return
            raise TypeError(f"the event data is {type(obj).__name__}, not an object")
        err = obj.get("error")
        if err is not None:
            exc = error_in_body(err, where="in the stream")
            exc.partial = self.partial()
            raise exc
        if self._id is None:
            self._id = obj.get("id")
            self._model = obj.get("model")
        choices = obj.get("choices")
        if choices:
            for choice in choices:
                if choice.get("index", 0) != 0:
                    continue
                delta = choice.get("delta")
                if delta:
                    content = delta.get("content")
                    if content:
                        if type(content) is not str:
                            raise TypeError(f"delta.content is {type(content).__name__}")
                        self._text.append(content)
                        out.append(TextDelta(content))
                    calls = delta.get("tool_calls")
                    if calls:
                        self._tool_deltas(calls, out)
                    refusal = delta.get("refusal")
                    if refusal:
                        if type(refusal) is not str:
                            raise TypeError(f"delta.refusal is {type(refusal).__name__}")
                        self._refusal.append(refusal)
                reason = choice.get("finish_reason")
                if reason:
                    self._finish = reason
        usage = obj.get("usage")
        if usage:
            try:
                parsed = parse_usage(usage)
            except ProviderError as exc:
                exc.partial = self.partial()
                raise
            if parsed is not None:
                self._usage = parsed
                out.append(UsageUpdate(parsed))

    def _tool_deltas(self, calls: list[Any], out: list[StreamEvent]) -> None:
        for call in calls:
            index = call.get("index", 0)
            fn = call.get("function") or {}
            args = fn.get("arguments") or ""
            if type(index) is not int or type(args) is not str:
                raise TypeError("tool_calls[] needs an integer index and string arguments")
            acc = self._tools.get(index)
            if acc is None:
                acc = self._tools[index] = ToolCall(call.get("id"), fn.get("name"), args)
            else:
                acc.arguments += args
                acc.id = acc.id or call.get("id")
                acc.name = acc.name or fn.get("name")
            out.append(ToolCallDelta(index, call.get("id"), fn.get("name"), args))

    def _unfinished(self) -> str | None:
        if self._done or (not self._require_done and self._finish is not None):
            return None
        if self._finish is None:
            return "the stream ended before data: [DONE] and before any finish_reason"
        return "the stream ended before data: [DONE]"

    def partial(self) -> ChatResult:
        return ChatResult(
            text="".join(self._text),
            tool_calls=[ToolCall(t.id, t.name, t.arguments) for _, t in sorted(self._tools.items())],
            finish_reason=finish_reason(self._finish),
            native_finish_reason=self._finish,
            refusal="".join(self._refusal) or None,
            response_model=self._model,
            response_id=self._id,
            usage=self._usage,
        )


class OpenAIAdapter(ProviderAdapter):
    kind: ClassVar[str] = "openai"
    chat_path: ClassVar[str] = "/chat/completions"
    #: The field that carries the output-token limit.
    max_tokens_field: ClassVar[str] = "max_completion_tokens"
    require_done: ClassVar[bool] = True
    send_metadata: ClassVar[bool] = True

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def build_request(
        self, req: ChatRequest, *, stream: bool | None = None
    ) -> tuple[str, dict[str, str], JSON]:
        stream = req.stream if stream is None else stream
        messages = req.messages
        if req.system:
            messages = [{"role": "system", "content": req.system}, *messages]
        body: JSON = {"model": req.model, "messages": messages}
        if req.max_output_tokens is not None:
            body[self.max_tokens_field] = req.max_output_tokens
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.stop is not None:
            body["stop"] = req.stop
        if req.tools:
            body["tools"] = [_openai_tool(t) for t in req.tools]
        if req.tool_choice is not None:
            body["tool_choice"] = req.tool_choice
        if req.response_format is not None:
            body["response_format"] = req.response_format
        if req.user is not None:
            body["user"] = req.user
        if req.metadata and self.send_metadata:
            body["metadata"] = req.metadata
        headers: dict[str, str] = {}
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
            headers["accept"] = "text/event-stream"
        if req.extra:
            body.update(req.extra)
        return self.chat_path, headers, body

    def parse_response(self, data: Any, headers: httpx.Headers | Mapping[str, str]) -> ChatResult:
        try:
            return self._parse_response(data, headers)
        except (AttributeError, TypeError, KeyError) as exc:
            raise invalid_response(
                f"the response has an unexpected shape ({type(exc).__name__}: {exc})"
            ) from None

    def _parse_response(self, data: Any, headers: httpx.Headers | Mapping[str, str]) -> ChatResult:
        if not isinstance(data, dict):
            raise invalid_response(f"the response is {type(data).__name__}, not an object")
        choices = data.get("choices")
        if not choices:
            if data.get("error") is not None:
                raise error_in_body(data["error"], where="in a 200 response")
            raise invalid_response("the response has no choices")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise invalid_response("choices[0] has no message object")
        calls = [
            ToolCall(
                c.get("id"),
                (c.get("function") or {}).get("name"),
                (c.get("function") or {}).get("arguments") or "",
            )
            for c in message.get("tool_calls") or ()
        ]
        native = choice.get("finish_reason")
        return ChatResult(
            text=_content_text(message.get("content")),
            tool_calls=calls,
            finish_reason=finish_reason(native),
            native_finish_reason=native,
            refusal=message.get("refusal"),
            response_model=data.get("model"),
            response_id=data.get("id"),
            usage=parse_usage(data.get("usage")),
            request_id=headers.get("x-request-id"),
            rate_limits=parse_rate_limits(headers),
            raw=data,
        )

    def new_stream_parser(self, *, passthrough: bool = False) -> OpenAIStreamParser:
        return OpenAIStreamParser(passthrough=passthrough, require_done=self.require_done)

    async def list_models(self) -> list[str]:
        response = await self._request("GET", "/models")
        data = self._json_body(response)
        items = data.get("data") if isinstance(data, dict) else None
        if not isinstance(items, list):
            raise self._with_context(invalid_response("the models list has no data array"), response)
        return [str(m["id"]) for m in items if isinstance(m, dict) and "id" in m]


class OpenAICompatibleAdapter(OpenAIAdapter):
    kind: ClassVar[str] = "openai_compatible"
    max_tokens_field: ClassVar[str] = "max_tokens"
    require_done: ClassVar[bool] = False
    send_metadata: ClassVar[bool] = False


def _openai_tool(tool: JSON) -> JSON:
    """Tools in Anthropic's shape (``input_schema``) become OpenAI functions; OpenAI's pass as they are."""
    if "input_schema" in tool and "function" not in tool:
        fn: JSON = {"name": tool["name"], "parameters": tool["input_schema"]}
        if tool.get("description"):
            fn["description"] = tool["description"]
        return {"type": "function", "function": fn}
    return tool
