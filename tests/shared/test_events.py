"""Presence events (shared.events): the one encoding of the event stream and webhooks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import backbone as bb
from shared import events, records
from shared.events import BadEventId, Event, EventFormatError

A, B, C, D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)
EPOCH = "00000001765130000000000000-0123abcd"


def update(**fields: object) -> bb.Update:
    base: dict[str, object] = {
        "epoch": EPOCH,
        "seq": 7,
        "mseq": 5,
        "joined": [],
        "left": [],
        "at": 1765130000.1234,
    }
    base.update(fields)
    return bb.Update(**base)  # type: ignore[arg-type]


def test_an_update_becomes_its_net_effect_per_key() -> None:
    event = events.from_update(
        update(
            joined=[C, A, B],
            left=[B, D],
            records=[(A, "away", '{"n":1}'), (B, "busy", "{}")],
            updated=[("e" * 64, "busy", '{"x":2}')],
        )
    )
    assert event.joined == ((A, ("away", '{"n":1}')), (C, records.DEFAULT))
    assert event.updated == ((B, ("busy", "{}")), ("e" * 64, ("busy", '{"x":2}')))
    assert event.left == (D,)  # B left and joined again: updated, not left
    assert (event.epoch, event.seq, event.id) == (EPOCH, 7, f"{EPOCH}:7")


def test_an_update_of_records_alone_is_an_event_too() -> None:
    event = events.from_update(update(updated=[(A, "online", "{}")]))
    assert event.updated == ((A, records.DEFAULT),) and not event.joined and not event.left


def test_the_wire_form_is_compact_json_with_the_api_field_names() -> None:
    event = Event(EPOCH, 42, 1765130000.1234, ((A, ("away", '{"note":"é"}')),), (), (B,))
    raw = events.encode(event)
    assert b"\n" not in raw and b": " not in raw
    assert json.loads(raw) == {
        "epoch": EPOCH,
        "seq": 42,
        "at": 1765130000.123,
        "joined": [{"publicKey": A, "status": "away", "data": {"note": "é"}}],
        "updated": [],
        "left": [{"publicKey": B}],
    }
    assert raw.startswith(b'{"epoch":') and "é".encode() in raw  # UTF-8, not escaped


def test_a_status_with_quotes_is_escaped_and_the_form_round_trips() -> None:
    event = Event(EPOCH, 1, 0.5, (), ((A, ('say "hi"\\', '{"a":[1,null]}')),), ())
    assert events.decode(events.encode(event)) == event


_key = st.text("0123456789abcdef", min_size=64, max_size=64)
_record = st.tuples(
    st.sampled_from(["online", "away", 'q"\\', "ünï"]),
    st.sampled_from(["{}", '{"a":1}', '{"t":"\\n"}']),
)


@given(st.dictionaries(_key, st.one_of(st.none(), _record), max_size=8), st.integers(0, 2**53 - 1))
def test_whatever_encode_writes_decode_reads_back(
    changes: dict[str, tuple[str, str] | None], seq: int
) -> None:
    items = sorted(changes.items())
    joined = tuple((k, r) for k, r in items[::2] if r is not None)
    updated = tuple((k, r) for k, r in items[1::2] if r is not None)
    left = tuple(k for k, r in items if r is None)
    event = Event(EPOCH, seq, 12.25, joined, updated, left)
    assert events.decode(events.encode(event)) == event


def test_applying_events_removes_left_then_sets_the_rest() -> None:
    view = {A: records.DEFAULT, B: ("away", "{}")}
    events.apply(view, Event(EPOCH, 2, 0.0, ((C, records.DEFAULT),), ((A, ("busy", "{}")),), (B,)))
    assert view == {A: ("busy", "{}"), C: records.DEFAULT}


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        b"\xff",
        b'{"epoch":"e","seq":1}',
        b'{"epoch":"e:1","seq":1,"at":0,"joined":[],"updated":[],"left":[]}',
        b'{"epoch":"e","seq":-1,"at":0,"joined":[],"updated":[],"left":[]}',
        b'{"epoch":"e","seq":true,"at":0,"joined":[],"updated":[],"left":[]}',
        b'{"epoch":"e","seq":1,"at":"0","joined":[],"updated":[],"left":[]}',
        b'{"epoch":"e","seq":1,"at":0,"joined":{},"updated":[],"left":[]}',
        b'{"epoch":"e","seq":1,"at":0,"joined":[],"updated":[],"left":["' + A.encode() + b'"]}',
        b'{"epoch":"e","seq":1,"at":0,"joined":[{"publicKey":"'
        + A.upper().encode()
        + b'","status":"online","data":{}}],"updated":[],"left":[]}',
        b'{"epoch":"e","seq":1,"at":0,"joined":[{"publicKey":"'
        + A.encode()
        + b'","status":"","data":{}}],"updated":[],"left":[]}',
        b'{"epoch":"e","seq":1,"at":0,"joined":[{"publicKey":"'
        + A.encode()
        + b'","status":"online","data":[]}],"updated":[],"left":[{"publicKey":"'
        + B.encode()
        + b'"}]}',
        b'{"epoch":"e","seq":1,"at":0,"joined":[],"updated":[],"left":[{"publicKey":"'
        + A.encode()
        + b'"},{"publicKey":"'
        + A.encode()
        + b'"}]}',
        b"[" * 100_000,
    ],
)
def test_anything_but_an_event_is_refused_with_a_reason(raw: bytes) -> None:
    with pytest.raises(EventFormatError, match=r"\w"):
        events.decode(raw)


def test_an_event_id_is_epoch_colon_seq_and_parses_back() -> None:
    assert events.event_id(EPOCH, 12) == f"{EPOCH}:12"
    assert events.parse_event_id(f"{EPOCH}:12") == (EPOCH, 12)
    assert events.parse_event_id("e:0") == ("e", 0)
    assert events.parse_event_id(f"e:{2**53 - 1}") == ("e", 2**53 - 1)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no ':'"),
        ("12", "no ':'"),
        (":12", "epoch"),
        ("e:", "seq"),
        ("e:-1", "seq"),
        ("e:+1", "seq"),
        ("e:01", "seq"),
        ("e:1.0", "seq"),
        ("e: 1", "seq"),
        (f"e:{2**53}", "seq"),
        ("e:1" + "0" * 40, "seq"),
        ("a b:1", "epoch"),
        ("é:1", "epoch"),
        ("a:b:1", "epoch"),
        ("x" * 256 + ":1", "epoch"),
        ("x" * 300 + ":1", "at most"),
    ],
)
def test_a_bad_event_id_is_refused_naming_the_problem(text: str, problem: str) -> None:
    with pytest.raises(BadEventId, match=problem):
        events.parse_event_id(text)


@given(st.text(max_size=300))
def test_parsing_any_text_as_an_event_id_raises_nothing_but_bad_event_id(text: str) -> None:
    try:
        epoch, seq = events.parse_event_id(text)
    except BadEventId:
        return
    assert events.event_id(epoch, seq) == text
