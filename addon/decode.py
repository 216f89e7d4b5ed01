"""Content-encoding decoding on a copy of what was forwarded (the client got the original bytes).

Chunk by chunk, so a compressed stream keeps each event's arrival time. Corrupt data stops the
decoding with an error message; it never raises. Output is capped to defuse decompression bombs.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

MAX_DECODED = 64 * 1024 * 1024


def _decompressor(encoding: str) -> Callable[[bytes], bytes] | None:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip", "deflate"):
        # wbits=47: gzip or zlib header, auto-detected. Raw deflate (seen in the wild) falls back below.
        d = zlib.decompressobj(47)
        return d.decompress
    if enc == "br":
        import brotli

        return brotli.Decompressor().process
    if enc == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().decompressobj().decompress
    raise ValueError(f"unsupported content-encoding {encoding!r}")


def decode_chunks(chunks: list[tuple[int, bytes]], encoding: str) -> tuple[list[tuple[int, bytes]], str | None]:
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
            plain = step(data)
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError: all mean corrupt data
            return out, f"corrupt {encoding} data: {exc}"
        total += len(plain)
        if total > MAX_DECODED:
            return out, "decoded body larger than the capture limit"
        if plain:
            out.append((t, plain))
    return out, None


def decode_body(chunks: list[tuple[int, bytes]], encoding: str) -> tuple[bytes, str | None]:
    parts, err = decode_chunks(chunks, encoding)
    return b"".join(p for _, p in parts), err
