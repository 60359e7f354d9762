"""The example webhook receiver (scripts/webhook_receiver.py), without processes: it
verifies what the coordinator signs, refuses what it did not, applies deliveries the
coordinator's outbox makes, and repairs from the lobby when told of a loss or a gap."""

from __future__ import annotations

import json
from typing import Any

import pytest

from coordinator.webhooks import Outbox, WebhookOptions, signature
from scripts.webhook_receiver import BehindError, Follower, verify
from shared import events

SECRET = b"0123456789abcdef0123456789abcdef"
E1, E2 = f"{10**18:020d}-00000001", f"{10**18 + 5:020d}-00000002"
A, B, C = "a" * 64, "b" * 64, "c" * 64
OPTIONS = WebhookOptions(webhook_url="http://127.0.0.1:1/", webhook_secret_file="/s")


def test_it_verifies_what_the_coordinator_signs_and_nothing_else() -> None:
    body = b'{"epoch":"e","events":[]}'
    header = signature(SECRET, 1000, body)
    assert verify(SECRET, header, body, now=1000.0, tolerance=300)
    assert verify(SECRET, header, body, now=1299.0, tolerance=300)
    assert not verify(SECRET, header, body, now=1301.0, tolerance=300)  # a replay, late
    assert not verify(SECRET, header, body, now=699.0, tolerance=300)
    assert not verify(b"another secret, not ours", header, body, now=1000.0, tolerance=300)
    assert not verify(SECRET, header, body + b" ", now=1000.0, tolerance=300)
    assert not verify(SECRET, header.replace("t=1000", "t=1001"), body, 1000.0, 300)
    # A sender rotating its secret may send two signatures: one good one is enough.
    assert verify(SECRET, "t=1000,v1=00,v1=" + header.split("v1=")[1], body, 1000.0, 300)
    for bad in ("", "t=,v1=", "v1=" + header.split("v1=")[1], "t=x,v1=aa", "garbage"):
        assert not verify(SECRET, bad, body, now=1000.0, tolerance=300)


def event(
    seq: int, epoch: str = E1, joined: tuple[str, ...] = (), left: tuple[str, ...] = ()
) -> bytes:
    entries = tuple((key, ("online", "{}")) for key in joined)
    return events.encode(events.Event(epoch, seq, 1.0, entries, (), left))


def deliveries(
    *published: tuple[str, int, bytes], outbox_events: int = 100
) -> list[dict[str, Any]]:
    """The bodies the coordinator's outbox makes of ``published``, one per event."""
    box = Outbox(
        WebhookOptions(
            webhook_url="http://127.0.0.1:1/",
            webhook_secret_file="/s",
            webhook_batch_events=1,
            webhook_outbox_events=outbox_events,
        )
    )
    for epoch, seq, raw in published:
        box.add(epoch, seq, raw, now=0.0)
    out = []
    while (delivery := box.next()) is not None:
        out.append(json.loads(delivery.body))
        box.done()
    return out


def no_lobby() -> dict[str, Any]:
    raise AssertionError("no repair expected")


def lobby_at(epoch: str, seq: int, *keys: str) -> Any:
    def read() -> dict[str, Any]:
        users = [{"publicKey": k, "status": "online", "data": {}} for k in keys]
        return {"seq": 0, "lastEventId": events.event_id(epoch, seq), "users": users}

    return read


def test_a_new_epoch_from_its_start_needs_no_repair_and_a_retry_is_a_duplicate() -> None:
    one, two = deliveries((E1, 1, event(1, joined=(A,))), (E1, 2, event(2, joined=(B,))))
    follower = Follower()
    assert follower.receive(one, no_lobby) == ("reset", [1])
    assert follower.receive(one, no_lobby) == ("duplicate", [])
    assert follower.receive(two, no_lobby) == ("applied", [2])
    assert set(follower.users) == {A, B} and (follower.epoch, follower.seq) == (E1, 2)


def test_a_loss_repairs_from_the_lobby_and_goes_on_after_it() -> None:
    box = Outbox(
        WebhookOptions(
            webhook_url="http://127.0.0.1:1/",
            webhook_secret_file="/s",
            webhook_batch_events=1,
            webhook_outbox_events=2,
        )
    )
    box.add(E1, 1, event(1, joined=(A,)), now=0.0)
    box.next()  # in flight
    for seq in range(2, 6):  # meanwhile: 2 and 3 are dropped
        box.add(E1, seq, event(seq, joined=(B,) if seq == 2 else ()), now=0.0)
    made = []
    while (delivery := box.next()) is not None:
        made.append(json.loads(delivery.body))
        box.done()
    one, lossy, last = made
    assert lossy["lost"] == {"count": 2, "from": f"{E1}:2", "to": f"{E1}:3"}
    follower = Follower()
    assert follower.receive(one, no_lobby) == ("reset", [1])
    assert follower.receive(lossy, lobby_at(E1, 4, A, B)) == ("repaired", [])
    assert follower.receive(last, no_lobby) == ("applied", [5])
    assert set(follower.users) == {A, B} and follower.seq == 5


def test_a_lobby_behind_the_delivery_is_retried_later() -> None:
    (only,) = deliveries((E1, 7, event(7)))  # the first of epoch E1 it sees, at 7
    with pytest.raises(BehindError):
        Follower().receive(only, lobby_at(E1, 3, A))
    follower = Follower()
    assert follower.receive(only, lobby_at(E1, 6, A)) == ("repaired", [7])


def test_a_gap_within_an_epoch_is_repaired_and_an_epoch_change_resets() -> None:
    follower = Follower({"epoch": E1, "seq": 3, "users": {C: {"status": "online", "data": {}}}})
    (gap,) = deliveries((E1, 5, event(5, left=(C,))))
    assert gap["previous"] == 0  # this outbox sent nothing of E1 before
    assert follower.receive(gap, lobby_at(E1, 4, A, C)) == ("repaired", [5])
    assert set(follower.users) == {A}
    (restart,) = deliveries((E2, 1, event(1, epoch=E2, joined=(B,))))
    assert follower.receive(restart, no_lobby) == ("reset", [1])
    assert set(follower.users) == {B} and follower.epoch == E2
