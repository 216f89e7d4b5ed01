"""Minimal, fast fake LLM upstream for bench/latency.py (raw asyncio + uvloop HTTP/1.1, keep-alive).

Run as its own process so it never competes with the benchmark client's event loop:

    python bench/_fake_upstream.py --port 0 --sse-chunks 50 --sse-delay-ms 1

It prints `PORT <n>` on stdout once listening. Every POST is answered; a request whose JSON body has
`"stream": true` gets a chunked `text/event-stream` chat.completion (role chunk, N content deltas, a
finish chunk with usage, `[DONE]`), anything else an immediate small `chat.completion` JSON with
content-length. Both carry `x-bench-recv-ns` (perf_counter_ns when the request was read) so the
client can split the time into request leg and response leg. GET requests get a JSON
`{"connections": N}` (connections accepted so far): the benchmark's keep-alive check.
With `--relay-to PORT` it is instead a plain TCP byte relay, the floor for any extra hop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

MODEL = "fake-bench-model"
COMPLETION_ID = "chatcmpl-bench0000000000000000000001"

SMALL_BODY = json.dumps({
    "id": COMPLETION_ID,
    "object": "chat.completion",
    "created": 1767225600,
    "model": MODEL,
    "system_fingerprint": "fp_bench",
    "choices": [{
        "index": 0,
        "message": {"role": "assistant", "content": "Hello! How can I help you today?", "refusal": None},
        "logprobs": None,
        "finish_reason": "stop",
    }],
    "usage": {"prompt_tokens": 23, "completion_tokens": 9, "total_tokens": 32,
              "prompt_tokens_details": {"cached_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0}},
}, separators=(",", ":")).encode()

SMALL_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: application/json\r\n"
    b"x-request-id: req_bench\r\n"
    b"content-length: " + str(len(SMALL_BODY)).encode() + b"\r\n"
)
SMALL_TAIL = b"\r\n" + SMALL_BODY

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\n"
    b"x-request-id: req_bench_sse\r\n"
    b"transfer-encoding: chunked\r\n"
)

WORDS = ("The", " quick", " brown", " fox", " jumps", " over", " the", " lazy", " dog", ".")


def _event(delta: dict, finish: str | None = None, usage: dict | None = None) -> bytes:
    obj: dict = {"id": COMPLETION_ID, "object": "chat.completion.chunk", "created": 1767225600, "model": MODEL,
                 "system_fingerprint": "fp_bench",
                 "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def sse_events(n: int) -> list[bytes]:
    """n events total: role chunk, n-3 content deltas, finish+usage chunk, [DONE]."""
    n = max(n, 3)
    out = [_event({"role": "assistant", "content": ""})]
    for i in range(n - 3):
        out.append(_event({"content": WORDS[i % len(WORDS)]}))
    out.append(_event({}, "stop", {"prompt_tokens": 23, "completion_tokens": n - 3, "total_tokens": 23 + n - 3}))
    out.append(b"data: [DONE]\n\n")
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in out]


STATS = {"connections": 0}


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, chunks: list[bytes],
                 delay: float) -> None:
    STATS["connections"] += 1
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.split(b"\r\n")
            method = lines[0].split(b" ", 1)[0]
            length = 0
            for line in lines[1:]:
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:].strip())
            body = await reader.readexactly(length) if length else b""
            # when the whole request was here (CLOCK_MONOTONIC, comparable with the client's perf_counter_ns)
            recv = b"x-bench-recv-ns: %d\r\n" % time.perf_counter_ns()
            if method == b"GET":
                stats = json.dumps(STATS).encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                             % (len(stats), stats))
                continue
            if b'"stream":true' in body or b'"stream": true' in body:
                writer.write(SSE_HEAD + recv + b"\r\n")
                await writer.drain()
                for c in chunks:
                    if delay:
                        await asyncio.sleep(delay)
                    writer.write(c)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
            else:
                writer.write(SMALL_HEAD + recv + SMALL_TAIL)
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()
    except ConnectionError:
        pass
    finally:
        dst.close()


async def relay(port: int, target: int) -> None:
    """A plain TCP byte relay (one upstream connection per client connection): the floor for any
    extra userspace hop on this machine, to compare the proxy against."""

    async def conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    server = await asyncio.start_server(conn, "127.0.0.1", port, backlog=256)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


async def main(port: int, n_chunks: int, delay_ms: float) -> None:
    chunks = sse_events(n_chunks)
    delay = delay_ms / 1000.0
    server = await asyncio.start_server(lambda r, w: handle(r, w, chunks, delay), "127.0.0.1", port,
                                        backlog=256)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--sse-chunks", type=int, default=50)
    ap.add_argument("--sse-delay-ms", type=float, default=1.0)
    ap.add_argument("--relay-to", type=int, metavar="PORT", help="be a plain TCP relay to 127.0.0.1:PORT instead")
    a = ap.parse_args()
    coro = relay(a.port, a.relay_to) if a.relay_to else main(a.port, a.sse_chunks, a.sse_delay_ms)
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:  # pragma: no cover
        asyncio.run(coro)
    except KeyboardInterrupt:
        sys.exit(0)
