"""The rules of presence records (shared.records): what a status and data may be."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import records


@pytest.mark.parametrize(
    ("status", "ok"),
    [
        ("online", True),
        ("away", True),
        ("in a meeting", True),
        ("é" * 16, True),  # 32 bytes of UTF-8
        ("é" * 16 + "x", False),  # 33
        ("x" * 32, True),
        ("x" * 33, False),
        ("", False),
        ("tab\there", False),
        ("nul\x00", False),
        ("del\x7f", False),
        ("lone \ud800", False),  # not UTF-8 at all
    ],
)
def test_a_status_is_1_to_32_bytes_without_control_characters(status: str, ok: bool) -> None:
    assert records.is_status(status) is ok


@pytest.mark.parametrize(
    ("obj", "text"),
    [
        ({}, "{}"),
        ({"a": 1, "b": [True, None]}, '{"a":1,"b":[true,null]}'),
        ({"note": "é"}, '{"note":"é"}'),  # not escaped: bytes are what count
        ({"x": "y" * 247}, '{"x":"' + "y" * 247 + '"}'),  # 255 bytes
        ({"x": "y" * 248}, None),  # 256
        ({"x": "é" * 124}, None),  # 253 characters, 377 bytes
        ({"x": float("nan")}, None),  # not JSON
        ({"x": "\ud800"}, None),  # a lone surrogate: no UTF-8 for it
    ],
)
def test_data_is_the_compact_encoding_of_an_object_within_255_bytes(
    obj: dict[str, Any], text: str | None
) -> None:
    assert records.encode_data(obj) == text
    if text is not None:
        assert records.is_data(text)


@pytest.mark.parametrize(
    "text",
    ['{"a": 1}', "[]", "1", '"{}"', '{"a":NaN}', '{"a":1,"a":2}', "{", "", " {}", "null"],
)
def test_text_that_is_not_compact_object_data_is_refused(text: str) -> None:
    assert not records.is_data(text)


@given(st.dictionaries(st.text(max_size=8), st.integers() | st.text(max_size=8), max_size=6))
def test_whatever_encode_data_makes_is_data(obj: dict[str, Any]) -> None:
    text = records.encode_data(obj)
    if text is not None:
        assert records.is_data(text) and json.loads(text) == obj
        assert len(text.encode()) <= records.MAX_DATA_BYTES


def test_the_default_record_is_a_record() -> None:
    assert records.is_record(*records.DEFAULT)
    assert records.DEFAULT_STATUS in records.STATUS_NAMES
