"""The stream parsers: any chunking of a valid stream parses the same; a broken stream fails clearly.

The builders at the top write streams exactly as the providers do
(wire-formats.md), with the variations real servers add: keep-alive comments,
``ping`` and unknown events, CRLF or CR line ends, data split over several
``data:`` lines.  The benchmark imports them too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.core.event import Failure
from app.providers import (
    AnthropicStreamParser,
    ChatResult,
    FinishReason,
    OpenAIStreamParser,
    ProviderError,
    SSEMessage,
    SSEParser,
    StreamDone,
    StreamParser,
    TextDelta,
    ToolCallDelta,
    UsageUpdate,
)
from app.providers.sse import SSEError

# --- stream builders --------------------------------------------------------------------


@dataclass
class Stream:
    """A stream as bytes and what a parser must make of it."""

    data: bytes
    text: str
    tool_calls: list[tuple[str, str, str]]  # (id, name, arguments)
    usage: tuple[int, int, int, int] | None  # (input total, output, cache read, cache write)
    finish: FinishReason


def _event(name: str | None, payload: Any, *, nl: str, multiline: bool) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, indent=1 if multiline else None)
    lines = [f"event: {name}"] if name else []
    lines += [f"data: {line}" for line in data.split("\n")]
    return nl.join(lines) + nl + nl


def openai_stream(
    pieces: list[str],
    tools: Sequence[tuple[str, list[str]]] = (),
    *,
    usage: tuple[int, int, int, int] | None = (12, 5, 4, 2),
    nl: str = "\n",
    multiline: bool = False,
    comments: bool = False,
    done: bool = True,
    model: str = "gpt-4o-mini",
) -> Stream:
    """An OpenAI chat completion stream; ``usage`` is (prompt, completion, cached, reasoning)."""
    head = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model}
    parts: list[str] = []

    def add(delta: dict[str, Any], finish: str | None = None) -> None:
        chunk = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        parts.append(_event(None, chunk, nl=nl, multiline=multiline))
        if comments:
            parts.append(f": keep-alive{nl}{nl}")

    add({"role": "assistant", "content": ""})
    for piece in pieces:
        add({"content": piece})
    for i, (name, args) in enumerate(tools):
        add({"tool_calls": [{"index": i, "id": f"call_{i}", "type": "function", "function": {"name": name}}]})
        for arg in args:
            add({"tool_calls": [{"index": i, "function": {"arguments": arg}}]})
    finish = "tool_calls" if tools else "stop"
    add({}, finish)
    if usage is not None:
        prompt, completion, cached, reasoning = usage
        final = {
            **head,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": reasoning},
            },
        }
        parts.append(_event(None, final, nl=nl, multiline=multiline))
    body = "".join(parts)
    if done:
        body += _event(None, "[DONE]", nl=nl, multiline=False)
    return Stream(
        data=body.encode(),
        text="".join(pieces),
        tool_calls=[(f"call_{i}", name, "".join(args)) for i, (name, args) in enumerate(tools)],
        usage=(usage[0], usage[1], usage[2], 0) if usage else None,
        finish=FinishReason.TOOL_CALLS if tools else FinishReason.STOP,
    )


def anthropic_stream(
    pieces: list[str],
    tools: Sequence[tuple[str, list[str]]] = (),
    *,
    usage: tuple[int, int, int, int] = (20, 7, 30, 5),
    nl: str = "\n",
    multiline: bool = False,
    pings: bool = False,
    unknown: bool = False,
    thinking: bool = False,
    stop: bool = True,
) -> Stream:
    """An Anthropic messages stream; ``usage`` is (uncached input, output, cache read, cache write)."""
    uncached, output, cache_read, cache_write = usage
    parts: list[str] = []

    def add(name: str, payload: dict[str, Any]) -> None:
        parts.append(_event(name, {"type": name, **payload}, nl=nl, multiline=multiline))
        if pings:
            parts.append(_event("ping", {"type": "ping"}, nl=nl, multiline=False))

    add(
        "message_start",
        {
            "message": {
                "id": "msg_1",
                "type": "message",
                "role": "assistant",
                "model": "claude-sonnet-4-5",
                "content": [],
                "stop_reason": None,
                "stop_sequence": None,
                "usage": {
                    "input_tokens": uncached,
                    "cache_creation_input_tokens": cache_write,
                    "cache_read_input_tokens": cache_read,
                    "output_tokens": 1,
                },
            }
        },
    )
    index = 0
    if thinking:
        add("content_block_start", {"index": index, "content_block": {"type": "thinking", "thinking": ""}})
        add("content_block_delta", {"index": index, "delta": {"type": "thinking_delta", "thinking": "hmm"}})
        add("content_block_delta", {"index": index, "delta": {"type": "signature_delta", "signature": "sig"}})
        add("content_block_stop", {"index": index})
        index += 1
    add("content_block_start", {"index": index, "content_block": {"type": "text", "text": ""}})
    for piece in pieces:
        add("content_block_delta", {"index": index, "delta": {"type": "text_delta", "text": piece}})
    add("content_block_stop", {"index": index})
    if unknown:
        parts.append(
            _event("future_event", {"type": "future_event", "x": [1, 2]}, nl=nl, multiline=multiline)
        )
    for i, (name, args) in enumerate(tools):
        index += 1
        add(
            "content_block_start",
            {
                "index": index,
                "content_block": {"type": "tool_use", "id": f"toolu_{i}", "name": name, "input": {}},
            },
        )
        for arg in args:
            add(
                "content_block_delta",
                {"index": index, "delta": {"type": "input_json_delta", "partial_json": arg}},
            )
        add("content_block_stop", {"index": index})
    stop_reason = "tool_use" if tools else "end_turn"
    add(
        "message_delta",
        {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": {"output_tokens": output}},
    )
    body = "".join(parts)
    if stop:
        body += _event("message_stop", {"type": "message_stop"}, nl=nl, multiline=multiline)
    return Stream(
        data=body.encode(),
        text="".join(pieces),
        tool_calls=[(f"toolu_{i}", name, "".join(args) or "{}") for i, (name, args) in enumerate(tools)],
        usage=(uncached + cache_read + cache_write, output, cache_read, cache_write),
        finish=FinishReason.TOOL_CALLS if tools else FinishReason.STOP,
    )


def feed_all(parser: StreamParser, chunks: list[bytes]) -> tuple[list[Any], ChatResult]:
    """All events of a stream (``StreamDone`` last) and the final result."""
    events: list[Any] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.close())
    assert isinstance(events[-1], StreamDone)
    assert not any(isinstance(e, StreamDone) for e in events[:-1])
    return events, events[-1].result


def close_result(parser: StreamParser) -> ChatResult:
    done = parser.close()[-1]
    assert isinstance(done, StreamDone)
    return done.result


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts})
    out, last = [], 0
    for p in points:
        out.append(data[last:p])
        last = p
    out.append(data[last:])
    return out


def check_result(result: ChatResult, stream: Stream) -> None:
    assert result.text == stream.text
    assert [(c.id, c.name, c.arguments) for c in result.tool_calls] == stream.tool_calls
    assert result.finish_reason is stream.finish
    if stream.usage is None:
        assert result.usage is None
    else:
        assert result.usage is not None
        u = result.usage
        assert (u.input_tokens, u.output_tokens, u.cache_read_tokens, u.cache_write_tokens) == stream.usage


# --- strategies ----------------------------------------------------------------------

_text = st.text(min_size=1, max_size=6)
_tools = st.lists(
    st.tuples(st.sampled_from(["get_weather", "lookup", "f"]), st.lists(st.text(max_size=5), max_size=4)),
    max_size=2,
)
_nl = st.sampled_from(["\n", "\r\n", "\r"])


@st.composite
def openai_streams(draw: st.DrawFn) -> Stream:
    return openai_stream(
        draw(st.lists(_text, max_size=10)),
        draw(_tools),
        usage=draw(st.one_of(st.none(), st.tuples(*[st.integers(0, 10_000)] * 4))),
        nl=draw(_nl),
        multiline=draw(st.booleans()),
        comments=draw(st.booleans()),
    )


@st.composite
def anthropic_streams(draw: st.DrawFn) -> Stream:
    return anthropic_stream(
        draw(st.lists(_text, max_size=10)),
        draw(_tools),
        usage=draw(st.tuples(*[st.integers(0, 10_000)] * 4)),
        nl=draw(_nl),
        multiline=draw(st.booleans()),
        pings=draw(st.booleans()),
        unknown=draw(st.booleans()),
        thinking=draw(st.booleans()),
    )


_PARSERS = {
    "openai": (openai_streams, OpenAIStreamParser),
    "anthropic": (anthropic_streams, AnthropicStreamParser),
}
_settings = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- any chunking of a valid stream parses the same -------------------------------------


@pytest.mark.parametrize("kind", list(_PARSERS))
@_settings
@given(data=st.data())
def test_any_chunking_gives_the_same_events_and_result(kind: str, data: st.DataObject) -> None:
    strategy, parser_cls = _PARSERS[kind]
    stream = data.draw(strategy())
    whole_events, whole = feed_all(parser_cls(), [stream.data])
    check_result(whole, stream)
    cuts = data.draw(st.lists(st.integers(0, len(stream.data)), max_size=30))
    events, result = feed_all(parser_cls(), split(stream.data, cuts))
    assert result == whole
    # Chunking may not change what is said, nor its order; text deltas stay whole events.
    assert events == whole_events
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == stream.text


@pytest.mark.parametrize("kind", list(_PARSERS))
@_settings
@given(data=st.data())
def test_byte_at_a_time(kind: str, data: st.DataObject) -> None:
    strategy, parser_cls = _PARSERS[kind]
    stream = data.draw(strategy())
    _, result = feed_all(parser_cls(), [stream.data[i : i + 1] for i in range(len(stream.data))])
    check_result(result, stream)


@pytest.mark.parametrize("kind", list(_PARSERS))
@_settings
@given(data=st.data())
def test_passthrough_reproduces_every_upstream_event(kind: str, data: st.DataObject) -> None:
    strategy, parser_cls = _PARSERS[kind]
    stream = data.draw(strategy())
    cuts = data.draw(st.lists(st.integers(0, len(stream.data)), max_size=10))
    events, _ = feed_all(parser_cls(passthrough=True), split(stream.data, cuts))
    raw = [e for e in events if isinstance(e, SSEMessage)]
    plain_events, _ = feed_all(parser_cls(), [stream.data])
    assert [e for e in events if not isinstance(e, SSEMessage)] == plain_events
    assert [e for e in events if not isinstance(e, SSEMessage | StreamDone)] == [
        e for e in feed_all(parser_cls(), split(stream.data, cuts))[0] if not isinstance(e, StreamDone)
    ]
    # The raw events parse back to the same JSON the stream carried (pings and unknown events included).
    assert raw and all(e.data == b"[DONE]" or isinstance(json.loads(e.data), dict) for e in raw)
    if kind == "anthropic":
        assert raw[-1].event == "message_stop"
    else:
        assert raw[-1].data == b"[DONE]"


# --- broken streams fail clearly ---------------------------------------------------------


@pytest.mark.parametrize("kind", list(_PARSERS))
@_settings
@given(data=st.data())
def test_truncated_stream_is_a_connection_error_that_keeps_what_arrived(
    kind: str, data: st.DataObject
) -> None:
    strategy, parser_cls = _PARSERS[kind]
    stream = data.draw(strategy())
    # Any cut before the terminator's last line is complete: at most up to its last byte, without the line end.
    nl = b"\r\n" if b"\r\n" in stream.data else (b"\r" if b"\r" in stream.data else b"\n")
    end = data.draw(st.integers(0, len(stream.data) - 2 * len(nl)), label="cut at")
    prefix = stream.data[:end]
    cuts = data.draw(st.lists(st.integers(0, len(prefix)), max_size=10))
    parser = parser_cls()
    for chunk in split(prefix, cuts):
        parser.feed(chunk)
    with pytest.raises(ProviderError) as info:
        parser.close()
    err = info.value
    assert err.failure is Failure.CONNECTION_ERROR
    assert err.error_type == "stream_truncated"
    assert "[DONE]" in err.message or "message_stop" in err.message or "middle of" in err.message
    assert err.partial is not None
    assert stream.text.startswith(err.partial.text)
    if kind == "anthropic" and end > stream.data.index(b"content_block_start"):
        # message_start has arrived: the input side of a billed failure is known.
        assert err.partial.usage is not None
        assert stream.usage is not None
        assert err.partial.usage.input_tokens == stream.usage[0]


@pytest.mark.parametrize("kind", list(_PARSERS))
@_settings
@given(data=st.data())
def test_invalid_json_in_an_event_is_named(kind: str, data: st.DataObject) -> None:
    strategy, parser_cls = _PARSERS[kind]
    stream = data.draw(strategy())
    nl = b"\r\n" if b"\r\n" in stream.data else (b"\r" if b"\r" in stream.data else b"\n")
    sep = nl + nl
    events = stream.data.split(sep)
    victim = data.draw(st.integers(0, len(events) - 3))  # not the terminator, not the empty tail
    name = b""
    if events[victim].startswith(b"event:"):
        name = events[victim].split(nl, 1)[0] + nl
    events[victim] = name + b'data: {"type": "content_block_delta", "broken'
    broken = sep.join(events)
    cuts = data.draw(st.lists(st.integers(0, len(broken)), max_size=10))
    parser = parser_cls()
    with pytest.raises(ProviderError) as info:
        feed_all(parser, split(broken, cuts))
    assert info.value.failure is Failure.SERVER_ERROR
    assert info.value.error_type == "invalid_stream"
    assert "not valid JSON" in info.value.message
    assert "broken" in info.value.message


@pytest.mark.parametrize(
    ("parser_cls", "stream", "needle"),
    [
        (OpenAIStreamParser, openai_stream(["a", "b"], done=False), re.escape("[DONE]")),
        (AnthropicStreamParser, anthropic_stream(["a", "b"], stop=False), "message_stop"),
    ],
)
def test_missing_terminator_is_named(parser_cls: type[StreamParser], stream: Stream, needle: str) -> None:
    parser = parser_cls()
    events = parser.feed(stream.data)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", "b"]
    with pytest.raises(ProviderError, match=needle) as info:
        parser.close()
    assert info.value.failure is Failure.CONNECTION_ERROR
    assert info.value.partial is not None and info.value.partial.text == "ab"
    assert info.value.partial.produced_output


def test_openai_compatible_parser_accepts_a_finished_stream_without_done() -> None:
    stream = openai_stream(["x"], usage=None, done=False)
    result = feed_all(OpenAIStreamParser(require_done=False), [stream.data])[1]
    assert result.text == "x" and result.usage is None
    # ...but not one cut before its finish_reason.
    cut = stream.data[: stream.data.index(b'"finish_reason": "stop"')]
    cut = cut[: cut.rindex(b"\n\n") + 2]
    parser = OpenAIStreamParser(require_done=False)
    parser.feed(cut)
    with pytest.raises(ProviderError, match="before any finish_reason"):
        parser.close()


# --- error events mid-stream ----------------------------------------------------------------


def _sse(name: str | None, payload: Any) -> bytes:
    return _event(name, payload, nl="\n", multiline=False).encode()


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        ({"type": "overloaded_error", "message": "Overloaded"}, Failure.OVERLOADED),
        ({"type": "rate_limit_error", "message": "slow down"}, Failure.RATE_LIMITED),
        ({"type": "api_error", "message": "boom"}, Failure.SERVER_ERROR),
        ({"type": "invalid_request_error", "message": "bad"}, Failure.CLIENT_ERROR),
        ({"type": "something_new", "message": "?"}, Failure.SERVER_ERROR),
    ],
)
def test_anthropic_error_event_mid_stream_keeps_the_partial_answer(
    error: dict[str, str], failure: Failure
) -> None:
    stream = anthropic_stream(["Hel", "lo"], stop=False)
    body = stream.data[: stream.data.index(b"event: message_delta")]
    parser = AnthropicStreamParser()
    parser.feed(body)
    with pytest.raises(ProviderError) as info:
        parser.feed(_sse("error", {"type": "error", "error": error}))
    err = info.value
    assert err.failure is failure
    assert err.error_type == error["type"]
    assert error["message"] in str(err)
    assert err.partial is not None and err.partial.text == "Hello"
    assert (
        err.partial.usage is not None and err.partial.usage.input_tokens == 55
    )  # 20 + 30 cached + 5 written


@pytest.mark.parametrize(
    ("error", "failure"),
    [
        ({"message": "Rate limit", "type": "tokens", "code": "rate_limit_exceeded"}, Failure.RATE_LIMITED),
        ({"message": "oops", "type": "server_error", "code": None}, Failure.SERVER_ERROR),
        (
            {"message": "quota", "type": "insufficient_quota", "code": "insufficient_quota"},
            Failure.CLIENT_ERROR,
        ),
        ({"object": "error", "message": "bad", "type": "BadRequestError", "code": 400}, Failure.CLIENT_ERROR),
        ({"message": "busy", "type": "x", "code": 503}, Failure.OVERLOADED),
        ("plain text error", Failure.SERVER_ERROR),
    ],
)
def test_openai_error_chunk_mid_stream(error: Any, failure: Failure) -> None:
    stream = openai_stream(["par", "tial"], done=False, usage=None)
    parser = OpenAIStreamParser()
    events = parser.feed(stream.data.split(b'"finish_reason": "stop"')[0].rsplit(b"\n\n", 1)[0] + b"\n\n")
    assert any(isinstance(e, TextDelta) for e in events)
    with pytest.raises(ProviderError) as info:
        parser.feed(_sse(None, {"error": error}))
    assert info.value.failure is failure
    assert info.value.partial is not None and info.value.partial.text == "partial"


@pytest.mark.parametrize(
    "chunk",
    [
        b"data: [1, 2]\n\n",
        b'data: {"choices": [7]}\n\n',
        b'data: {"choices": [{"index": 0, "delta": {"content": 5}}]}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": "many"}}\n\n',
        b'data: {"choices": [{"delta": {"tool_calls": [{"index": "x"}]}}]}\n\n',
    ],
)
def test_openai_chunk_of_the_wrong_shape_is_invalid_stream(chunk: bytes) -> None:
    parser = OpenAIStreamParser()
    with pytest.raises(ProviderError) as info:
        parser.feed(chunk)
    assert info.value.failure is Failure.SERVER_ERROR
    assert info.value.error_type in {"invalid_stream", "invalid_response"}


@pytest.mark.parametrize(
    "chunk",
    [
        b"event: message_start\ndata: []\n\n",
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 0}\n\n',
        b'event: content_block_delta\ndata: {"type": "content_block_delta", "index": 3, '
        b'"delta": {"type": "input_json_delta", "partial_json": "{"}}\n\n',
        b'event: message_delta\ndata: {"type": "message_delta", "usage": {"output_tokens": -1}}\n\n',
    ],
)
def test_anthropic_event_of_the_wrong_shape_is_invalid_stream(chunk: bytes) -> None:
    parser = AnthropicStreamParser()
    with pytest.raises(ProviderError) as info:
        parser.feed(chunk)
    assert info.value.failure is Failure.SERVER_ERROR
    assert info.value.error_type in {"invalid_stream", "invalid_response"}


def test_events_after_the_terminator_are_ignored() -> None:
    o = openai_stream(["a"])
    parser = OpenAIStreamParser()
    parser.feed(o.data + b'data: {"choices": [{"index": 0, "delta": {"content": "late"}}]}\n\n')
    assert close_result(parser).text == "a"
    a = anthropic_stream(["a"])
    parser2 = AnthropicStreamParser()
    parser2.feed(a.data + _sse("content_block_delta", {"type": "content_block_delta"}))
    assert close_result(parser2).text == "a"


def test_usage_events_carry_cumulative_usage() -> None:
    stream = anthropic_stream(["a"], usage=(10, 9, 0, 0))
    events = AnthropicStreamParser().feed(stream.data)
    usages = [e.usage for e in events if isinstance(e, UsageUpdate)]
    assert [u.output_tokens for u in usages] == [1, 9]
    assert all(u.input_tokens == 10 for u in usages)


def test_tool_call_deltas_name_the_call_first() -> None:
    for stream, parser in (
        (openai_stream([], [("lookup", ['{"q"', ": 1}"])]), OpenAIStreamParser()),
        (anthropic_stream([], [("lookup", ['{"q"', ": 1}"])]), AnthropicStreamParser()),
    ):
        events = [e for e in parser.feed(stream.data) if isinstance(e, ToolCallDelta)]
        assert events[0].index == 0 and events[0].name == "lookup" and events[0].id
        assert "".join(e.arguments for e in events) == '{"q": 1}'
        result = close_result(parser)
        assert result.tool_calls[0].arguments == '{"q": 1}'
        assert result.finish_reason is FinishReason.TOOL_CALLS


# --- the SSE layer itself ---------------------------------------------------------------


def test_sse_fields_comments_and_multiline_data() -> None:
    parser = SSEParser()
    msgs = parser.feed(
        b": comment\n\nid: 7\nretry: 10\nevent: x\ndata:first\ndata: second\nunknown: y\n\n"
        b"event: no-data\n\ndata\n\n"
    )
    assert msgs == [SSEMessage("x", b"first\nsecond"), SSEMessage(None, b"")]
    assert parser.close() == []


def test_sse_close_dispatches_a_complete_last_event_without_its_blank_line() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: 1\n\ndata: 2\n") == [SSEMessage(None, b"1")]
    assert parser.close() == [SSEMessage(None, b"2")]


def test_sse_close_mid_line_says_so() -> None:
    parser = SSEParser()
    parser.feed(b'data: {"half')
    with pytest.raises(SSEError, match="middle of a line"):
        parser.close()


def test_sse_cr_split_across_chunks_is_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == [SSEMessage(None, b"a")]  # CR LF CR: line end, blank line
    assert parser.feed(b"\ndata: b\r\r") == [SSEMessage(None, b"b")]  # the LF belonged to the CR before it
    assert parser.feed(b"\n") == []  # ...and this one too
    assert parser.feed(b"data: c\r\r") == [SSEMessage(None, b"c")]  # CR-only servers are not held back
    assert parser.close() == []


def test_sse_refuses_an_endless_event() -> None:
    parser = SSEParser(max_event_bytes=1000)
    with pytest.raises(SSEError, match="exceeds 1000 bytes"):
        for _ in range(20):
            parser.feed(b"data: " + b"x" * 100)


def test_sse_does_not_rescan_the_buffer() -> None:
    """Feeding a long event in small pieces stays linear: each byte is searched once."""
    parser = SSEParser()
    for _ in range(10_000):
        assert parser.feed(b"xxxxxxxx") == []
    assert parser.pending == 80_000
    assert parser._scan == 80_000 - 1  # the next search starts at the end, not at 0
