"""The load client's lean update path (scripts/loadtest/leanv2.py): the same view as
the library's, and every frame the library refuses declined, the view unchanged."""

from __future__ import annotations

import os
import random

import pytest

from scripts.loadtest.leanv2 import apply_update
from shared.session_v2 import RecordView, ViewError
from shared.v2 import Entry, Record, Scope, Snapshot, decode_server_frame_v2
from shared.v2.server import encode_update


def _key(n: int) -> str:
    return f"{n:064x}"


def _views(keys: list[str]) -> tuple[RecordView, RecordView]:
    entries = tuple(Entry(k, Record()) for k in keys)
    lean, full = RecordView(), RecordView()
    for view in (lean, full):
        view.apply_snapshot(Snapshot("e1", 5, Scope.WATCH, entries))
    return lean, full


def _state(view: RecordView) -> tuple[int | None, bool, dict[str, Record]]:
    return view.seq, view.stale, dict(view.records)


def test_the_lean_path_sets_the_records_the_library_sets() -> None:
    rng = random.Random(3)
    universe = [_key(n) for n in range(1, 40)]
    lean, full = _views(universe[:20])
    seq = 5
    for step in range(300):
        online = list(full.records)
        offline = [k for k in universe if k not in full.records]
        left = rng.sample(online, min(len(online), rng.randrange(3)))
        rest = [k for k in online if k not in left]
        updated = rng.sample(rest, min(len(rest), rng.randrange(3)))
        pool = offline + left[:1]
        joined = rng.sample(pool, min(len(pool), rng.randrange(3)))
        status = rng.choice(["online", "away", "busy", f"s0.{step}", "é" * 16])
        frame = encode_update(
            seq + 1,
            seq,
            [(k, Record(status)) for k in joined],
            [(k, Record(rng.choice(["away", f"x{step}"]))) for k in updated],
            left,
        )
        seq += 1
        full.apply_update(decode_server_frame_v2(frame))
        assert apply_update(lean, frame) == len(joined) + len(updated) + len(left)
        assert _state(lean) == _state(full)


def _cases() -> dict[str, bytes]:
    a, c = _key(1), _key(3)  # keys 1 and 2 online at seq 5
    good = encode_update(6, 5, [(c, Record("away"))], [], [])
    custom = encode_update(6, 5, [(c, Record("s1"))], [], [])
    flags_at = 1 + 8 + 8 + 4 + 32  # type, seq, prev, count, key
    return {
        "a gap": encode_update(7, 6, [(c, Record())], [], []),
        "a repeat": encode_update(5, 4, [(c, Record())], [], []),
        "seq below prev": encode_update(4, 5, [(c, Record())], [], []),
        "left not online": encode_update(6, 5, [], [], [c]),
        "joined already online": encode_update(6, 5, [(a, Record())], [], []),
        "updated not online": encode_update(6, 5, [], [(c, Record("away"))], []),
        "left twice": encode_update(6, 5, [], [], [a, a]),
        "joined twice": encode_update(6, 5, [(c, Record()), (c, Record())], [], []),
        "updated and left": encode_update(6, 5, [], [(a, Record("away"))], [a]),
        "reserved flags": good[:flags_at] + bytes((good[flags_at] | 0x04,)) + good[flags_at + 1 :],
        "status not UTF-8": custom[:-2] + b"\xff" + custom[-1:],
        "status empty": custom[: flags_at + 1] + b"\x00",
        "bytes after the end": good + b"\x00",
        "cut short": good[:-1],
        "not an update": b"\x01" + good[1:],
        "data (the library checks its JSON)": encode_update(
            6, 5, [(c, Record("away", '{"x":1}'))], [], []
        ),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_the_lean_path_declines_what_it_does_not_check_and_changes_nothing(case: str) -> None:
    frame = _cases()[case]
    lean, _ = _views([_key(1), _key(2)])
    before = _state(lean)
    assert apply_update(lean, frame) is None
    assert _state(lean) == before
    if case.startswith("data"):  # well-formed: the library applies it
        lean.apply_update(decode_server_frame_v2(frame))
        return
    with pytest.raises((ViewError, ValueError)):  # the library refuses it
        lean.apply_update(decode_server_frame_v2(frame))


def test_the_lean_path_leaves_stale_and_count_views_to_the_library() -> None:
    frame = encode_update(6, 5, [(_key(3), Record())], [], [])
    stale, _ = _views([_key(1)])
    stale.stale = True
    assert apply_update(stale, frame) is None
    empty = RecordView()
    assert apply_update(empty, frame) is None
    assert apply_update(_views([])[0], os.urandom(3)) is None


class _Quiet:
    """A transport that takes what is written and reads nothing."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []

    async def send(self, frame: str | bytes) -> None:
        self.sent.append(frame)


def test_an_unsampled_client_takes_the_lean_path_and_the_library_finds_its_gaps() -> None:
    import asyncio

    from nacl.signing import SigningKey

    from scripts.loadtest.clientv2 import LoadClientV2
    from shared.session import SequenceGap, State
    from shared.session_v2 import SessionV2

    async def run() -> None:
        key = SigningKey.generate()
        session = SessionV2(key, "ws://127.0.0.1:1/ws", state=State.OPEN)
        a = _key(1)
        session.view.apply_snapshot(Snapshot("e1", 5, Scope.WATCH, (Entry(a, Record()),)))
        ws = _Quiet()
        client = LoadClientV2(ws, key, message_queue_size=10, resync_on_error=True, session=session)
        client.sampled = False
        decode = session.decode

        def not_decoded(frame: str | bytes) -> None:
            raise AssertionError("the lean path decodes nothing")

        session.decode = not_decoded
        client.receive(encode_update(6, 5, [], [(a, Record("away"))], []))
        session.decode = decode
        assert session.view.seq == 6 and session.view.records[a].status == "away"
        assert client.updates_received == 1 and client.changes_received == 1
        assert not client.errors
        client.receive(encode_update(8, 7, [], [(a, Record("busy"))], []))  # a gap
        assert session.view.stale and session.view.records[a].status == "away"
        assert any(isinstance(e, SequenceGap) for e in client.errors), client.errors
        await asyncio.sleep(0)  # the resync written in the background
        assert ws.sent

    asyncio.run(run())
