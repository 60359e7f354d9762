"""The backbone schema: every message round-trips; nothing else decodes."""

from __future__ import annotations

import contextlib
import dataclasses
import typing
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import backbone as bb

CLASSES = typing.get_args(bb.Message)


def _strategy(tp: Any) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(tp)
    if origin is list:
        return st.lists(_strategy(typing.get_args(tp)[0]), max_size=5)
    if origin is tuple:
        return st.tuples(*(_strategy(t) for t in typing.get_args(tp)))
    return st.integers(-(2**63), 2**63 - 1) if tp is int else st.text(max_size=70)


def messages() -> st.SearchStrategy[bb.Message]:
    def build(cls: type[Any]) -> st.SearchStrategy[Any]:
        hints = typing.get_type_hints(cls)
        fields = [_strategy(hints[f.name]) for f in dataclasses.fields(cls)]
        return st.tuples(*fields).map(lambda values: cls(*values))

    return st.one_of(*(build(cls) for cls in CLASSES))


@given(messages())
def test_every_message_round_trips(msg: bb.Message) -> None:
    assert bb.decode(bb.encode(msg)) == msg


def test_every_message_type_has_a_unique_tag() -> None:
    tags = [cls.TAG for cls in CLASSES]
    assert len(tags) == len(set(tags))


@pytest.mark.parametrize(
    "raw",
    [
        [2, "hb", "w1"],  # another schema version
        [1, "nope", "w1"],  # unknown tag
        [1, "hb"],  # a field missing
        [1, "hb", "w1", "extra"],
        [1, "hb", 7],  # wrong type
        [1, "upd", "e", True, [], []],  # a bool is not an int
        [1, "upd", "e", 1, ["a", 5], []],  # a list of str with an int in it
        [1, "hello", "w", [[1, "k", "e"]]],  # a 3-tuple where the schema says 4
        {"type": "hb"},
        "hb",
    ],
)
def test_frames_not_of_this_schema_are_refused(raw: Any) -> None:
    with pytest.raises(bb.BackboneDecodeError):
        bb.decode(msgpack.packb(raw))


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_else(frame: bytes) -> None:
    with contextlib.suppress(bb.BackboneDecodeError):
        bb.decode(frame)


def test_epochs_sort_by_start_time() -> None:
    first = bb.new_epoch()
    second = bb.new_epoch()
    # The time part orders them (a clock may repeat a nanosecond; the suffix differs).
    assert first[:20] <= second[:20] and first != second and len(first) == len(second)
