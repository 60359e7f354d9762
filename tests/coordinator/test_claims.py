"""Which process speaks for a worker id (:mod:`coordinator.claims`)."""

from __future__ import annotations

from coordinator.claims import Claims, Peer, Verdict
from shared import backbone as bb

WEB1 = Peer(b"web1-w1-1\x00aaaa", "10.0.0.2", "web1")
WEB2 = Peer(b"web1-w1-1\x00bbbb", "10.0.0.3", "web2")


def test_the_first_process_holds_an_id_and_a_second_is_refused_while_it_is_live() -> None:
    claims = Claims()
    assert claims.claim("web1-w1-1", WEB1, live=False) == Verdict(True)
    assert claims.claim("web1-w1-1", WEB2, live=True) == Verdict(False, WEB1)
    assert claims.routing("web1-w1-1") == WEB1.routing  # replies still go to the holder
    assert str(WEB1) == "10.0.0.2 with key web1" and str(Peer(b"x")) == "a local socket"


def test_the_holder_reconnecting_keeps_its_id_whatever_its_address() -> None:
    claims = Claims()
    claims.claim("web1-w1-1", WEB1, live=False)
    moved = Peer(WEB1.routing, "10.0.0.9", "web1")  # same process, after a blip
    assert claims.claim("web1-w1-1", moved, live=True) == Verdict(True)


def test_an_id_whose_holder_is_gone_is_taken_over_and_the_old_one_is_then_refused() -> None:
    claims = Claims()
    claims.claim("web1-w1-1", WEB1, live=False)
    assert claims.claim("web1-w1-1", WEB2, live=False) == Verdict(True, WEB1)
    assert claims.routing("web1-w1-1") == WEB2.routing
    assert claims.claim("web1-w1-1", WEB1, live=True) == Verdict(False, WEB2)


def test_ids_no_longer_live_are_released() -> None:
    claims = Claims()
    claims.claim("a", WEB1, live=False)
    claims.claim("b", WEB2, live=False)
    assert claims.release(lambda worker: worker == "b") == [WEB1.routing]
    assert len(claims) == 1 and claims.routing("a") is None


def test_a_routing_id_names_the_worker_and_a_token_fresh_per_process() -> None:
    first, second = bb.routing_id("web1-w1-1"), bb.routing_id("web1-w1-1")
    assert first != second
    assert bb.split_routing_id(first)[0] == "web1-w1-1" and bb.split_routing_id(first)[1]
    assert bb.split_routing_id(b"w1") == ("w1", "")  # a stand-in's plain id
