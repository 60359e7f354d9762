"""Token buckets, the per-connection flood guard and the per-worker door, on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from workers.admission import (
    Admission,
    AdmissionLimits,
    Admit,
    Decision,
    FloodGuard,
    RateLimits,
    TokenBucket,
    Verdict,
)

rates = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)
bursts = st.floats(min_value=1.0, max_value=500.0, allow_nan=False)
steps = st.lists(st.floats(min_value=-1.0, max_value=2.0, allow_nan=False), max_size=300)


# --------------------------------------------------------------------------- TokenBucket


def test_bucket_starts_full_spends_its_burst_then_refills_at_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3.0)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(10.4)  # 0.8 tokens
    assert bucket.take(10.5)  # 1.0
    assert bucket.level(1000.0) == 3.0  # never more than the burst


def test_a_clock_going_backwards_refills_nothing() -> None:
    bucket = TokenBucket(rate=100.0, burst=1.0)
    assert bucket.take(50.0)
    assert not bucket.take(40.0)
    assert not bucket.take(50.0)
    assert bucket.take(50.01)


@pytest.mark.parametrize(("rate", "burst"), [(-1.0, 1.0), (1.0, 0.5), (float("nan"), 1.0)])
def test_bucket_rejects_nonsense_parameters(rate: float, burst: float) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@settings(max_examples=300, deadline=None)
@given(rate=rates, burst=bursts, deltas=steps)
def test_bucket_never_grants_more_than_burst_plus_rate_times_time(
    rate: float, burst: float, deltas: list[float]
) -> None:
    """The one guarantee a rate limit gives: over any stretch of time that starts at the
    first call, at most ``burst + rate * elapsed`` tokens are granted, and a refusal
    means fewer than one token was there."""
    bucket = TokenBucket(rate, burst)
    now = 1000.0
    start = latest = 1000.0 + (deltas[0] if deltas else 0.0)  # the first call
    granted = 0
    for delta in deltas:
        now += delta
        latest = max(latest, now)
        before = bucket.level(now)
        if bucket.take(now):
            granted += 1
        else:
            assert before < 1.0
        assert 0.0 <= bucket.tokens <= burst
        assert granted <= burst + rate * (latest - start) + 1e-6


@settings(max_examples=200, deadline=None)
@given(rate=st.floats(min_value=0.1, max_value=1000.0), burst=bursts, n=st.integers(0, 200))
def test_requests_spaced_at_the_rate_are_always_granted(rate: float, burst: float, n: int) -> None:
    bucket = TokenBucket(rate, burst)
    now = 0.0
    for _ in range(n):
        assert bucket.take(now)
        now += 1.0 / rate * (1 + 1e-9)


# --------------------------------------------------------------------------- FloodGuard


def test_flood_guard_passes_a_burst_throttles_then_calls_a_flood() -> None:
    guard = FloodGuard.of(
        RateLimits(msg_rate=1.0, msg_burst=3.0, flood_rejects=4.0, flood_window=8.0)
    )
    verdicts = [guard.check(5.0) for _ in range(8)]
    assert verdicts == [Verdict.PASS] * 3 + [Verdict.THROTTLE] * 4 + [Verdict.FLOOD]
    assert guard.rejected == 5


def test_strikes_recover_at_flood_rejects_per_window() -> None:
    guard = FloodGuard.of(
        RateLimits(msg_rate=0.0, msg_burst=1.0, flood_rejects=2.0, flood_window=4.0)
    )
    assert guard.check(0.0) is Verdict.PASS
    assert [guard.check(0.0) for _ in range(2)] == [Verdict.THROTTLE] * 2
    assert guard.check(1.0) is Verdict.FLOOD  # 0.5 strikes back
    assert guard.check(3.0) is Verdict.THROTTLE  # 1.0 back


def test_default_limits_suit_humans_and_bots() -> None:
    limits = RateLimits()
    assert (limits.msg_rate, limits.msg_burst, limits.flood_rejects, limits.flood_window) == (
        50.0,
        100.0,
        100.0,
        10.0,
    )
    guard = FloodGuard.of(limits)
    # A bot answering 40 lobby updates a second for a minute is never limited.
    assert all(guard.check(t / 40) is Verdict.PASS for t in range(40 * 60))


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.0, max_value=100.0),
    burst=st.floats(min_value=1.0, max_value=50.0),
    rejects=st.floats(min_value=1.0, max_value=50.0),
    window=st.floats(min_value=0.1, max_value=30.0),
    deltas=st.lists(st.floats(min_value=0.0, max_value=0.5), max_size=400),
)
def test_flood_only_after_more_rejections_than_the_window_allows(
    rate: float, burst: float, rejects: float, window: float, deltas: list[float]
) -> None:
    guard = FloodGuard.of(
        RateLimits(msg_rate=rate, msg_burst=burst, flood_rejects=rejects, flood_window=window)
    )
    now = start = 0.0
    passed = 0
    throttles: list[float] = []  # times of THROTTLE verdicts
    for delta in deltas:
        now += delta
        verdict = guard.check(now)
        if verdict is Verdict.FLOOD:
            # Some stretch since a rejection held more rejections than its allowance.
            refill = rejects / window
            assert any(
                len(throttles) - i + 1 > rejects + refill * (now - t) - 1e-6
                for i, t in enumerate(throttles)
            )
            return
        passed += verdict is Verdict.PASS
        if verdict is Verdict.THROTTLE:
            throttles.append(now)
        assert passed <= burst + rate * (now - start) + 1e-6


# --------------------------------------------------------------------------- Admission

OK, FULL, BUSY, THROTTLED = Admit.OK, Admit.FULL, Admit.BUSY, Admit.THROTTLED
PLENTY = 1e6  # a rate or burst that never binds


def door_of(**limits: float) -> Admission:
    values = {"auth_rate": PLENTY, "auth_burst": PLENTY, **limits}
    return Admission(AdmissionLimits(**values))  # type: ignore[arg-type]


def verdicts(door: Admission, ids: range, source: str, now: float = 0.0) -> list[Admit]:
    return [door.admit(conn, source, now).verdict for conn in ids]


def test_default_limits() -> None:
    limits = AdmissionLimits()
    assert (limits.max_connections, limits.max_pending_auth) == (50_000, 1000)
    assert (limits.auth_rate, limits.auth_burst, limits.auth_reserve) == (200.0, 200.0, 0.5)
    assert (limits.source_share, limits.max_sources) == (0.25, 10_000)
    assert (limits.reserve_tokens, limits.source_burst, limits.source_rate) == (100, 50, 50)
    assert AdmissionLimits(auth_burst=2.0).source_burst == 1.0  # a budget holds one at least


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_connections", 0, "--max-connections must be at least 1"),
        ("max_pending_auth", 0, "--max-pending-auth must be at least 1"),
        ("max_sources", -1, "--max-sources must be at least 1"),
        ("auth_rate", -1.0, "--auth-rate must not be negative"),
        ("auth_rate", float("inf"), "--auth-rate must not be negative"),
        ("auth_burst", 0.5, "--auth-burst must be at least 1"),
        ("auth_burst", float("nan"), "--auth-burst must be at least 1"),
        ("auth_reserve", -0.1, "--auth-reserve must not be negative"),
        ("source_share", 0.0, "--source-share must be in"),
        ("source_share", 1.5, "--source-share must be in"),
        ("source_share", float("nan"), "--source-share must be in"),
    ],
)
def test_nonsense_limits_are_refused_by_name(field: str, value: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdmissionLimits(**{field: value})  # type: ignore[arg-type]


def test_decision_says_whether_admitted() -> None:
    assert Decision(OK).admitted and Decision(OK, (3,)).admitted
    assert not Decision(BUSY).admitted


# ---------------------------------------------------------------- counting and releases


def test_each_connection_is_counted_once_and_releases_are_idempotent() -> None:
    door = door_of(max_pending_auth=2, auth_rate=0.0, auth_burst=3.0, auth_reserve=0.0)
    assert verdicts(door, range(1, 4), "a") == [OK, OK, BUSY]
    assert door.admit(1, "a", 0.0) == Decision(OK)  # already in: no second slot, no token
    assert door.tokens(0.0) == 1.0
    door.authenticated(1)
    door.authenticated(1)
    door.authenticated(99)  # never admitted: nothing happens
    door.closed(99)
    assert (door.pending, door.connections) == (1, 2)
    assert door.admit(1, "a", 0.0) == Decision(OK)  # still open: counted once
    assert door.admit(3, "a", 0.0).verdict is OK  # the slot 1 left, and the last token
    door.closed(1)
    door.closed(1)
    door.closed(2)  # ended in the challenge phase: releases its slot too
    door.authenticated(2)  # too late: changes nothing
    assert (door.pending, door.connections) == (1, 1)
    assert door.refused == {BUSY: 1}


def test_full_counts_connections_in_every_state_and_comes_first() -> None:
    door = door_of(max_connections=3, max_pending_auth=2)
    assert verdicts(door, range(1, 3), "a") == [OK, OK]
    door.authenticated(1)
    assert door.admit(3, "a", 0.0).verdict is OK
    # Room full and "a" holds both pending: "b" could evict, but FULL is checked first.
    before = door.tokens(0.0)
    assert door.admit(4, "b", 0.0) == Decision(FULL)
    assert (door.tokens(0.0), door.evicted, door.connections) == (before, 0, 3)
    door.closed(1)  # an authenticated connection ending frees a place
    assert door.admit(4, "b", 0.0) == Decision(OK, (2,))
    assert door.refused == {FULL: 1}


# ---------------------------------------------------------------- fair challenge phase


def test_one_source_fills_the_room_while_nobody_else_wants_it() -> None:
    door = door_of(max_pending_auth=4)
    assert verdicts(door, range(1, 6), "a") == [OK] * 4 + [BUSY]  # never evicts its own
    assert door.pending == 4


def test_a_newcomer_evicts_the_oldest_of_the_heaviest_source_until_shares_are_level() -> None:
    door = door_of(max_pending_auth=4)
    verdicts(door, range(1, 5), "a")  # a: 1 2 3 4
    assert door.admit(5, "b", 0.0) == Decision(OK, (1,))  # a 3, b 1
    assert door.admit(6, "b", 0.0) == Decision(OK, (2,))  # a 2, b 2
    assert door.admit(7, "b", 0.0) == Decision(BUSY)  # 2 vs 3 would only swap
    assert door.admit(8, "a", 0.0) == Decision(BUSY)
    # Ties: the source that reached the count first loses first (a reached 2 at conn 6).
    assert door.admit(9, "c", 0.0) == Decision(OK, (3,))  # a 1, b 2, c 1
    assert door.admit(10, "d", 0.0) == Decision(OK, (5,))  # a 1, b 1, c 1, d 1
    assert door.admit(11, "e", 0.0) == Decision(BUSY)  # everyone holds one: fair
    assert (door.pending, door.connections, door.evicted) == (4, 4, 4)
    assert door.refused == {BUSY: 3}
    # The shell's later reports about evicted connections change nothing.
    for conn in (1, 2, 3, 5):
        door.authenticated(conn)
        door.closed(conn)
    assert (door.pending, door.connections) == (4, 4)
    # A slot freed by an answer goes to anyone, the evicting rule aside.
    door.authenticated(4)
    assert door.admit(12, "e", 0.0) == Decision(OK)
    assert (door.pending, door.connections) == (4, 5)


def test_a_room_of_two_is_shared_too() -> None:
    door = door_of(max_pending_auth=2)
    verdicts(door, range(1, 3), "a")
    assert door.admit(3, "b", 0.0) == Decision(OK, (1,))


def test_busy_and_throttled_refusals_evict_nothing_and_take_nothing() -> None:
    door = door_of(max_pending_auth=2, auth_rate=0.0, auth_burst=2.0, auth_reserve=0.0)
    verdicts(door, range(1, 3), "a")  # both tokens gone
    assert door.admit(3, "b", 0.0) == Decision(THROTTLED)  # would evict 1, but no token
    assert (door.pending, door.evicted, door.sources) == (2, 0, 1)
    assert door.admit(4, "a", 0.0) == Decision(BUSY)
    assert door.refused == {THROTTLED: 1, BUSY: 1}


def test_finding_the_heaviest_source_does_not_scan_sources() -> None:
    """10 000 sources with one pending each and one heavy source: admitting evicts from
    the heavy one in O(1). (A scan per call would take seconds here, not milliseconds.)"""
    door = door_of(max_pending_auth=20_000, max_sources=20_000)
    for conn in range(10_000):
        door.admit(conn, f"s{conn}", 0.0)
    verdicts(door, range(10_000, 20_000), "heavy")
    for conn in range(20_000, 29_999):  # each newcomer evicts the heavy source's oldest
        assert door.admit(conn, f"n{conn}", 0.0).evict == (conn - 10_000,)
    assert door.pending == 20_000  # everyone holds one now
    assert door.admit(30_000, "late", 0.0) == Decision(BUSY)


# ---------------------------------------------------------------- fair auth rate


def test_a_lone_source_sees_the_old_door() -> None:
    """Burst then rate, exactly as without fairness: the reserve is not for it."""
    door = door_of(auth_rate=2.0, auth_burst=3.0)  # reserve 1.5, budget 1/0.5 s
    ids = itertools.count()
    got = [door.admit(next(ids), "a", 0.0).verdict for _ in range(5)]
    assert got == [OK] * 3 + [THROTTLED] * 2
    assert door.admit(next(ids), "a", 0.25).verdict is THROTTLED
    assert door.admit(next(ids), "a", 0.5).verdict is OK
    assert door.refused == {THROTTLED: 3}


def test_the_reserve_admits_other_sources_up_to_their_budget() -> None:
    door = door_of(auth_rate=0.0, auth_burst=8.0, auth_reserve=1.0)  # reserve 8, budget 2
    assert verdicts(door, range(0, 10), "a") == [OK] * 8 + [THROTTLED] * 2
    for n, source in enumerate("bcde"):
        first = 10 + 3 * n
        assert verdicts(door, range(first, first + 3), source) == [OK, OK, THROTTLED]
    assert door.tokens(0.0) == 0.0
    assert door.admit(100, "f", 0.0) == Decision(THROTTLED)  # reserve used up: four budgets


def test_a_budget_refills_at_its_share_of_the_rate() -> None:
    door = door_of(auth_rate=4.0, auth_burst=4.0, auth_reserve=1.0, source_share=0.5)
    # x floods, so the bucket stays in its reserve; a budget is 2, refilled at 2/s.
    assert verdicts(door, range(0, 5), "x") == [OK] * 4 + [THROTTLED]
    assert verdicts(door, range(10, 13), "a") == [OK, OK, THROTTLED]
    assert [door.admit(20, s, 0.25).verdict for s in "ax"] == [THROTTLED, THROTTLED]
    assert [door.admit(21 + n, s, 0.5).verdict for n, s in enumerate("axa")] == [
        OK,
        OK,
        THROTTLED,
    ]
    assert door.tokens(0.5) == 2.0


def test_refusals_charge_no_budget() -> None:
    door = door_of(max_pending_auth=1, auth_rate=0.0, auth_burst=4.0, auth_reserve=0.5)

    def answering(conn: int, source: str) -> Admit:
        verdict = door.admit(conn, source, 0.0).verdict
        door.authenticated(conn)
        return verdict

    assert door.admit(1, "a", 0.0).verdict is OK
    for conn in range(2, 50):  # "a" holds the only slot
        assert door.admit(conn, "a", 0.0).verdict is BUSY
    door.closed(1)
    assert [answering(conn, "a") for conn in range(50, 54)] == [OK, OK, OK, THROTTLED]
    assert answering(60, "b") is OK  # a fresh budget (of one): a token from the reserve
    assert answering(61, "b") is THROTTLED  # budget spent
    assert answering(62, "c") is OK
    assert door.tokens(0.0) == 0.0
    assert door.refused == {BUSY: 48, THROTTLED: 2}


# ---------------------------------------------------------------- bounded state


def test_sources_are_forgotten_once_idle_and_refilled() -> None:
    door = door_of(auth_rate=10.0, auth_burst=10.0)  # budget 2.5 refills at 2.5/s
    door.admit(1, "a", 0.0)
    door.admit(2, "b", 0.0)
    assert door.sources == 2
    door.authenticated(1)
    door.closed(2)
    door.admit(3, "c", 0.1)
    assert door.sources == 3  # a and b idle, budgets not full yet
    door.admit(4, "c", 0.4)  # 0.4 s: 1.0 back, full
    assert door.sources == 1
    door.closed(3)
    door.closed(4)
    door.admit(5, "d", 1.0)
    assert door.sources == 1  # c forgotten too


def test_past_max_sources_the_longest_idle_source_is_forgotten() -> None:
    door = door_of(max_sources=2, auth_rate=0.0, auth_burst=8.0, auth_reserve=1.0)
    verdicts(door, range(0, 8), "x")  # the shared part is gone: budgets matter
    for conn, source in enumerate("abc", start=10):
        assert door.admit(conn, source, 0.0).verdict is OK
        door.closed(conn)
        assert door.sources <= 1 + 2  # x holds pending connections, so it stays
    assert door.sources == 3
    # "a" was forgotten, so its budget (2) starts full again; "b" and "c" still have 1.
    assert verdicts(door, range(20, 23), "a") == [OK, OK, THROTTLED]
    assert verdicts(door, range(30, 32), "c") == [OK, THROTTLED]


# ---------------------------------------------------------------- properties

SOURCES = "abcd"
admits = st.tuples(
    # a source (one of them heavy, so evictions happen), an index (a fresh id, or one
    # used before when it names one and is a multiple of 4), a time step
    st.just("admit"),
    st.sampled_from("aaaaabcd"),
    st.integers(0, 60),
    st.floats(min_value=0.0, max_value=0.3),
)
releases = st.tuples(st.sampled_from(["authenticated", "closed"]), st.integers(0, 60))
ops = st.lists(st.one_of(admits, admits, releases), min_size=10, max_size=250)


@settings(max_examples=400, deadline=None)
@given(
    max_connections=st.integers(1, 30),
    max_pending=st.integers(1, 8),
    max_sources=st.integers(1, 3),
    rate=st.floats(min_value=0.0, max_value=40.0),
    burst=st.floats(min_value=1.0, max_value=12.0),
    reserve=st.floats(min_value=0.0, max_value=1.5),
    share=st.floats(min_value=0.05, max_value=1.0),
    steps=ops,
)
def test_admission_against_a_model(
    max_connections: int,
    max_pending: int,
    max_sources: int,
    rate: float,
    burst: float,
    reserve: float,
    share: float,
    steps: list[tuple[str, str, int, float] | tuple[str, int]],
) -> None:
    """Random admits, answers and closes from several sources, checked against a model:
    the counts are the model's and never pass the caps; an evicted connection is never
    counted again; BUSY only when the newcomer's source already has its share, and a
    newcomer that a heavier source owes a slot gets it (unless the rate refuses); a
    refusal takes no token and remembers no source; a newcomer is refused by the rate
    only with the bucket below one token; the total never passes the bucket's bound;
    per-source state stays bounded."""
    limits = AdmissionLimits(
        max_connections=max_connections,
        max_pending_auth=max_pending,
        max_sources=max_sources,
        auth_rate=rate,
        auth_burst=burst,
        auth_reserve=reserve,
        source_share=share,
    )
    door = Admission(limits)
    pending: dict[int, str] = {}  # in admission order
    opened: set[int] = set()
    ever_admitted: set[str] = set()
    used: list[int] = []  # ids handed out, for steps that name one
    next_id = itertools.count(1000)
    now = 0.0
    admitted = refusals = evictions = 0
    for step in steps:
        if step[0] != "admit":
            _, index = step
            conn = used[index % len(used)] if used else index
            if step[0] == "authenticated":
                door.authenticated(conn)
                if pending.pop(conn, None) is not None:
                    opened.add(conn)
            else:
                door.closed(conn)
                pending.pop(conn, None)
                opened.discard(conn)
        else:
            _, source, index, delta = step  # type: ignore[misc]
            now += delta
            conn = used[index] if index < len(used) and index % 4 == 0 else next(next_id)
            used.append(conn)
            held = {s: 0 for s in SOURCES}
            for s in pending.values():
                held[s] += 1
            heaviest = max(held.values())
            counted = conn in pending or conn in opened
            full = len(pending) + len(opened) >= max_connections
            room = len(pending) < max_pending
            owed = not room and heaviest >= held[source] + 2
            tokens, sources = door.tokens(now), door.sources

            decision = door.admit(conn, source, now)
            event(f"{decision.verdict.value}{' evicting' if decision.evict else ''}")

            if counted:
                assert decision == Decision(OK)
                assert door.tokens(now) == tokens
            elif decision.verdict is not OK:
                refusals += 1
                assert decision.evict == ()
                assert door.tokens(now) == tokens  # no refusal takes a token
                assert door.sources <= sources
                if full:
                    assert decision.verdict is FULL
                elif not room and not owed:
                    assert decision.verdict is BUSY
                else:
                    assert decision.verdict is THROTTLED
                if decision.verdict is THROTTLED and source not in ever_admitted:
                    assert tokens < 1.0  # a fresh budget always has a token
            else:
                assert not full and (room or owed)
                admitted += 1
                ever_admitted.add(source)
                assert door.tokens(now) == pytest.approx(tokens - 1.0, abs=1e-6)
                if room:
                    assert decision.evict == ()
                else:
                    (victim,) = decision.evict
                    victim_source = pending[victim]
                    assert held[victim_source] == heaviest  # of a heaviest source,
                    assert victim == next(c for c, s in pending.items() if s == victim_source)
                    del pending[victim]  # its oldest, gone from every count
                    evictions += 1
                pending[conn] = source
        assert door.pending == len(pending) <= max_pending
        assert door.connections == len(pending) + len(opened) <= max_connections
        assert door.sources <= len(set(pending.values())) + max_sources
        assert admitted <= burst * (1 + reserve) + rate * now + 1e-6
    assert sum(door.refused.values()) == refusals
    assert door.evicted == evictions


@settings(max_examples=300, deadline=None)
@given(
    rate=st.floats(min_value=0.0, max_value=50.0),
    burst=st.floats(min_value=1.0, max_value=30.0),
    reserve=st.floats(min_value=0.0, max_value=2.0),
    share=st.floats(min_value=0.01, max_value=1.0),
    steps=st.lists(st.tuples(st.floats(min_value=0.0, max_value=0.3), st.booleans()), max_size=300),
)
def test_one_source_alone_gets_the_old_door_and_leaves_the_reserve(
    rate: float, burst: float, reserve: float, share: float, steps: list[tuple[float, bool]]
) -> None:
    """However one source floods (answering or not), it is admitted at most ``burst +
    rate * t``, exactly the door without fairness, and it never takes the bucket below
    ``auth_burst * auth_reserve - source_burst``: enough for anyone else whenever that is
    at least one."""
    limits = AdmissionLimits(
        max_pending_auth=10**6,
        auth_rate=rate,
        auth_burst=burst,
        auth_reserve=reserve,
        source_share=share,
    )
    door = Admission(limits)
    floor = min(limits.reserve_tokens, limits.reserve_tokens - limits.source_burst)
    now, admitted = 0.0, 0
    for conn, (delta, answers) in enumerate(steps):
        now += delta
        admitted += door.admit(conn, "a", now).admitted
        if answers:
            door.authenticated(conn)
        assert admitted <= burst + rate * now + 1e-6
        assert door.tokens(now) >= floor - 1e-6


# ---------------------------------------------------------------- the reported attack


def _flood(door: Admission, attempts: int, spread: float, start: float = 0.0) -> list[Admit]:
    """Source A (127.0.0.2) opens ``attempts`` connections evenly over ``spread``
    seconds; none of them ever answers its challenge."""
    step = spread / attempts
    return [door.admit(conn, "127.0.0.2", start + conn * step).verdict for conn in range(attempts)]


def test_one_address_flooding_at_once_cannot_keep_another_out() -> None:
    """2 400 connections from A at the same instant with the default limits: A gets the
    shared 200 tokens (its budget of 50 spent on the way), then is throttled; B's first
    attempt finds the reserve (100) and B's own budget (50) untouched.

    B is admitted at its first attempt whenever (1) the worker holds fewer than
    ``max_connections`` connections, (2) B's source holds at most two fewer pending
    connections than the heaviest source, should the challenge phase be full (a new
    source: whenever ``max_pending_auth >= 2``), and (3) B's own budget has a token (B
    had fewer than ``source_burst`` admissions lately): then A alone cannot have taken
    the bucket below ``auth_burst * auth_reserve - source_burst`` = 50 tokens."""
    door = Admission()
    got = _flood(door, 2400, spread=0.0)
    assert got == [OK] * 200 + [THROTTLED] * 2200
    assert door.tokens(0.0) == 100.0
    assert door.admit(10_000, "127.0.0.3", 0.0) == Decision(OK)


def test_one_address_flooding_for_two_seconds_cannot_keep_another_out() -> None:
    door = Admission()
    got = _flood(door, 2400, spread=2.0)
    # 200 at once, then the rate: one token every 5 ms, 1200 attempts a second.
    assert got.count(OK) == pytest.approx(200 + 200 * 2.0, abs=1)
    assert door.pending == got.count(OK) < door.limits.max_pending_auth
    for n, t in enumerate((0.5, 1.0, 1.999)):  # B arrives mid-flood
        door = Admission()
        got = _flood(door, int(1200 * t), spread=t)
        assert door.admit(10_000 + n, "127.0.0.3", t) == Decision(OK), t


def test_an_address_holding_the_whole_challenge_phase_makes_room_for_another() -> None:
    """Longer than 2 s the flood fills the challenge phase (1 000 after 4 s) and then
    is BUSY, which takes no tokens: B's attempt evicts A's oldest connection."""
    door = Admission()
    got = _flood(door, 12_000, spread=10.0)
    assert door.pending == 1000 and got.count(OK) == 1000
    assert got[-1] is BUSY
    assert door.admit(10_000_000, "127.0.0.3", 10.0) == Decision(OK, (0,))
    assert door.admit(10_000_001, "127.0.0.2", 10.0) == Decision(BUSY)
    assert (door.pending, door.evicted) == (1000, 1)
