"""Content-encoding decoding on a copy of what was forwarded (the client got the original bytes).

Chunk by chunk, so a compressed stream keeps each event's arrival time. Corrupt data stops the
decoding with an error message; it never raises. Output is capped (MAX_DECODED) *while* decoding,
so a decompression bomb costs at most the cap in memory, never the bomb's full size.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

MAX_DECODED = 64 * 1024 * 1024
_STEP = 1024 * 1024  # output produced per decompressor call


class TooLarge(Exception):
    pass


Step = Callable[[bytes, int], bytes]  # (input, room left) -> output; raises TooLarge past the room


def _zlib_step() -> Step:
    # wbits=47: gzip or zlib header, auto-detected.
    d = zlib.decompressobj(47)

    def step(data: bytes, room: int) -> bytes:
        out = bytearray()
        buf = data
        while True:
            out += d.decompress(buf, _STEP)
            if len(out) > room:
                raise TooLarge
            buf = d.unconsumed_tail
            if not buf:
                return bytes(out)

    return step


def _brotli_step() -> Step:
    import brotli

    d = brotli.Decompressor()

    def step(data: bytes, room: int) -> bytes:
        out = bytearray(d.process(data, output_buffer_limit=_STEP))
        while not d.can_accept_more_data() and not d.is_finished():
            if len(out) > room:
                raise TooLarge
            more = d.process(b"", output_buffer_limit=_STEP)
            if not more:
                break
            out += more
        if len(out) > room:
            raise TooLarge
        return bytes(out)

    return step


def _zstd_step() -> Step:
    import zstandard

    class Sink:
        """Receives the output in write_size pieces and aborts the decoding once past the room."""

        def __init__(self) -> None:
            self.parts: list[bytes] = []
            self.size = 0
            self.room = 0

        def write(self, b: bytes) -> int:
            self.size += len(b)
            if self.size > self.room:
                raise TooLarge
            self.parts.append(bytes(b))
            return len(b)

    sink = Sink()
    # Sink implements the one method stream_writer uses (write); it is not a full IO[bytes].
    writer = zstandard.ZstdDecompressor().stream_writer(sink, write_size=_STEP, write_return_read=True)  # type: ignore[arg-type]

    def step(data: bytes, room: int) -> bytes:
        sink.parts, sink.size, sink.room = [], 0, room
        writer.write(data)
        return b"".join(sink.parts)

    return step


def _decompressor(encoding: str) -> Step | None:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip", "deflate"):
        return _zlib_step()
    if enc == "br":
        return _brotli_step()
    if enc == "zstd":
        return _zstd_step()
    raise ValueError(f"unsupported content-encoding {encoding!r}")


def decode_chunks(chunks: list[tuple[int, bytes]], encoding: str,
                  max_decoded: int = MAX_DECODED) -> tuple[list[tuple[int, bytes]], str | None]:
    try:
        step = _decompressor(encoding)
    except ValueError as exc:
        return [], str(exc)
    if step is None:
        return chunks, None
    out: list[tuple[int, bytes]] = []
    total = 0
    for t, data in chunks:
        try:
            plain = step(data, max_decoded - total)
        except TooLarge:
            return out, f"decoded body larger than {max_decoded} bytes (not decoded further)"
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError: all mean corrupt data
            return out, f"corrupt {encoding} data: {exc}"
        total += len(plain)
        if plain:
            out.append((t, plain))
    return out, None


def decode_body(chunks: list[tuple[int, bytes]], encoding: str) -> tuple[bytes, str | None]:
    parts, err = decode_chunks(chunks, encoding)
    return b"".join(p for _, p in parts), err
