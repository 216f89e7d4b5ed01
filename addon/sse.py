"""Incremental Server-Sent Events decoder (WHATWG rules), tolerant of any byte split.

Fed raw chunks as they arrived; yields complete events only. CRLF, CR and LF line endings,
comment lines (`: OPENROUTER PROCESSING`) and fields without a space after the colon are handled.
Invalid UTF-8 is replaced rather than raised: capture must never fail on bad bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(slots=True)
class SSEEvent:
    event: str  # "message" when the stream did not name it
    data: str
    id: str | None = None
    time_ns: int = 0  # arrival time of the chunk that completed the event


class SSEDecoder:
    __slots__ = ("_buf", "_data", "_event", "_id", "_pending_cr")

    def __init__(self) -> None:
        self._buf = b""
        self._pending_cr = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes, time_ns: int = 0) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # second half of a CRLF split across reads
        self._pending_cr = chunk.endswith(b"\r")
        buf = self._buf + chunk
        # Normalise line endings; a trailing lone CR is already a line end.
        buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, self._buf = buf.split(b"\n")
        out: list[SSEEvent] = []
        for raw in lines:
            ev = self._line(raw.decode("utf-8", "replace"), time_ns)
            if ev is not None:
                out.append(ev)
        return out

    def close(self, time_ns: int = 0) -> list[SSEEvent]:
        """Flush what is left when the stream ends (a final event without its blank line counts)."""
        out: list[SSEEvent] = []
        if self._buf:
            ev = self._line(self._buf.decode("utf-8", "replace"), time_ns)
            self._buf = b""
            if ev is not None:
                out.append(ev)
        ev = self._line("", time_ns)
        if ev is not None:
            out.append(ev)
        return out

    def _line(self, line: str, time_ns: int) -> SSEEvent | None:
        if not line:
            if not self._data and not self._event:
                return None
            ev = SSEEvent(self._event or "message", "\n".join(self._data), self._id, time_ns)
            self._data = []
            self._event = ""
            return ev
        if line.startswith(":"):
            return None
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value
        return None


def decode_events(chunks: Iterable[tuple[int, bytes]]) -> Iterator[SSEEvent]:
    """Decode a captured chunk list into events, keeping arrival times."""
    dec = SSEDecoder()
    last = 0
    for t, data in chunks:
        last = t
        yield from dec.feed(data, t)
    yield from dec.close(last)
