"""Anthropic's Messages API.

``base_url`` is what the Anthropic SDK takes: no ``/v1`` (the paths carry it).
Requests arrive in OpenAI's chat shape and are translated:

- ``system``/``developer`` messages and ``ChatRequest.system`` become the
  top-level ``system`` (a string, or text blocks when any carries extra keys
  such as ``cache_control``);
- assistant ``tool_calls`` become ``tool_use`` blocks, ``tool`` messages
  ``tool_result`` blocks in a user turn; ``image_url`` parts become ``image``
  blocks; content blocks already in Anthropic's shape pass untouched;
- OpenAI function tools become ``{name, description, input_schema}``;
  ``tool_choice`` ``auto``/``required``/``none``/a named function become
  ``auto``/``any``/``none``/``tool``;
- ``stop`` becomes ``stop_sequences``; ``user`` becomes ``metadata.user_id``
  (the only metadata the API accepts, so other metadata is not sent);
- ``max_tokens`` is required by the API: :data:`DEFAULT_MAX_TOKENS` when the
  request gives none;
- ``response_format`` other than ``text`` has no Anthropic equivalent: the
  request is refused with a ``client_error`` (``unsupported_parameter``)
  rather than silently answered in free text.

Usage is normalised: ``input_tokens`` here includes cache reads and writes
(Anthropic reports them apart).  Finish reasons: ``end_turn`` and
``stop_sequence`` -> stop, ``max_tokens`` and ``model_context_window_exceeded``
-> length, ``tool_use`` -> tool_calls, ``refusal`` -> refusal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, ClassVar

import httpx

from app.core.event import Failure
from app.core.tokens import TokenCount
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
    dumps,
    invalid_response,
    usage_int,
)
from app.providers.errors import ProviderError, classify_error
from app.providers.ratelimits import parse_rate_limits

API_VERSION = "2023-06-01"
#: Sent when a request sets no output limit (the API requires one).
DEFAULT_MAX_TOKENS = 4096

_FINISH = {
    "end_turn": FinishReason.STOP,
    "stop_sequence": FinishReason.STOP,
    "max_tokens": FinishReason.LENGTH,
    "model_context_window_exceeded": FinishReason.LENGTH,
    "tool_use": FinishReason.TOOL_CALLS,
    "refusal": FinishReason.REFUSAL,
}


def finish_reason(native: str | None) -> FinishReason | None:
    if native is None:
        return None
    return _FINISH.get(native, FinishReason.OTHER)


def parse_usage(u: Any) -> Usage | None:
    """Anthropic usage -> ours: input excludes cache there, includes it here."""
    if not u:
        return None
    if not isinstance(u, dict):
        raise invalid_response(f"usage is {u!r}, not an object")
    cache_write = usage_int(u.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
    cache_read = usage_int(u.get("cache_read_input_tokens"), "cache_read_input_tokens")
    return Usage(
        input_tokens=usage_int(u.get("input_tokens"), "input_tokens") + cache_write + cache_read,
        output_tokens=usage_int(u.get("output_tokens"), "output_tokens"),
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )


def error_in_body(err: Any, *, where: str) -> ProviderError:
    if isinstance(err, dict):
        error_type, message = err.get("type"), str(err.get("message") or "")
    else:
        error_type, message = None, str(err)
    return ProviderError(
        classify_error(None, error_type),
        f"error {where}: {error_type or 'unknown'}: {message}",
        error_type=str(error_type) if error_type is not None else None,
    )


class AnthropicStreamParser(StreamParser):
    """``message_start`` -> blocks -> ``message_delta`` -> ``message_stop``; ``ping`` and unknown events ignored."""

    __slots__ = ("_block_tool", "_id", "_model", "_stop", "_text", "_tools", "_usage_fields")

    def __init__(self, *, passthrough: bool = False) -> None:
        super().__init__(passthrough=passthrough)
        self._text: list[str] = []
        self._tools: list[ToolCall] = []
        self._block_tool: dict[int, int] = {}  # content block index -> tool call ordinal
        self._usage_fields: JSON = {}
        self._stop: str | None = None
        self._id: str | None = None
        self._model: str | None = None

    def _handle(self, event: str | None, obj: Any, out: list[StreamEvent]) -> None:
        if type(obj) is not dict:
            raise TypeError(f"the event data is {type(obj).__name__}, not an object")
        kind = obj.get("type") or event
        if kind == "content_block_delta":
            delta = obj["delta"]
            delta_type = delta.get("type")
            if delta_type == "text_delta":
                text = delta["text"]
                if type(text) is not str:
                    raise TypeError("text_delta.text is not a string")
                if text:
                    self._text.append(text)
                    out.append(TextDelta(text))
            elif delta_type == "input_json_delta":
                piece = delta.get("partial_json") or ""
                ordinal = self._block_tool.get(obj.get("index"))  # type: ignore[arg-type]
                if ordinal is None:
                    raise KeyError(
                        f"input_json_delta for block {obj.get('index')!r}, which did not start as tool_use"
                    )
                if type(piece) is not str:
                    raise TypeError("input_json_delta.partial_json is not a string")
                self._tools[ordinal].arguments += piece
                out.append(ToolCallDelta(ordinal, None, None, piece))
            # thinking_delta, signature_delta, citations_delta: not part of the answer text
        elif kind == "content_block_start":
            block = obj["content_block"]
            block_type = block.get("type")
            if block_type == "tool_use":
                ordinal = len(self._tools)
                self._tools.append(ToolCall(block.get("id"), block.get("name"), ""))
                self._block_tool[obj["index"]] = ordinal
                out.append(ToolCallDelta(ordinal, block.get("id"), block.get("name"), ""))
            elif block_type == "text" and block.get("text"):
                text = block["text"]
                if type(text) is not str:
                    raise TypeError("content_block.text is not a string")
                self._text.append(text)
                out.append(TextDelta(text))
        elif kind == "message_start":
            message = obj["message"]
            self._id = message.get("id")
            self._model = message.get("model")
            self._add_usage(message.get("usage"), out)
        elif kind == "message_delta":
            delta = obj.get("delta") or {}
            if delta.get("stop_reason"):
                self._stop = delta["stop_reason"]
            self._add_usage(obj.get("usage"), out)
        elif kind == "message_stop":
            self._done = True
        elif kind == "error":
            exc = error_in_body(obj.get("error"), where="in the stream")
            exc.partial = self.partial()
            raise exc
        # ping, content_block_stop and event types added after this was written are ignored (wire-formats.md).

    def _add_usage(self, usage: Any, out: list[StreamEvent]) -> None:
        """Usage fields are cumulative; a later event's figure replaces the earlier one."""
        if not usage:
            return
        if not isinstance(usage, dict):
            raise TypeError(f"usage is {type(usage).__name__}, not an object")
        merged = {**self._usage_fields, **{k: v for k, v in usage.items() if v is not None}}
        parsed = parse_usage(merged)  # validates before we keep it
        self._usage_fields = merged
        if parsed is not None:
            out.append(UsageUpdate(parsed))

    def _unfinished(self) -> str | None:
        return None if self._done else "the stream ended before message_stop"

    def partial(self) -> ChatResult:
        try:
            usage = parse_usage(self._usage_fields)
        except ProviderError:
            usage = None
        return ChatResult(
            text="".join(self._text),
            tool_calls=[ToolCall(t.id, t.name, t.arguments) for t in self._tools],
            finish_reason=finish_reason(self._stop),
            native_finish_reason=self._stop,
            response_model=self._model,
            response_id=self._id,
            usage=usage,
        )

    def _result(self) -> ChatResult:
        result = self.partial()
        for call in result.tool_calls:
            if not call.arguments:
                call.arguments = "{}"  # a tool called without input; OpenAI's shape says "{}"
        return result


# --- request translation ---------------------------------------------------------


def _unsupported(message: str) -> ProviderError:
    return ProviderError(Failure.CLIENT_ERROR, message, error_type="unsupported_parameter")


def _image_block(part: JSON) -> JSON:
    image = part.get("image_url")
    url = image.get("url") if isinstance(image, dict) else image
    if not isinstance(url, str):
        raise _unsupported("an image_url part has no url")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        media_type = header[5:].split(";", 1)[0]
        return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[JSON]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    if isinstance(content, list):
        blocks: list[JSON] = []
        for part in content:
            if isinstance(part, str):
                blocks.append({"type": "text", "text": part})
            elif isinstance(part, dict) and part.get("type") == "image_url":
                blocks.append(_image_block(part))
            elif isinstance(part, dict):
                blocks.append(part)  # text parts have the same shape in both APIs; native blocks pass
            else:
                raise _unsupported(f"a content part is {type(part).__name__}, not an object")
        return blocks
    raise _unsupported(f"message content is {type(content).__name__}, not text or parts")


def _user_content(content: Any) -> Any:
    return content if isinstance(content, str) else _blocks(content)


def _tool_use(call: JSON) -> JSON:
    fn = call.get("function") or {}
    arguments = fn.get("arguments") or "{}"
    try:
        tool_input = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        raise _unsupported(f"tool call {call.get('id')!r} has arguments that are not JSON") from None
    return {"type": "tool_use", "id": call.get("id"), "name": fn.get("name"), "input": tool_input}


_PLAIN_ROLES = frozenset({"user", "assistant"})


def translate_messages(
    messages: list[JSON], system: str | None
) -> tuple[str | list[JSON] | None, list[JSON]]:
    """OpenAI chat messages -> Anthropic ``(system, messages)``."""
    if not system and all(
        type(m.get("content")) is str and m.get("role") in _PLAIN_ROLES and not m.get("tool_calls")
        for m in messages
    ):
        return None, messages  # the common case: nothing to translate, nothing copied
    system_blocks: list[JSON] = _blocks(system)
    out: list[JSON] = []
    tool_turn: JSON | None = None
    for m in messages:
        role = m.get("role")
        content = m.get("content")
        if role in ("system", "developer"):
            system_blocks.extend(_blocks(content))
        elif role == "user":
            out.append({"role": "user", "content": _user_content(content)})
        elif role == "assistant":
            calls = m.get("tool_calls")
            if calls:
                out.append({"role": "assistant", "content": _blocks(content) + [_tool_use(c) for c in calls]})
            else:
                out.append({"role": "assistant", "content": _user_content(content)})
        elif role == "tool":
            result: JSON = {
                "type": "tool_result",
                "tool_use_id": m.get("tool_call_id"),
                "content": content or "",
            }
            if tool_turn is not None and out and out[-1] is tool_turn:
                tool_turn["content"].append(result)  # results of one assistant turn go back in one user turn
            else:
                tool_turn = {"role": "user", "content": [result]}
                out.append(tool_turn)
        else:
            raise _unsupported(f"message role {role!r} has no Anthropic equivalent")
    if not system_blocks:
        return None, out
    if all(b.keys() == {"type", "text"} and b["type"] == "text" for b in system_blocks):
        return "\n\n".join(b["text"] for b in system_blocks), out
    return system_blocks, out


def translate_tool(tool: JSON) -> JSON:
    if "input_schema" in tool:
        return tool
    if tool.get("type") == "function" and isinstance(tool.get("function"), dict):
        fn = tool["function"]
        out: JSON = {
            "name": fn["name"],
            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}},
        }
        if fn.get("description"):
            out["description"] = fn["description"]
        return out
    raise _unsupported(f"tool of type {tool.get('type')!r} has no Anthropic equivalent")


def translate_tool_choice(choice: str | JSON) -> JSON:
    if isinstance(choice, str):
        mapped = {"auto": "auto", "required": "any", "any": "any", "none": "none"}.get(choice)
        if mapped is None:
            raise _unsupported(f"tool_choice {choice!r} has no Anthropic equivalent")
        return {"type": mapped}
    if choice.get("type") == "function":
        return {"type": "tool", "name": (choice.get("function") or {}).get("name")}
    if choice.get("type") in ("auto", "any", "tool", "none"):
        return choice
    raise _unsupported(f"tool_choice {choice!r} has no Anthropic equivalent")


class AnthropicAdapter(ProviderAdapter):
    kind: ClassVar[str] = "anthropic"
    chat_path: ClassVar[str] = "/v1/messages"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": API_VERSION}
        if api_key:
            headers["x-api-key"] = api_key
        return headers

    def build_request(
        self, req: ChatRequest, *, stream: bool | None = None
    ) -> tuple[str, dict[str, str], JSON]:
        stream = req.stream if stream is None else stream
        if req.response_format is not None and req.response_format.get("type") != "text":
            raise _unsupported(
                f"response_format {req.response_format.get('type')!r} is not supported by the Anthropic API"
            )
        system, messages = translate_messages(req.messages, req.system)
        body: JSON = {
            "model": req.model,
            "max_tokens": req.max_output_tokens if req.max_output_tokens is not None else DEFAULT_MAX_TOKENS,
            "messages": messages,
        }
        if system is not None:
            body["system"] = system
        if req.temperature is not None:
            body["temperature"] = req.temperature
        if req.top_p is not None:
            body["top_p"] = req.top_p
        if req.stop is not None:
            body["stop_sequences"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
        if req.tools:
            body["tools"] = [translate_tool(t) for t in req.tools]
        if req.tool_choice is not None:
            body["tool_choice"] = translate_tool_choice(req.tool_choice)
        if req.user is not None:
            body["metadata"] = {"user_id": req.user}
        headers: dict[str, str] = {}
        if stream:
            body["stream"] = True
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
        if data.get("type") == "error":
            raise error_in_body(data.get("error"), where="in a 200 response")
        content = data.get("content")
        if not isinstance(content, list):
            raise invalid_response("the response has no content list")
        texts: list[str] = []
        calls: list[ToolCall] = []
        for block in content:
            block_type = block.get("type")
            if block_type == "text":
                texts.append(block["text"])
            elif block_type == "tool_use":
                calls.append(
                    ToolCall(
                        block.get("id"),
                        block.get("name"),
                        json.dumps(block.get("input") or {}, ensure_ascii=False),
                    )
                )
        native = data.get("stop_reason")
        return ChatResult(
            text="".join(texts),
            tool_calls=calls,
            finish_reason=finish_reason(native),
            native_finish_reason=native,
            response_model=data.get("model"),
            response_id=data.get("id"),
            usage=parse_usage(data.get("usage")),
            request_id=headers.get("request-id"),
            rate_limits=parse_rate_limits(headers),
            raw=data,
        )

    def new_stream_parser(self, *, passthrough: bool = False) -> AnthropicStreamParser:
        return AnthropicStreamParser(passthrough=passthrough)

    async def list_models(self) -> list[str]:
        models: list[str] = []
        params: dict[str, Any] = {"limit": 1000}
        for _ in range(100):  # a bound, not an expectation: a provider that pages forever is a bug
            response = await self._request("GET", "/v1/models", params=params)
            data = self._json_body(response)
            items = data.get("data") if isinstance(data, dict) else None
            if not isinstance(items, list):
                raise self._with_context(invalid_response("the models list has no data array"), response)
            models.extend(str(m["id"]) for m in items if isinstance(m, dict) and "id" in m)
            if not data.get("has_more") or not data.get("last_id"):
                break
            params = {"limit": 1000, "after_id": data["last_id"]}
        return models

    async def count_tokens(self, req: ChatRequest) -> TokenCount:
        """Anthropic's exact count (``/v1/messages/count_tokens``); a labelled tiktoken estimate if that fails."""
        try:
            _, headers, body = self.build_request(req, stream=False)
            wanted: JSON = {
                k: body[k] for k in ("model", "messages", "system", "tools", "tool_choice") if k in body
            }
            response = await self._request(
                "POST", "/v1/messages/count_tokens", headers=headers, content=dumps(wanted)
            )
            data = self._json_body(response)
            tokens = data.get("input_tokens") if isinstance(data, dict) else None
            if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
                raise invalid_response(f"count_tokens answered {data!r}")
            return TokenCount(tokens, False, "anthropic")
        except ProviderError:
            return await super().count_tokens(req)
