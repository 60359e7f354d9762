"""Webhooks' decisions without processes: options, signing, the outbox's batches and
bounds, loss markers, the retry schedule, and (hypothesis) any pattern of failed
attempts leaves a receiver with every event once, in order, or an explicit loss."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.settings import CoordinatorSettings
from coordinator.webhooks import (
    OUTCOMES,
    Delivery,
    Outbox,
    Retry,
    Target,
    WebhookOptions,
    outcome_of,
    parse_url,
    signature,
)
from shared import events, metrics, options
from shared.options import SettingsError

E1, E2 = f"{10**18:020d}-00000001", f"{10**18 + 5:020d}-00000002"
URL = "http://127.0.0.1:9000/hook"
ON = {"webhook_url": URL, "webhook_secret_file": "/secret"}


def opts(**changes: Any) -> WebhookOptions:
    return WebhookOptions(**{**ON, **changes})


def event(seq: int, epoch: str = E1, pad: int = 0) -> bytes:
    """A real event's encoding (``pad`` bytes of status make it bigger)."""
    status = "s" * min(pad, 32) if pad else "online"
    joined = ((f"{seq % 256:02x}" * 32, (status, "{}")),)
    return events.encode(events.Event(epoch, seq, 1.0, joined))


def body(delivery: Delivery) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(delivery.body)
    return decoded


def seqs(delivery: Delivery) -> list[int]:
    return [events.from_json(e).seq for e in body(delivery)["events"]]


# ------------------------------------------------------------------ options


def test_webhooks_are_off_by_default_and_both_options_go_together() -> None:
    assert not CoordinatorSettings().webhooks.enabled
    assert opts().enabled
    with pytest.raises(SettingsError, match="--webhook-url needs --webhook-secret-file"):
        WebhookOptions(webhook_url=URL)
    with pytest.raises(SettingsError, match="--webhook-secret-file needs --webhook-url"):
        WebhookOptions(webhook_secret_file="/secret")


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://example.com/", "http:// or https://"),
        ("http:///path", "with a host"),
        ("https://user:pw@example.com/", "credentials"),
        ("http://example.com/a#b", "fragment"),
        ("http://example.com/a b", "spaces"),
        ("http://example.com:99999/", "http:// or https://"),
    ],
)
def test_a_bad_url_is_refused_naming_the_option(url: str, problem: str) -> None:
    with pytest.raises(SettingsError, match="--webhook-url") as error:
        opts(webhook_url=url)
    assert problem in str(error.value)


def test_urls_give_the_request_target_and_host_header() -> None:
    assert parse_url("https://hooks.example/in?k=1") == Target(
        True, "hooks.example", 443, "/in?k=1", "hooks.example"
    )
    assert parse_url("http://[::1]:8080") == Target(False, "::1", 8080, "/", "[::1]:8080")


def test_options_come_from_the_command_line_with_their_checks() -> None:
    parser = options.build_parser(CoordinatorSettings, prog="c", description="")
    args = parser.parse_args(
        ["--webhook-url", URL, "--webhook-secret-file", "/s", "--webhook-batch-events", "7"]
    )
    made = options.from_args(CoordinatorSettings, args)
    assert made.webhooks.webhook_batch_events == 7
    for bad, name in [
        (["--webhook-timeout", "0"], "--webhook-timeout"),
        (["--webhook-outbox-events", "0"], "--webhook-outbox-events"),
        (["--webhook-backoff", "2", "--webhook-max-backoff", "1"], "--webhook-max-backoff"),
    ]:
        args = parser.parse_args(["--webhook-url", URL, "--webhook-secret-file", "/s", *bad])
        with pytest.raises(SettingsError, match=name):
            options.from_args(CoordinatorSettings, args)


def test_the_outcomes_are_the_metrics_labels() -> None:
    assert metrics.WEBHOOK_OUTCOMES == OUTCOMES
    assert outcome_of(200) == outcome_of(204) == "delivered"
    assert {outcome_of(s) for s in (199, 301, 400, 500)} == {"status"}


# ------------------------------------------------------------------ signing


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body_in_hex() -> None:
    # A fixed vector, from `printf '%s' '1765130000.{"a":1}' | openssl dgst -sha256
    # -hmac whsec_0123456789abcdef`: the scheme cannot drift without this failing.
    header = signature(b"whsec_0123456789abcdef", 1765130000, b'{"a":1}')
    assert header == (
        "t=1765130000,v1=cbe4297ba41a97119cb9afb772c8053d017ec2c923cd1f8abb9fc1155fec3f9c"
    )
    assert signature(b"another secret!!", 1765130000, b'{"a":1}') != header


# ------------------------------------------------------------------ the outbox


def test_a_delivery_holds_consecutive_events_within_its_bounds_and_is_retried_unchanged() -> None:
    box = Outbox(opts(webhook_batch_events=3))
    assert box.next() is None
    assert box.add(E1, 1, event(1), now=10.0)  # idle: wake the sender
    first = box.next()
    assert first is not None
    assert not box.add(E1, 2, event(2), now=10.5)  # one in flight: no need to wake
    for seq in range(3, 6):
        box.add(E1, seq, event(seq), now=11.0)
    assert box.next() is first  # retried: the same delivery, number and body
    assert body(first) == {
        "epoch": E1,
        "first": 1,
        "last": 1,
        "previous": 0,
        "lost": None,
        "events": [json.loads(event(1))],
    }
    assert box.lag(now=12.0) == 2.0
    assert box.done() is first and box.delivered == 1
    second = box.next()
    assert second is not None and seqs(second) == [2, 3, 4]  # at most 3
    assert (second.first, second.last, second.previous, second.number) == (2, 4, 1, 2)
    assert second.id == f"{E1}/2"
    box.done()
    third = box.next()
    assert third is not None and seqs(third) == [5] and body(third)["previous"] == 4
    box.done()
    assert box.next() is None and box.lag(now=20.0) == 0.0 and box.delivered == 5


def wide(seq: int, keys: int) -> bytes:
    """An event of ``keys`` joins (about 100 bytes each)."""
    joined = tuple((f"{seq:032x}{i:032x}", ("online", "{}")) for i in range(keys))
    return events.encode(events.Event(E1, seq, 1.0, joined))


def test_a_delivery_stops_at_its_bytes_but_a_larger_event_goes_alone() -> None:
    box = Outbox(opts(webhook_batch_bytes=1024))
    assert 400 < len(wide(1, 3)) < 512 and len(wide(3, 12)) > 1024
    for seq, keys in [(1, 3), (2, 3), (3, 12), (4, 3), (5, 3), (6, 3)]:
        box.add(E1, seq, wide(seq, keys), now=0.0)
    taken = []
    while (delivery := box.next()) is not None:
        assert len(delivery.body) <= 1024 + 200 or delivery.count == 1  # + the head
        taken.append(seqs(delivery))
        box.done()
    assert taken == [[1, 2], [3], [4, 5], [6]]


def test_a_delivery_never_holds_two_epochs_and_a_new_epoch_starts_from_previous_0() -> None:
    box = Outbox(opts())
    for seq in (7, 8):
        box.add(E1, seq, event(seq), now=0.0)
    for seq in (1, 2):
        box.add(E2, seq, event(seq, E2), now=0.0)
    one = box.next()
    assert one is not None and (one.epoch, seqs(one), one.previous) == (E1, [7, 8], 0)
    box.done()
    two = box.next()
    assert two is not None and (two.epoch, seqs(two), two.previous) == (E2, [1, 2], 0)


def test_past_its_bounds_the_outbox_drops_the_oldest_and_the_next_delivery_says_so() -> None:
    box = Outbox(opts(webhook_outbox_events=3))
    box.add(E1, 1, event(1), now=0.0)
    in_flight = box.next()
    for seq in range(2, 8):  # 2..7: only 5, 6, 7 fit
        box.add(E1, seq, event(seq), now=float(seq))
    assert len(box) == 3 and box.dropped == 3
    assert box.next() is in_flight  # the delivery in flight is never dropped
    box.done()
    after = box.next()
    assert after is not None and seqs(after) == [5, 6, 7] and after.previous == 1
    assert body(after)["lost"] == {
        "count": 3,
        "from": events.event_id(E1, 2),
        "to": events.event_id(E1, 4),
    }
    box.done()
    box.add(E1, 8, event(8), now=9.0)
    later = box.next()
    assert later is not None and body(later)["lost"] is None  # said once


def test_bytes_bound_too_and_a_loss_is_delivered_even_with_no_event_left() -> None:
    box = Outbox(opts(webhook_outbox_bytes=1024, webhook_batch_bytes=1024))
    box.add(E1, 1, event(1), now=0.0)
    box.next()
    huge = b"x" * 2000  # an event larger than the whole outbox: dropped at once
    box.add(E1, 2, huge, now=1.0)
    assert len(box) == 0 and box.bytes == 0 and box.dropped == 1
    assert box.lag(now=3.0) == 3.0  # the one in flight, from 0.0
    box.done()
    assert box.lag(now=3.0) == 2.0  # the loss, noticed at 1.0, is not delivered yet
    loss = box.next()
    assert loss is not None and (loss.first, loss.last, loss.count) == (None, None, 0)
    assert body(loss)["lost"]["count"] == 1 and body(loss)["previous"] == 1
    box.done()
    box.add(E1, 3, event(3), now=4.0)
    nxt = box.next()
    assert nxt is not None and body(nxt)["previous"] == 1 and body(nxt)["lost"] is None


# ------------------------------------------------------------------ retries


def test_retries_back_off_exponentially_with_full_jitter_up_to_the_cap() -> None:
    retry = Retry(opts(webhook_backoff=0.5, webhook_max_backoff=3.0))
    assert [retry.failed(1.0) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert retry.failed(0.25) == 0.75 and retry.failed(0.0) == 0.0
    assert retry.succeeded() == 7 and retry.failed(1.0) == 0.5
    for _ in range(2000):  # no overflow, however long it fails
        assert retry.failed(0.999) < 3.0


# ------------------------------------------------------------------ any failure pattern


class ModelReceiver:
    """What a receiver can know from the deliveries it answered 2xx: the events it
    applied (each seq once, in order) and the losses it was told of."""

    def __init__(self) -> None:
        self.applied: list[int] = []
        self.told_lost: set[int] = set()
        self.last = 0
        self.numbers: list[int] = []
        self.previous: dict[str, int] = {}  # epoch -> last seq of its last delivery

    def accept(self, delivery: Delivery) -> None:
        decoded = body(delivery)
        assert {e["epoch"] for e in decoded["events"]} <= {decoded["epoch"]}  # one epoch
        if delivery.number not in self.numbers:  # its first arrival: made in this order
            assert delivery.number == len(self.numbers) + 1
            self.numbers.append(delivery.number)
            assert decoded["previous"] == self.previous.get(decoded["epoch"], 0)
            if decoded["last"] is not None:
                self.previous[decoded["epoch"]] = decoded["last"]
        lost = decoded["lost"]
        if lost is not None:
            start = events.parse_event_id(lost["from"])[1]
            end = events.parse_event_id(lost["to"])[1]
            assert end - start + 1 == lost["count"]
            self.told_lost.update(range(start, end + 1))
        for raw in decoded["events"]:
            seq = events.from_json(raw).seq
            if seq <= self.last:
                continue  # a retry of what it had: dropped by seq
            # A number skipped is one it was told was lost: never a silent gap.
            assert set(range(self.last + 1, seq)) <= self.told_lost
            self.applied.append(seq)
            self.last = seq


steps = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 6), st.integers(0, 300)),
        st.tuples(st.just("attempt"), st.sampled_from(["ok", "fail", "answer_lost"])),
        st.tuples(st.just("move")),  # the coordinator moves to a new epoch, seq goes on
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps, st.integers(1, 8), st.integers(1, 4), st.integers(1024, 4096))
def test_any_failure_pattern_leaves_every_event_once_in_order_or_an_explicit_loss(
    plan: list[tuple[Any, ...]], outbox_events: int, batch_events: int, outbox_bytes: int
) -> None:
    box = Outbox(
        opts(
            webhook_outbox_events=outbox_events,
            webhook_outbox_bytes=outbox_bytes,
            webhook_batch_events=batch_events,
            webhook_batch_bytes=1024,
        )
    )
    receiver = ModelReceiver()
    published = 0
    now = 0.0
    epoch = E1

    def attempt(result: str) -> None:
        delivery = box.next()
        if delivery is None:
            return
        if result in ("ok", "answer_lost"):
            receiver.accept(delivery)  # the receiver has it...
        if result == "ok":
            box.done()  # ...and the sender heard its 2xx

    for step in plan:
        now += 0.1
        if step[0] == "publish":
            for _ in range(step[1]):
                published += 1
                box.add(epoch, published, event(published, epoch, step[2] % 40), now)
        elif step[0] == "move":  # to a new epoch, never back (generations only grow)
            epoch = f"{int(epoch[:20]) + 1:020d}-00000000"
        else:
            attempt(step[1])
    while box.next() is not None:  # the receiver answers again: everything drains
        attempt("ok")
    assert receiver.applied == sorted(set(receiver.applied))
    assert set(receiver.applied).isdisjoint(receiver.told_lost)
    assert set(receiver.applied) | receiver.told_lost == set(range(1, published + 1))
    assert box.dropped == len(receiver.told_lost) and box.delivered == len(receiver.applied)
    assert len(box) == 0 and box.bytes == 0 and box.lag(now) == 0.0
