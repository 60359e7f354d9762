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
    if tp is int:
        return st.integers(-(2**63), 2**63 - 1)
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is bool:
        return st.booleans()
    return st.text(max_size=70)


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
        [bb.SCHEMA_VERSION + 1, "hb", "w1"],  # another schema version
        [bb.SCHEMA_VERSION - 1, "hb", "w1"],  # an older one
        [bb.SCHEMA_VERSION, "nope", "w1"],  # unknown tag
        [bb.SCHEMA_VERSION, "hb"],  # a field missing
        [bb.SCHEMA_VERSION, "hb", "w1", "extra"],
        [bb.SCHEMA_VERSION, "hb", 7],  # wrong type
        [bb.SCHEMA_VERSION, "upd", "e", True, 0, [], [], 0.0, [], []],  # a bool is not an int
        [bb.SCHEMA_VERSION, "upd", "e", 1, 0, ["a", 5], [], 0.0, [], []],  # a str list, an int
        [bb.SCHEMA_VERSION, "upd", "e", 1, 1, [], [], 0.0, [["k", "away"]], []],  # 2-tuple
        [bb.SCHEMA_VERSION, "upd", "e", 1, 1, ["k"], [], 0.0, [], [["k", 1, "{}"]]],
        [bb.SCHEMA_VERSION, "upd", "e", 1, ["k"], [], 0.0],  # schema 6's shape: no mseq
        [bb.SCHEMA_VERSION, "snap", "e", 1, 1, ["k"], [["k", "away", None]]],
        [bb.SCHEMA_VERSION, "hello", "w", "", "", "", [[1, "k", "e", 2]], []],  # 4-tuple, not 5
        [bb.SCHEMA_VERSION, "hello", "w", "", "", "", [], [[1, "away"]]],  # a record without data
        [bb.SCHEMA_VERSION, "authed", 1, "k"],  # schema 6's shape: no record
        [bb.SCHEMA_VERSION, "setrec", 1, "k", "away", {}],  # data is the JSON text, not a map
        [bb.SCHEMA_VERSION, "beat", "e", 1, 3],  # an int where the schema says float
        {"type": "hb"},
        "hb",
    ],
)
def test_frames_not_of_this_schema_are_refused(raw: Any) -> None:
    with pytest.raises(bb.BackboneDecodeError):
        bb.decode(msgpack.packb(raw))


def test_records_travel_in_every_message_that_carries_them() -> None:
    """The shapes of schema 7: records where they are not the default, mseq beside seq."""
    away = ("k1", "away", '{"note":"é"}')
    sent: list[bb.Message] = [
        bb.Authed(1, "k1", "busy", '{"a":[1,2]}'),
        bb.Authed(2, "k2"),  # the default record
        bb.SetRecord(1, "k1", "away", "{}"),
        bb.Update("e", 9, 4, ["k1"], ["k2"], 1.5, [("k3", "online", "{}")], [away]),
        bb.Snapshot("e", 9, 4, ["k1", "k3"], [away]),
        bb.Hello("w", "e", "r", "", [(1, "k1", "e", 9, True)], [(1, "away", '{"x":1}')]),
    ]
    for msg in sent:
        assert bb.decode(bb.encode(msg)) == msg
    assert bb.decode(bb.encode(bb.Authed(2, "k2"))) == bb.Authed(2, "k2", "online", "{}")
    messages, errors = bb.decode_batch(bb.pack([bb.encode(m) for m in sent]))
    assert messages == sent and not errors


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_anything_else(frame: bytes) -> None:
    with contextlib.suppress(bb.BackboneDecodeError):
        bb.decode(frame)


@given(st.lists(messages(), max_size=40))
def test_an_outbox_sends_everything_in_order_within_its_bounds(sent: list[bb.Message]) -> None:
    box = bb.Outbox()
    frames: list[bb.Sent] = []
    for msg in sent:
        frames += box.add(msg)
        assert len(box) < bb.MAX_BATCH
    if len(box):
        frames.append(box.take())
    received: list[bb.Message] = []
    for frame, carried in frames:
        messages, errors = bb.decode_batch(frame)
        assert messages == carried and not errors
        assert len(carried) == 1 or len(frame) <= bb.MAX_BATCH_BYTES  # only one goes alone
        received += messages
    assert received == sent


def test_an_outbox_sends_a_full_batch_at_once() -> None:
    box = bb.Outbox()
    beat = bb.Heartbeat("w1")
    ready = [s for _ in range(bb.MAX_BATCH + 1) for s in box.add(beat)]
    assert [len(carried) for _, carried in ready] == [bb.MAX_BATCH] and len(box) == 1
    big = bb.Snapshot("e", 1, 1, ["a" * 64] * (bb.MAX_BATCH_BYTES // 64))
    ready = box.add(big)  # what was waiting first, then the big one alone
    assert [carried for _, carried in ready] == [[beat], [big]] and len(box) == 0


def test_a_batch_keeps_its_good_messages_and_reports_the_others() -> None:
    good = bb.encode(bb.Heartbeat("w1"))
    junk = msgpack.packb([bb.SCHEMA_VERSION - 1, "hb", "w1"])
    messages, errors = bb.decode_batch(bb.pack([good, junk, good]))
    assert messages == [bb.Heartbeat("w1")] * 2 and len(errors) == 1
    messages, errors = bb.decode_batch(b"\xc1")  # not msgpack at all: one refusal
    assert messages == [] and len(errors) == 1
    with pytest.raises(bb.BackboneDecodeError):
        bb.decode(bb.pack([good, good]))  # a batch is not one message


@given(st.binary(max_size=64))
def test_arbitrary_bytes_never_raise_from_decode_batch(frame: bytes) -> None:
    messages, errors = bb.decode_batch(frame)
    assert messages or errors


def test_epochs_sort_by_generation_and_can_be_made_above_any_other() -> None:
    first = bb.new_epoch()
    second = bb.new_epoch()
    # The start time is the first guess (a clock may repeat; the nonce differs).
    assert first[:20] <= second[:20] and first != second and len(first) == len(second)
    future = f"{5 * 10**18:020d}-00000000"
    above = bb.new_epoch(bb.epoch_generation(future))
    assert bb.epoch_generation(above) == 5 * 10**18 + 1 and above > future
    # Never past the fixed width, whatever is asked; past the range it is no epoch.
    beyond = bb.new_epoch(10**30)
    assert len(beyond) == len(future) and bb.epoch_generation(beyond) == -1


@pytest.mark.parametrize(
    "junk", ["", "e1", "123-abc", "x" * 29, "1" * 20 + "-ABCDEFGH", "9" * 20 + "-00000000"]
)
def test_anything_else_has_no_generation(junk: str) -> None:
    assert bb.epoch_generation(junk) == -1
