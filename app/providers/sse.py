"""An incremental Server-Sent Events parser for byte chunks cut anywhere.

Follows the WHATWG event-stream rules the providers rely on: lines end in
LF, CRLF or CR; a blank line ends an event; ``data:`` lines are joined with
LF; ``event:`` names it; lines starting with ``:`` are comments (keep-alives);
an event without data is not dispatched.  Unknown fields are ignored.

Speed matters (the gateway's overhead budget is about a millisecond per
request): each byte is scanned for the event separator once, a chunk holding
whole events is never copied, and the common one-line shapes
(``data: ...`` and ``event: x`` + ``data: ...``) skip the general loop.
``data`` stays ``bytes``: ``json.loads`` takes bytes, and a gateway passing
the stream through can write them back untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

#: An event larger than this (or a server that never ends one) is refused, not buffered forever.
MAX_EVENT_BYTES = 16 * 1024 * 1024


class SSEError(ValueError):
    """The byte stream is not a well-formed event stream (truncated, or an event too large)."""


@dataclass(slots=True)
class SSEMessage:
    """One dispatched event: its name (``None`` when the stream gave none) and its data."""

    event: str | None
    data: bytes


#: What the hot path hands on: (event name or None, data).  A tuple costs a fraction of an object.
RawEvent = tuple[str | None, bytes]


def _parse_block(block: bytes) -> RawEvent | None:
    """One event's lines (without the blank line that ended it) -> the event, or None if it had no data."""
    event: str | None = None
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if not line or line[0] == 0x3A:  # blank or ":" comment
            continue
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode("utf-8", "replace")
        # "id", "retry" and unknown fields do not matter to a provider stream.
    if not data:
        return None
    return (event, data[0] if len(data) == 1 else b"\n".join(data))


class SSEParser:
    """Feed it byte chunks as they arrive; it returns the events each chunk completed.

    ``close()`` at the end of the body returns an event whose lines were all
    complete but whose closing blank line never came (servers that end that
    way exist) and raises :class:`SSEError` if the body stopped mid-line.
    ``feed``/``close`` return :class:`SSEMessage` objects; ``feed_raw``/``close_raw``
    the same as ``(event, data)`` tuples, for the stream parsers' hot path.
    """

    __slots__ = ("_buf", "_max", "_scan", "_skip_lf")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self._scan = 0  # where the next search for a separator starts: nothing before it is looked at again
        self._skip_lf = False  # the last chunk ended in CR: an LF starting the next one is part of it
        self._max = max_event_bytes

    def feed(self, chunk: bytes) -> list[SSEMessage]:
        return [SSEMessage(event, data) for event, data in self.feed_raw(chunk)]

    def close(self) -> list[SSEMessage]:
        return [SSEMessage(event, data) for event, data in self.close_raw()]

    def feed_raw(self, chunk: bytes) -> list[RawEvent]:
        if self._skip_lf or b"\r" in chunk:
            chunk = self._normalise_newlines(chunk)
        if not chunk:
            return []
        buf = self._buf + chunk if self._buf else chunk
        out: list[RawEvent] = []
        start = 0
        find = buf.find
        startswith = buf.startswith
        end = find(b"\n\n", self._scan)
        while end >= 0:
            if end > start:
                # The two shapes providers send, without copying the block first:
                # "data: ..." (OpenAI) and "event: x\ndata: ..." (Anthropic).
                nl = find(b"\n", start, end)
                if nl < 0 and startswith(b"data: ", start):
                    out.append((None, buf[start + 6 : end]))
                elif (
                    nl >= 0
                    and startswith(b"event: ", start)
                    and startswith(b"data: ", nl + 1)
                    and find(b"\n", nl + 1, end) < 0
                ):
                    out.append((buf[start + 7 : nl].decode("utf-8", "replace"), buf[nl + 7 : end]))
                else:
                    event = _parse_block(buf[start:end])
                    if event is not None:
                        out.append(event)
            start = end + 2
            end = find(b"\n\n", start)
        if start:
            buf = buf[start:]
        self._buf = buf
        # The last byte may be the first LF of a separator: look at it again next time.
        self._scan = len(buf) - 1 if buf else 0
        if len(buf) > self._max:
            raise SSEError(f"an event exceeds {self._max} bytes without ending; refusing to buffer more")
        return out

    def _normalise_newlines(self, chunk: bytes) -> bytes:
        # A CR ending a chunk is a line end now (so the event is not held back until more bytes
        # come); if the next chunk starts with LF, that LF was the second half of a CRLF.
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if chunk[-1:] == b"\r":
            self._skip_lf = True
        return chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")

    @property
    def pending(self) -> int:
        """Bytes received that are not yet part of a dispatched event."""
        return len(self._buf)

    def close_raw(self) -> list[RawEvent]:
        buf = self._buf
        self._buf = b""
        self._skip_lf = False
        self._scan = 0
        if not buf.strip(b"\n"):
            return []
        if not buf.endswith(b"\n"):
            tail = buf[-80:].decode("utf-8", "replace")
            raise SSEError(
                f"the stream ended in the middle of a line ({len(buf)} bytes unfinished, ending {tail!r})"
            )
        event = _parse_block(buf.strip(b"\n"))
        return [event] if event is not None else []
