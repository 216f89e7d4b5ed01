"""JSON decoding on the capture path: 2-4x faster than `json.loads`, with the same results.

orjson decodes what it accepts; anything it refuses (NaN/Infinity literals, lone surrogate escapes,
UTF-16/32 bodies, nesting over 1024 levels...) goes to the standard library, so an input gives what
`json.loads` gives: the same value or an error. One difference, checked by property tests: an integer
outside [-2**63, 2**64) comes out as the nearest float (orjson) instead of an exact int. Nothing the
proxy reads depends on that (such token counts are treated as absurd, such parameters are exported as
numbers either way). Request bodies from coding agents are large (system prompt, tools, history), so
this is most of the pipeline's JSON time.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> str:
    """Compact JSON text (UTF-8, not ASCII-escaped) for storage; what orjson cannot encode (integers
    beyond 64 bits, lone surrogates, non-string keys) is encoded by the standard library."""
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
