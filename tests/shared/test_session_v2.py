"""The version 2 session (shared/session_v2.py), without I/O: scripted server frames in,
the frames it writes and the events it returns out; and tests/vectors/view_v2.json,
which tests/js/view_v2.test.js runs against the JavaScript view too."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from shared import v2
from shared.session import InconsistentUpdate, Online, ProtocolError, State
from shared.session_v2 import CountChange, RecordView, SessionV2, ViewChange, parse_frame_v2
from shared.v2 import Record, Resume, Scope

VIEW_V2 = json.loads((Path(__file__).resolve().parents[1] / "vectors" / "view_v2.json").read_text())
KEY = SigningKey(b"\x07" * 32)
ME = bytes(KEY.verify_key).hex()
OTHER = "b" * 64
URL = "wss://Lobby.Example/ws"
IDENTITY = "wss://lobby.example:443/ws"
NONCE = "f0" * 32


def _apply(view: RecordView, frame: dict[str, str]) -> str:
    try:
        msg = parse_frame_v2(frame["text"] if "text" in frame else bytes.fromhex(frame["hex"]))
        if isinstance(msg, v2.Count):
            view.apply_count(msg)
        elif isinstance(msg, v2.Snapshot):
            view.apply_snapshot(msg)
        else:
            view.apply_update(msg)
    except ProtocolError as exc:
        return type(exc).__name__
    return "ok"


def _dump(view: RecordView) -> dict[str, Any]:
    return {
        "epoch": view.epoch,
        "seq": view.seq,
        "scope": None if view.scope is None else view.scope.value,
        "count": view.count,
        "stale": view.stale,
        "records": {
            key: {"status": r.status, "data": r.data} for key, r in sorted(view.records.items())
        },
    }


@pytest.mark.parametrize("case", VIEW_V2["cases"], ids=[c["name"] for c in VIEW_V2["cases"]])
def test_view_v2_vectors(case: dict[str, Any]) -> None:
    view = RecordView()
    results, stale = [], []
    for frame in case["frames"]:
        results.append(_apply(view, frame))
        stale.append(view.stale)
    assert results == case["results"]
    assert stale == case["stale"]
    assert _dump(view) == case["view"]


class _Unwalkable(dict[str, Record]):
    """Records whose keys may be looked up but not walked."""

    def keys(self) -> Any:
        raise AssertionError("the whole view was walked")

    def __iter__(self) -> Any:
        raise AssertionError("the whole view was walked")


def test_an_update_costs_its_own_keys_not_the_views() -> None:
    keys = [f"{i:064x}" for i in range(4)]
    view = RecordView()
    view.apply_snapshot(parse_frame_v2(snapshot(1, *keys[:3])))
    view.records = _Unwalkable(view.records)
    view.apply_update(parse_frame_v2(update(2, 1, (keys[3],), (keys[0],))))
    with pytest.raises(InconsistentUpdate):
        view.apply_update(parse_frame_v2(update(3, 2, (keys[1],))))
    assert dict.keys(view.records) == set(keys[1:])


def snapshot(seq: int, *keys: str, scope: Scope = Scope.LOBBY, epoch: str = "e1") -> bytes:
    return v2.encode_snapshot(epoch, seq, scope, [(k, Record()) for k in keys])


def update(seq: int, prev: int, joined: tuple[str, ...] = (), left: tuple[str, ...] = ()) -> bytes:
    return v2.encode_update(seq, prev, [(k, Record("away")) for k in joined], [], list(left))


def authenticated(**options: Any) -> SessionV2:
    session = SessionV2(KEY, URL, **options)
    assert session.receive(v2.challenge_v2(NONCE)) == []
    (auth,) = session.data_to_send()
    obj = json.loads(auth)
    assert obj["server"] == IDENTITY
    assert v2.verify_auth_v2(bytes.fromhex(NONCE), ME, obj["signature"], IDENTITY) is None
    assert session.state is State.AUTH
    return session


def online(session: SessionV2, seq: int = 5, *keys: str) -> Online:
    assert session.receive(v2.auth_ok_v2(ME, "e1", seq, False)) == []
    (event,) = session.receive(snapshot(seq, ME, *keys))
    assert isinstance(event, Online) and session.state is State.OPEN
    return event


def test_auth_carries_the_signature_for_the_url_record_and_follow() -> None:
    session = SessionV2(KEY, URL, record=v2.RecordChange("busy", '{"n":1}'))
    session.follow_watch([OTHER.upper()])
    session.data_to_send()  # before the challenge, a follow changes only the auth
    session.receive(v2.challenge_v2(NONCE))
    obj = json.loads(session.data_to_send()[0])
    assert obj["record"] == {"status": "busy", "data": {"n": 1}}
    assert obj["follow"] == {"scope": "watch", "keys": [OTHER]}
    assert "resume" not in obj


def test_a_challenge_of_another_version_is_refused() -> None:
    session = SessionV2(KEY, URL)
    with pytest.raises(ProtocolError, match="version 2"):
        session.receive(json.dumps({"type": "challenge", "version": 1, "nonce": NONCE}))
    assert session.data_to_send() == []


def test_a_url_that_is_no_server_identity_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match="http://x/ws"):
        SessionV2(KEY, "http://x/ws")


def test_online_after_auth_ok_and_a_snapshot_listing_the_client() -> None:
    session = authenticated()
    event = online(session, 5, OTHER)
    assert isinstance(event.change, ViewChange) and event.change.epoch == "e1"
    assert session.view.records == {ME: Record(), OTHER: Record()}
    assert session.resume_point() == Resume("e1", 5)


def test_a_first_lobby_snapshot_without_the_client_is_refused() -> None:
    session = authenticated()
    session.receive(v2.auth_ok_v2(ME, "e1", 5, False))
    with pytest.raises(ProtocolError, match="itself"):
        session.receive(snapshot(5, OTHER))


def test_a_gap_asks_once_for_a_snapshot_and_updates_wait_for_it() -> None:
    session = authenticated()
    online(session)
    (event,) = session.receive(update(6, 5, joined=(OTHER,)))
    assert isinstance(event, ViewChange) and event.joined == (OTHER,)
    with pytest.raises(ProtocolError):
        session.receive(update(9, 8, left=(OTHER,)))
    assert session.data_to_send() == ['{"type":"get_lobby"}']
    assert session.resume_point() is None  # a stale view is not resumed from
    assert session.receive(update(10, 9, left=(OTHER,))) == []  # ignored, no second ask
    assert session.data_to_send() == []
    session.receive(snapshot(10, ME))
    assert not session.view.stale and session.view.seq == 10


def _resuming(seq: int) -> SessionV2:
    view = RecordView()
    view.apply_snapshot(v2.decode_server_frame_v2(snapshot(seq, ME, OTHER)))  # type: ignore[arg-type]
    session = SessionV2(KEY, URL, resume=Resume("e1", seq), view=view)
    session.receive(v2.challenge_v2(NONCE))
    assert json.loads(session.data_to_send()[0])["resume"] == {"epoch": "e1", "seq": seq}
    session.receive(v2.auth_ok_v2(ME, "e1", 9, True))
    return session


def test_a_resume_continues_the_view_from_the_update_after_auth_ok() -> None:
    session = _resuming(7)
    (event,) = session.receive(update(9, 7, left=(OTHER,)))
    assert isinstance(event, Online) and session.view.records == {ME: Record()}
    assert session.data_to_send() == []


def test_a_resumed_update_with_another_prev_leaves_the_view_stale_and_resyncs() -> None:
    session = _resuming(7)
    (event,) = session.receive(update(9, 8, left=(OTHER,)))
    assert isinstance(event, Online) and session.view.stale
    assert session.data_to_send() == ['{"type":"get_lobby"}']


def test_resumed_without_a_resume_asked_for_is_refused() -> None:
    session = authenticated()
    with pytest.raises(ProtocolError, match="resumed"):
        session.receive(v2.auth_ok_v2(ME, "e1", 9, True))


def test_the_count_scope_goes_online_on_its_count() -> None:
    session = authenticated(follow=v2.Follow(Scope.COUNT))
    session.receive(v2.auth_ok_v2(ME, "e1", 9, False))
    online_event, count = session.receive(v2.count("e1", 9, 1234))
    assert isinstance(online_event, Online) and count == CountChange("e1", 9, 1234)
    assert session.view.count == 1234 and session.view.scope is Scope.COUNT


def test_methods_write_their_frames_and_keep_what_the_next_auth_asks() -> None:
    session = authenticated()
    online(session)
    session.set_record(status="away")
    session.set_record(data={"name": "Ada"})
    session.follow_watch([OTHER])
    session.watch(["c" * 64])
    session.unwatch([OTHER])
    session.follow_count()
    session.follow_lobby()
    assert [json.loads(f)["type"] for f in session.data_to_send()] == [
        "set_record",
        "set_record",
        "follow",
        "watch",
        "unwatch",
        "follow",
        "follow",
    ]
    assert session.record == v2.RecordChange("away", '{"name":"Ada"}')
    assert session.follow == v2.Follow(Scope.LOBBY)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.set_record(), "status or data"),
        (lambda s: s.set_record(status=""), "status must be"),
        (lambda s: s.set_record(status="x\n"), "control"),
        (lambda s: s.set_record(data={"x": "y" * 300}), "at most 255"),
        (lambda s: s.set_record(data=[1]), "object"),
        (lambda s: s.follow_watch(["nothex"]), "64-hex"),
        (lambda s: s.follow_watch("a" * 64), "not a string"),
        (lambda s: s.follow_watch(f"{n:064x}" for n in range(1001)), "at most 1000"),
        (lambda s: s.watch([OTHER]), "follow_watch first"),
        (lambda s: s.unwatch([OTHER]), "follow_watch first"),
    ],
)
def test_methods_refuse_bad_arguments_before_writing(call: Any, match: str) -> None:
    session = authenticated()
    online(session)
    with pytest.raises(ValueError, match=match):
        call(session)
    assert session.data_to_send() == []
    assert session.record is None and session.follow is None


def test_a_watchlist_may_not_grow_past_its_bound() -> None:
    session = authenticated()
    online(session)
    session.follow_watch(f"{n:064x}" for n in range(1000))
    session.data_to_send()
    with pytest.raises(ValueError, match="at most 1000"):
        session.watch([OTHER])
    assert session.data_to_send() == [] and len(session.follow.keys) == 1000  # type: ignore[union-attr]


def test_a_count_is_not_resumed_and_a_snapshot_may_answer_a_resume() -> None:
    session = authenticated(follow=v2.Follow(Scope.COUNT))
    session.receive(v2.auth_ok_v2(ME, "e1", 9, False))
    session.receive(v2.count("e1", 9, 3))
    assert session.resume_point() is None
    resumed = _resuming(7)
    (event,) = resumed.receive(snapshot(9, ME))
    assert isinstance(event, Online) and resumed.view.records == {ME: Record()}


def test_a_refused_scope_request_is_taken_back_and_a_resume_states_the_views_choice() -> None:
    third = "c" * 64
    session = authenticated(follow=v2.Follow(Scope.WATCH, (OTHER,)))
    session.receive(v2.auth_ok_v2(ME, "e1", 5, False))
    session.receive(snapshot(5, OTHER, scope=Scope.WATCH))
    session.watch([third])
    session.watch([ME])
    session.data_to_send()
    full = v2.error_v2(v2.ErrorCodeV2.WATCHLIST_FULL, "no room now", 0)
    (error,) = session.receive(full)  # the watch of third, refused under memory pressure
    assert isinstance(error, v2.ErrorV2) and error.applied == 0
    assert session.follow == v2.Follow(Scope.WATCH, (OTHER, ME))
    follow, resume, resend = session.next_connection()  # a drop before the answer
    assert follow == v2.Follow(Scope.WATCH, (OTHER,)) and resume == v2.Resume("e1", 5)
    assert resend == [v2.Watch((ME,))]
    session.receive(v2.encode_snapshot("e1", 6, Scope.WATCH, [(OTHER, Record())], 1))
    assert session.following.view == v2.Follow(Scope.WATCH, (OTHER, ME))
    assert session.next_connection()[2] == []
    with pytest.raises(ProtocolError, match="refuses"):
        session.receive(v2.error_v2(v2.ErrorCodeV2.NOT_WATCHING, "no", 1))  # none waits
