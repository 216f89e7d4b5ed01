"""addon.fastjson.loads gives what json.loads gives: the same value, or an error; integers outside
[-2**63, 2**64) come out as the nearest float."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from addon import fastjson

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5),
    max_leaves=25,
)


def outcome(fn: Any, data: str | bytes) -> tuple[str, str]:
    try:
        return "value", repr(fn(data))  # repr: NaN equals NaN, -0.0 differs from 0.0
    except (ValueError, RecursionError) as exc:
        return "error", type(exc).__name__ if not isinstance(exc, ValueError) else "ValueError"


def wide_ints_as_floats(value: Any) -> Any:
    """The one allowed difference: an int outside [-2**63, 2**64) may come out as the nearest float."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, list):
        return [wide_ints_as_floats(v) for v in value]
    if isinstance(value, dict):
        return {k: wide_ints_as_floats(v) for k, v in value.items()}
    return value


def same(data: str | bytes) -> None:
    def normalized(fn: Any) -> Any:
        return lambda d: wide_ints_as_floats(fn(d))

    assert outcome(normalized(fastjson.loads), data) == outcome(normalized(json.loads), data), data


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES, st.booleans(), st.booleans())
def test_valid_documents_decode_the_same(value: Any, ascii_only: bool, as_bytes: bool) -> None:
    text = json.dumps(value, ensure_ascii=ascii_only)  # NaN/Infinity literals and big ints included
    same(text.encode("utf-8", "surrogatepass") if as_bytes else text)


@settings(max_examples=400, deadline=None)
@given(JSON_VALUES, st.integers(min_value=0, max_value=200), st.binary(max_size=4))
def test_damaged_documents_fail_or_decode_the_same(value: Any, cut: int, junk: bytes) -> None:
    raw = json.dumps(value).encode()
    same(raw[:cut] + junk + raw[cut:])
    same(raw[:cut])


@pytest.mark.parametrize("data", [
    "NaN", "[Infinity, -Infinity]", '"\\ud800"', '{"a": "\\udcff"}', str(2**64), str(-(2**63) - 1), "1e400",
    "-0.0", '"\x00"', '"tab\there"', '{"a": 1, "a": 2}', "  [1] ", "[1,]", "", "\ufeff[1]",
    "[" * 5000 + "]" * 5000, "[" * 1024 + "]" * 1024, "[" * 1025 + "]" * 1025, str(2**64 - 1), str(-(2**63)),
    '"\\u00e9"', "é",
    "[1]".encode("utf-16"), "[1]".encode("utf-32"), b"\xff\xfe", b'"\xc3\x28"', b"[1]\x00",
])
def test_edge_cases_decode_the_same(data: str | bytes) -> None:
    same(data)


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_dumps_round_trips_through_the_standard_library(value: Any) -> None:
    text = fastjson.dumps(value)
    assert isinstance(text, str)
    # NaN/Infinity: orjson writes null, the standard library NaN/Infinity; either way it decodes
    expected = json.loads(json.dumps(value))
    got = json.loads(text)
    assert repr(wide_ints_as_floats(got)) in (repr(wide_ints_as_floats(expected)), repr(_nulled(expected)))


def _nulled(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, list):
        return [_nulled(v) for v in value]
    if isinstance(value, dict):
        return {k: _nulled(v) for k, v in value.items()}
    return value


def test_dumps_falls_back_for_what_orjson_refuses() -> None:
    assert json.loads(fastjson.dumps({"big": 2**70, "s": "\ud800"})) == {"big": 2**70, "s": "\ud800"}
    assert fastjson.dumps({"a": "é"}) == '{"a":"é"}'
