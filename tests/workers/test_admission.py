"""Token buckets, the per-connection flood guard and the per-worker door, on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from workers.admission import (
    CHALLENGE_RESERVE,
    DECREASE,
    INCREASE,
    MIN_WINDOW,
    SUSPECT_FOR,
    SUSPECTS_PER_SLOT,
    Admission,
    AdmissionLimits,
    Admit,
    Decision,
)
from workers.ratelimit import FloodGuard, RateLimits, TokenBucket, Verdict

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
PLENTY = 10**6  # a window that never binds (it is capped at max_pending_auth)


def door_of(**limits: float) -> Admission:
    """A door whose window is the whole challenge phase and has no reserve, unless told."""
    values = {"auth_window": PLENTY, "auth_reserve": 0.0, **limits}
    return Admission(AdmissionLimits(**values))  # type: ignore[arg-type]


def verdicts(door: Admission, ids: range, source: str) -> list[Admit]:
    return [door.admit(conn, source).verdict for conn in ids]


def test_default_limits() -> None:
    limits = AdmissionLimits()
    assert (limits.max_connections, limits.max_pending_auth) == (50_000, 1000)
    assert (limits.lag_target, limits.auth_window) == (0.25, 64)
    assert (limits.auth_reserve, limits.source_share) == (0.25, 0.1)
    assert limits.challenge_grace == 0.5
    door = Admission()
    assert (door.window, door.reserve, door.share) == (64.0, 16, 6)
    assert door.share < door.reserve  # one flooding source leaves others room


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_connections", 0, "--max-connections must be at least 1"),
        ("max_pending_auth", 0, "--max-pending-auth must be at least 1"),
        ("lag_target", 0.0, "--lag-target must be positive"),
        ("challenge_grace", 0.0, "--challenge-grace must be positive"),
        ("challenge_grace", float("nan"), "--challenge-grace must be positive"),
        ("lag_target", float("nan"), "--lag-target must be positive"),
        ("auth_window", 0, "--auth-window must be at least 1"),
        ("auth_reserve", -0.1, "--auth-reserve must be in"),
        ("auth_reserve", 1.0, "--auth-reserve must be in"),
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
    door = door_of(max_pending_auth=2)
    assert verdicts(door, range(1, 4), "a") == [OK, OK, BUSY]
    assert door.admit(1, "a") == Decision(OK)  # already in: no second slot
    door.authenticated(1)
    door.authenticated(1)
    door.authenticated(99)  # never admitted: nothing happens
    door.settled(99)
    door.closed(99)
    assert (door.pending, door.in_flight, door.connections) == (1, 2, 2)
    assert door.admit(1, "a") == Decision(OK)  # still open: counted once
    door.settled(1)
    door.settled(1)
    assert door.admit(3, "a").verdict is OK  # the slot 1 left
    door.closed(1)
    door.closed(1)
    door.closed(2)  # ended in the challenge phase: releases its slot too
    door.authenticated(2)  # too late: changes nothing
    door.settled(2)
    assert (door.pending, door.in_flight, door.connections) == (1, 1, 1)
    assert door.refused == {BUSY: 1}


def test_full_counts_connections_in_every_state_and_comes_first() -> None:
    door = door_of(max_connections=3, max_pending_auth=2)
    assert verdicts(door, range(1, 3), "a") == [OK, OK]
    door.settled(1)
    assert door.admit(3, "a").verdict is OK
    # Room full and "a" holds both pending: "b" could evict, but FULL is checked first.
    assert door.check("b") is FULL
    assert door.admit(4, "b") == Decision(FULL)
    assert (door.evicted, door.connections) == (0, 3)
    door.closed(1)  # an authenticated connection ending frees a place
    assert door.check("b") is OK
    assert door.admit(4, "b") == Decision(OK, (2,))
    assert door.refused == {FULL: 2}


def test_check_answers_what_admit_would_and_commits_nothing_when_ok() -> None:
    door = door_of(max_pending_auth=2)
    assert door.check("a") is OK
    assert (door.pending, door.sources, door.refused) == (0, 0, {})
    verdicts(door, range(1, 3), "a")
    assert door.check("a") is BUSY  # counted: the shell refuses it
    assert door.check("b") is OK  # would evict, but evicts nothing yet
    assert (door.pending, door.evicted) == (2, 0)
    assert door.refused == {BUSY: 1}


# ---------------------------------------------------------------- fair challenge phase


def test_one_source_fills_the_room_while_nobody_else_wants_it() -> None:
    door = door_of(max_pending_auth=4)
    assert verdicts(door, range(1, 6), "a") == [OK] * 4 + [BUSY]  # never evicts its own
    assert door.pending == 4


def test_a_newcomer_evicts_the_oldest_of_the_heaviest_source_until_shares_are_level() -> None:
    door = door_of(max_pending_auth=4)
    verdicts(door, range(1, 5), "a")  # a: 1 2 3 4
    assert door.admit(5, "b") == Decision(OK, (1,))  # a 3, b 1
    assert door.admit(6, "b") == Decision(OK, (2,))  # a 2, b 2
    assert door.admit(7, "b") == Decision(BUSY)  # 2 vs 3 would only swap
    assert door.admit(8, "a") == Decision(BUSY)
    # Ties: the source that reached the count first loses first (a reached 2 at conn 6).
    assert door.admit(9, "c") == Decision(OK, (3,))  # a 1, b 2, c 1
    assert door.admit(10, "d") == Decision(OK, (5,))  # a 1, b 1, c 1, d 1
    assert door.admit(11, "e") == Decision(BUSY)  # everyone holds one: fair
    assert (door.pending, door.in_flight, door.connections, door.evicted) == (4, 4, 4, 4)
    assert door.refused == {BUSY: 3}
    # The shell's later reports about evicted connections change nothing.
    for conn in (1, 2, 3, 5):
        door.settled(conn)
        door.closed(conn)
    assert (door.pending, door.connections) == (4, 4)
    # A slot freed by an answer goes to anyone, the evicting rule aside.
    door.settled(4)
    assert door.admit(12, "e") == Decision(OK)
    assert (door.pending, door.connections) == (4, 5)


def test_a_room_of_two_is_shared_too() -> None:
    door = door_of(max_pending_auth=2)
    verdicts(door, range(1, 3), "a")
    assert door.admit(3, "b") == Decision(OK, (1,))


def test_finding_the_heaviest_source_does_not_scan_sources() -> None:
    """10 000 sources with one pending each and one heavy source: admitting evicts from
    the heavy one in O(1). (A scan per call would take seconds here, not milliseconds.)"""
    door = door_of(max_pending_auth=20_000)
    for conn in range(10_000):
        door.admit(conn, f"s{conn}")
    verdicts(door, range(10_000, 20_000), "heavy")
    for conn in range(20_000, 29_999):  # each newcomer evicts the heavy source's oldest
        assert door.admit(conn, f"n{conn}").evict == (conn - 10_000,)
    assert door.pending == 20_000  # everyone holds one now
    assert door.admit(30_000, "late") == Decision(BUSY)


# ---------------------------------------------------------------- the auth window


def test_the_window_counts_auths_until_they_settle_not_until_they_answer() -> None:
    door = door_of(auth_window=16)
    assert verdicts(door, range(1, 18), "a") == [OK] * 16 + [THROTTLED]
    door.authenticated(1)  # answered: out of the challenge phase, still in flight
    assert (door.pending, door.in_flight) == (15, 16)
    assert door.admit(100, "a") == Decision(THROTTLED)
    door.settled(1)  # acknowledged: out of the window
    assert door.admit(101, "a") == Decision(OK)
    door.closed(2)  # a connection that ends in flight frees its slot too
    assert door.admit(102, "a") == Decision(OK)
    assert (door.in_flight, door.sources, door.refused) == (16, 1, {THROTTLED: 2})


def test_a_lone_source_gets_the_window_less_the_reserve() -> None:
    door = door_of(auth_window=16, auth_reserve=0.25, source_share=0.25)  # reserve 4, share 4
    assert verdicts(door, range(0, 14), "a") == [OK] * 12 + [THROTTLED] * 2
    assert door.flying("a") == 12


def test_the_reserve_admits_other_sources_up_to_their_share() -> None:
    door = door_of(auth_window=20, auth_reserve=0.5, source_share=0.1)  # reserve 10, share 2
    assert verdicts(door, range(0, 12), "a") == [OK] * 10 + [THROTTLED] * 2
    for n, source in enumerate("bcde"):
        first = 100 + 3 * n
        assert verdicts(door, range(first, first + 3), source) == [OK, OK, THROTTLED]
    assert door.in_flight == 18
    assert verdicts(door, range(200, 203), "f") == [OK, OK, THROTTLED]  # window full
    assert door.admit(300, "g") == Decision(THROTTLED)
    door.settled(0)  # a slot in the window, but "a" is over its share: the reserve's
    assert door.admit(301, "a") == Decision(THROTTLED)
    assert door.admit(302, "g") == Decision(OK)


def test_the_window_doubles_under_demand_until_the_lag_first_passes_the_target() -> None:
    door = door_of(max_pending_auth=1000, auth_window=64, lag_target=0.05)
    ids = itertools.count()

    def knock_then_tick(lag: float) -> float:
        """Knock until turned away, tick, and let the admitted ones settle."""
        admitted = []
        while door.admit(conn := next(ids), "a").admitted:
            admitted.append(conn)
        door.observe(lag)
        for conn in admitted:
            door.settled(conn)
        return door.window

    assert [knock_then_tick(0.0) for _ in range(5)] == [128.0, 256.0, 512.0, 1000.0, 1000.0]
    assert knock_then_tick(0.06) == 750.0  # late: cut, and the threshold from now on
    assert knock_then_tick(0.0) == 750.0 + INCREASE  # past the threshold: additive
    assert knock_then_tick(0.0) == 750.0 + 2 * INCREASE


def test_lag_over_the_target_shrinks_the_window_and_demand_within_it_grows_it() -> None:
    door = door_of(max_pending_auth=100, auth_window=40, lag_target=0.05)
    door.observe(0.0)
    assert door.window == 40.0  # nobody turned away: no reason to grow
    door.observe(0.051)
    assert door.window == 40.0 * DECREASE
    door.observe(float("nan"))  # a lag that is not a number is not within the target
    assert door.window == 40.0 * DECREASE**2
    for _ in range(40):
        door.observe(10.0)
    assert door.window == MIN_WINDOW
    assert verdicts(door, range(0, 18), "a") == [OK] * 16 + [THROTTLED] * 2
    door.observe(0.05)  # within the target, and someone was turned away
    assert door.window == MIN_WINDOW + INCREASE
    door.observe(0.0)  # nobody since
    assert door.window == MIN_WINDOW + INCREASE
    ids = itertools.count(10)
    for _ in range(20):  # knock until turned away, once a tick
        while door.admit(next(ids), "a").admitted:
            pass
        door.observe(0.0)
    assert door.window == 100.0  # capped at max_pending_auth


def test_a_window_that_shrank_below_its_auths_admits_nobody_until_they_settle() -> None:
    door = door_of(auth_window=32)
    verdicts(door, range(0, 32), "a")
    door.observe(1.0)
    door.observe(1.0)  # 18 now, 32 in flight
    assert door.window == 18.0
    assert door.admit(100, "b") == Decision(THROTTLED)
    for conn in range(0, 14):
        door.settled(conn)
    assert door.admit(101, "b") == Decision(THROTTLED)  # 18 in flight
    door.settled(14)
    assert door.admit(102, "b") == Decision(OK)


def test_a_tiny_challenge_phase_keeps_the_window_within_it() -> None:
    door = Admission(AdmissionLimits(max_pending_auth=2))
    assert door.window == 2.0
    for _ in range(5):
        door.observe(1.0)
    assert door.window == 2.0  # the floor is the challenge phase when that is smaller


# ---------------------------------------------------------------- properties

SOURCES = "abcd"
admits = st.tuples(
    # a source (one of them heavy, so evictions happen), an index (a fresh id, or one
    # used before when it names one and is a multiple of 4)
    st.just("admit"),
    st.sampled_from("aaaaabcd"),
    st.integers(0, 60),
)
releases = st.tuples(st.sampled_from(["authenticated", "settled", "closed"]), st.integers(0, 60))
lags = st.tuples(st.just("observe"), st.sampled_from([0.0, 0.01, 0.2, float("nan")]))
# Time passing: nothing, less than the grace, more, past every mark.
waits = st.tuples(st.just("wait"), st.sampled_from([0.0, 0.2, 0.6, SUSPECT_FOR + 1]))
ops = st.lists(st.one_of(admits, admits, admits, releases, lags, waits), min_size=10, max_size=250)


@settings(max_examples=400, deadline=None)
@given(
    max_connections=st.integers(1, 60),
    max_pending=st.integers(1, 24),  # the window moves above MIN_WINDOW (16)
    window=st.integers(1, 24),
    reserve=st.floats(min_value=0.0, max_value=0.9),
    share=st.floats(min_value=0.05, max_value=1.0),
    steps=ops,
)
def test_admission_against_a_model(
    max_connections: int,
    max_pending: int,
    window: int,
    reserve: float,
    share: float,
    steps: list[tuple[str, str, int] | tuple[str, int] | tuple[str, float]],
) -> None:
    """Random admits, answers, acks, closes and lags from several sources, checked
    against a model: the counts are the model's and never pass the caps; an evicted
    connection is never counted again; BUSY only when the newcomer's source already has
    its share of the challenge phase, and a newcomer that a heavier source owes a slot
    gets it (unless the window refuses); THROTTLED exactly when the window (less the
    reserve, for a source at its share) has no room; ``check`` answers what ``admit``
    does; no admission ever puts more than the window in flight, or gives one source
    more than ``max(share, window - reserve)``; the window stays within its bounds;
    per-source state is only for sources in flight. With time passing, the waiting
    rule evicts exactly when the model says (the oldest, past the grace, of a source
    holding more, for a source not marked), marks are made and expire as modelled (a
    connection replaced by the rule, or closed while waiting), and a marked source
    finds the top of the challenge phase full."""
    limits = AdmissionLimits(
        max_connections=max_connections,
        max_pending_auth=max_pending,
        auth_window=window,
        lag_target=0.1,
        auth_reserve=reserve,
        source_share=share,
    )
    door = Admission(limits)
    grace, top = limits.challenge_grace, max_pending - int(max_pending * CHALLENGE_RESERVE)
    now = 0.0
    pending: dict[int, str] = {}  # in admission order
    since: dict[int, float] = {}
    marked: dict[str, float] = {}  # source -> until
    flying: dict[int, str] = {}
    opened: set[int] = set()
    used: list[int] = []  # ids handed out, for steps that name one
    next_id = itertools.count(1000)
    refusals = evictions = replaced = 0
    for step in steps:
        if step[0] == "observe":
            door.observe(step[1])  # type: ignore[arg-type]
        elif step[0] == "wait":
            now += step[1]  # type: ignore[operator]
        elif step[0] != "admit":
            _, index = step
            conn = used[int(index) % len(used)] if used else int(index)
            if step[0] == "closed":
                door.closed(conn, now)
                if conn in pending:  # it left without answering
                    marked[pending[conn]] = now + SUSPECT_FOR
                pending.pop(conn, None)
                flying.pop(conn, None)
                opened.discard(conn)
                continue
            door.authenticated(conn) if step[0] == "authenticated" else door.settled(conn)
            if pending.pop(conn, None) is not None:
                opened.add(conn)
            if step[0] == "settled":
                flying.pop(conn, None)
        else:
            _, source, index = step  # type: ignore[misc]
            conn = used[index] if index < len(used) and index % 4 == 0 else next(next_id)
            used.append(conn)
            held = {s: 0 for s in SOURCES}
            for s in pending.values():
                held[s] += 1
            heaviest = max(held.values())
            counted = conn in pending or conn in opened
            full = len(pending) + len(opened) >= max_connections
            suspect = marked.get(source, -1.0) > now
            room = len(pending) < max_pending and not (suspect and len(pending) >= top)
            owed = not room and heaviest >= held[source] + 2
            oldest = next(iter(pending), None)
            ripe = (  # what the waiting rule would take
                oldest
                if oldest is not None
                and now - since[oldest] >= grace
                and held[pending[oldest]] > held[source]
                and not suspect
                else None
            )
            mine = sum(1 for s in flying.values() if s == source)
            cap = door.window - door.reserve

            def fits(after: int, mine: int = mine, cap: float = cap) -> bool:
                return after <= cap + 1e-9 or (after <= door.window + 1e-9 and mine < door.share)

            by_room = room or owed or ripe is not None
            evicting = not room  # (by count, or by the waiting rule)
            in_window = fits(len(flying) - evicting + 1)
            by_window = not in_window and not evicting and ripe is not None
            by_window = by_window and fits(len(flying))
            w, r, sh = door.window, door.reserve, door.share

            answer = None if counted else door.check(source, now)
            decision = door.admit(conn, source, now)
            event(
                f"{decision.verdict.value}{' evicting' if decision.evict else ''}"
                f"{' (waited)' if decision.waited else ''}"
            )

            if counted:
                assert decision == Decision(OK)
            elif decision.verdict is not OK:
                refusals += 2  # check and admit both counted it
                assert answer is decision.verdict
                assert decision.evict == ()
                if full:
                    assert decision.verdict is FULL
                elif not by_room:
                    assert decision.verdict is BUSY
                else:
                    assert decision.verdict is THROTTLED
                    assert not in_window and not by_window
            else:
                assert answer is OK
                assert not full and by_room and (in_window or by_window)
                if room and not by_window:
                    assert decision.evict == ()
                else:
                    (victim,) = decision.evict
                    victim_source = pending[victim]
                    if owed:
                        assert not decision.waited
                        assert held[victim_source] == heaviest  # of a heaviest source,
                        assert victim == next(c for c, s in pending.items() if s == victim_source)
                    else:  # the waiting rule: the oldest, which waited the grace
                        assert decision.waited and victim == ripe
                        marked[victim_source] = now + SUSPECT_FOR
                        replaced += 1
                    del pending[victim]  # gone from every count
                    del flying[victim]
                    evictions += 1
                pending[conn] = source
                since[conn] = now
                flying[conn] = source
                # What the window guarantees, at the moment of the admission:
                assert len(flying) <= w + 1e-9
                assert mine + 1 <= max(sh, w - r) + 1e-9
        assert door.pending == len(pending) <= max_pending
        assert door.in_flight == len(flying)
        assert door.connections == len(pending) + len(opened) <= max_connections
        assert door.sources == len(set(flying.values()))
        assert min(MIN_WINDOW, max_pending) <= door.window <= max_pending
    assert door.replaced == replaced
    assert sum(door.refused.values()) == refusals
    assert door.evicted == evictions


@settings(max_examples=300, deadline=None)
@given(
    window=st.integers(1, 200),
    reserve=st.floats(min_value=0.0, max_value=0.9),
    share=st.floats(min_value=0.01, max_value=1.0),
    steps=st.lists(st.sampled_from(["flood", "settle", "lag", "calm", "other"]), max_size=400),
)
def test_one_source_flooding_leaves_the_reserve_to_everyone_else(
    window: int, reserve: float, share: float, steps: list[str]
) -> None:
    """However one source floods (its connections settling or not, the window moving),
    no admission gives it more than ``max(share, window - reserve)`` in flight, and a
    newcomer from another source holding less than its share is admitted whenever the
    window has room."""
    door = Admission(
        AdmissionLimits(
            max_pending_auth=1000, auth_window=window, auth_reserve=reserve, source_share=share
        )
    )
    ids = itertools.count()
    mine: list[int] = []
    for step in steps:
        if step == "flood":
            conn = next(ids)
            if door.admit(conn, "a").admitted:  # (a window that shrank since may hold more)
                mine.append(conn)
                assert door.flying("a") <= max(door.share, door.window - door.reserve) + 1e-9
        elif step == "settle" and mine:
            door.settled(mine.pop(0))
        elif step in ("lag", "calm"):
            door.observe(1.0 if step == "lag" else 0.0)
        elif step == "other":
            room = door.in_flight + 1 <= door.window
            if room and door.flying("b") < door.share:
                assert door.check("b") is OK
                assert door.admit(next(ids), "b").admitted


# ---------------------------------------------------------------- the reported attacks


def _flood(door: Admission, attempts: int, source: str = "127.0.0.2") -> list[Admit]:
    """``attempts`` connections from one source; none of them ever answers."""
    return [door.admit(conn, source).verdict for conn in range(attempts)]


def test_one_address_flooding_at_once_cannot_keep_another_out() -> None:
    """2 400 silent connections from A at the same instant with the default limits: A
    gets the window less the reserve (48 of 64), then is throttled; B's first attempt
    finds the reserve."""
    door = Admission()
    got = _flood(door, 2400)
    assert got == [OK] * 48 + [THROTTLED] * 2352
    assert door.admit(10_000, "127.0.0.3") == Decision(OK)


def test_silent_connections_cannot_hold_the_door_shut() -> None:
    """An address that keeps its connections silent and keeps knocking fills the window,
    but they cost the loop nothing, so the window grows under the demand (a tick at a
    time) until the challenge phase is full; then others evict A's oldest."""
    door = Admission()
    conn = itertools.count()
    for _ in range(200):  # 20 s of ticks, 20 knocks a tick
        for _ in range(20):
            door.admit(next(conn), "127.0.0.2")
        door.observe(0.001)
    assert door.window == 1000.0
    assert door.pending == door.flying("127.0.0.2") == 750
    assert verdicts(door, range(10**6, 10**6 + 25), "127.0.0.3") == [OK] * 25  # the reserve
    assert door.admit(10**7, "127.0.0.2") == Decision(THROTTLED)


def test_many_addresses_cannot_make_the_worker_take_more_than_its_loop_can() -> None:
    """Thousands of addresses with one silent connection each fill the window (then
    nobody gets in: nothing better is possible within a fixed total), and while the
    loop is late the window only shrinks, however many knock."""
    door = Admission()
    conn = itertools.count()
    admitted = sum(
        door.admit(next(conn), f"10.0.{n // 256}.{n % 256}").admitted for n in range(5000)
    )
    assert admitted == 64 == door.in_flight
    for _ in range(30):
        for n in range(100):
            door.admit(next(conn), f"10.1.{n}.1")
        door.observe(0.5)  # late: the knocking does not grow it
    assert door.window == MIN_WINDOW
    assert door.in_flight == 64  # nobody admitted until they settle or time out


# ---------------------------------------------------------------- the waiting rule

GRACE = AdmissionLimits().challenge_grace


def test_a_room_of_one_silent_connection_per_source_gives_way_once_the_oldest_waited() -> None:
    """Issue 15, item 4: every source holds one waiting connection, so no source is
    heavier. A newcomer is refused while they are all younger than the grace, and takes
    the place of the oldest once it has waited that long."""
    door = Admission(AdmissionLimits(max_pending_auth=4))
    for n in range(4):
        assert door.admit(n, f"s{n}", now=n * 0.1) == Decision(OK)
    assert door.check("new", now=0.49) is BUSY
    assert door.admit(10, "new", now=0.49) == Decision(BUSY)
    assert door.check("new", now=0.5) is OK
    assert door.admit(10, "new", now=0.5) == Decision(OK, (0,), waited=True)
    assert (door.evicted, door.replaced, door.pending) == (1, 1, 4)
    # The replaced source reopens at once: it may take free room, but not replace anyone
    # by this rule for SUSPECT_FOR, so it cannot sweep away what waited long enough.
    assert door.admit(11, "s0", now=0.7) == Decision(BUSY)
    assert door.admit(12, "other", now=0.7) == Decision(OK, (1,), waited=True)
    assert door.admit(13, "s0", now=0.7 + SUSPECT_FOR) == Decision(OK, (2,), waited=True)
    # The newcomer answered: it is out of the challenge phase, nobody can take its slot.
    door.authenticated(10)
    assert door.admit(14, "late", now=100.0) == Decision(OK, (3,), waited=True)
    assert door.admit(15, "later", now=100.0) == Decision(OK, (12,), waited=True)
    assert 10 not in door.admit(16, "latest", now=100.0).evict


def test_the_waiting_rule_never_moves_a_slot_to_a_source_holding_as_many() -> None:
    """It looks at the oldest waiting connection only, and takes it only for a source
    holding fewer than the oldest one's source (a swap at worst, never less fair)."""
    door = Admission(AdmissionLimits(max_pending_auth=3))
    for conn, source in enumerate("bba"):
        door.admit(conn, source, now=0.0)
    # Full: b holds 2, a holds 1, nobody two more than another. "a" (1) may replace b's
    # oldest (2 > 1) once it has waited...
    assert door.admit(3, "a", now=GRACE / 2) == Decision(BUSY)
    assert door.admit(3, "a", now=GRACE) == Decision(OK, (0,), waited=True)
    # ...but now the oldest is b's only one: neither b (1, its own) nor a (2) may take it.
    assert door.admit(4, "b", now=2 * GRACE) == Decision(BUSY)
    assert door.admit(5, "a", now=2 * GRACE) == Decision(BUSY)
    # A newcomer: a holds two more than it, so the heavier-source rule comes first.
    assert door.admit(6, "c", now=2 * GRACE) == Decision(OK, (2,))
    assert door.admit(7, "d", now=2 * GRACE) == Decision(OK, (1,), waited=True)
    assert (door.evicted, door.replaced) == (3, 2)


def test_the_waiting_rule_frees_an_auth_window_full_of_silent_connections() -> None:
    """A window cut to its floor by lag, full of silent connections from as many
    sources: the challenge phase has room, the window has none. A newcomer is
    throttled while they are young, then takes the oldest one's place."""
    door = Admission()
    for _ in range(20):
        door.observe(1.0)
    assert door.window == MIN_WINDOW
    for n in range(16):
        door.admit(n, f"s{n}", now=0.0)
    assert door.admit(100, "new", now=GRACE / 2) == Decision(THROTTLED)
    assert door.admit(100, "new", now=GRACE) == Decision(OK, (0,), waited=True)
    assert door.in_flight == 16
    # Answered connections (being verified, waiting for the coordinator) are never
    # evicted: a window full of them throttles, as before.
    for n in range(1, 16):
        door.authenticated(n)
    door.authenticated(100)
    assert door.admit(101, "new2", now=100.0) == Decision(THROTTLED)


def test_suspects_are_bounded_and_forgotten_after_suspect_for() -> None:
    door = Admission(AdmissionLimits(max_pending_auth=1))
    now = 0.0
    door.admit(0, "s0", now=now)
    for n in range(1, 3 * SUSPECTS_PER_SLOT):
        now += GRACE
        assert door.admit(n, f"s{n}", now=now).evict == (n - 1,)
        assert door.suspects <= SUSPECTS_PER_SLOT
    assert door.suspects == SUSPECTS_PER_SLOT
    now += SUSPECT_FOR  # every mark expired: the next look forgets them
    assert door.admit(10**6, "fresh", now=now).waited
    assert door.suspects == 1  # (the one just made)


def test_at_the_defaults_a_thousand_silent_addresses_cannot_keep_a_newcomer_out() -> None:
    """The reported attack at the default limits: 1,000 addresses, each holding one
    connection that never answers, fill the challenge phase (the window grows to it
    under their demand). Newcomers from new addresses come every 10 ms for two seconds,
    answer at once, and are each admitted at once. A displaced address that reopens at
    once gets nothing, and whatever place a newcomer leaves by answering, a fresh
    attacking address takes first: the room stays full of silent connections, and
    still every newcomer gets in."""
    door = Admission()
    ids = itertools.count()
    now = 0.0
    holding: dict[int, str] = {}
    while door.pending < 1000:  # they knock, a tick at a time, until all hold one
        for n in range(1000):
            source = f"10.0.{n // 256}.{n % 256}"
            if door.flying(source) == 0 and door.admit(conn := next(ids), source, now).admitted:
                holding[conn] = source
        door.observe(0.001)
        now += 0.1
    assert door.window == 1000.0 and door.sources == 1000
    now += GRACE
    for k in range(200):
        now += 0.01
        decision = door.admit(conn := next(ids), f"192.0.2.{k}", now)
        assert decision.admitted and decision.waited, (k, decision)
        (victim,) = decision.evict  # the displaced address reopens at once: refused
        assert door.admit(next(ids), holding.pop(victim), now) == Decision(BUSY)
        door.settled(conn)  # the newcomer answers; a fresh attacking address is first
        fresh = f"10.1.{k // 256}.{k % 256}"
        conn = next(ids)
        assert door.admit(conn, fresh, now).admitted
        holding[conn] = fresh
        assert door.pending == 1000
    assert door.replaced == 200 and door.suspects == 200


attacks = st.lists(
    st.one_of(
        st.tuples(st.just("knock"), st.integers(0, 10**6)),  # an attacker (any of them)
        st.tuples(st.just("knock"), st.integers(0, 10**6)),
        st.tuples(st.just("churn"), st.integers(0, 10**6)),  # it closes one of its own
        st.tuples(st.just("wait"), st.floats(min_value=0.0, max_value=0.4)),
        st.tuples(st.just("lag"), st.sampled_from([0.0, 1.0])),
        st.tuples(st.just("newcomer"), st.floats(min_value=0.0, max_value=0.99)),
    ),
    min_size=20,
    max_size=400,
)


@settings(max_examples=400, deadline=None)
@given(
    room=st.integers(1, 24),
    window=st.integers(1, 40),
    attackers=st.integers(1, 60),
    grace=st.floats(min_value=0.05, max_value=1.0),
    steps=attacks,
)
def test_a_newcomer_waits_only_while_the_attack_renews_the_whole_room_within_the_grace(
    room: int, window: int, attackers: int, grace: float, steps: list[tuple[str, float]]
) -> None:
    """Any number of attacking sources knocking in any pattern, holding what they get
    silently, closing their own connections to reopen them (churn), under any lag;
    between them, real clients from new addresses, each answering within a fraction
    of the grace of being admitted. Then:

    * a newcomer is refused only if every connection waiting to answer was admitted
      within the grace before it (or the window is full of connections that answered):
      to keep newcomers out the attacker must renew the whole room every grace, that is
      ``max_pending_auth / challenge_grace`` handshakes a second, however many sources
      it has;
    * a real client that answers within the grace is never evicted;
    * the waiting rule only takes a slot from a source holding more than the newcomer's;
    * a source marked (one of its connections left the challenge phase silent, by
      the waiting rule or by closing) takes neither a place by the waiting rule nor
      one in the top :data:`CHALLENGE_RESERVE` of the challenge phase for
      :data:`SUSPECT_FOR`: churning its own connections keeps at most the rest of the
      room young.
    """
    door = Admission(
        AdmissionLimits(max_pending_auth=room, auth_window=window, challenge_grace=grace)
    )
    now = 0.0
    ids = itertools.count()
    since: dict[int, float] = {}  # waiting to answer -> admitted at
    silent: dict[int, str] = {}  # the attackers' connections -> source
    answers: dict[int, float] = {}  # real clients admitted -> when they answer
    marked: dict[str, float] = {}  # source -> marked until
    held_back = int(room * CHALLENGE_RESERVE)
    fresh = itertools.count()
    for kind, value in steps:
        if kind == "wait":
            now += value
            for conn, due in sorted(answers.items(), key=lambda item: item[1]):
                if due <= now:  # it answers (and is acknowledged at once)
                    door.settled(conn)
                    del answers[conn], since[conn]
        elif kind == "lag":
            door.observe(value)
        elif kind == "churn":
            if not silent:
                continue
            conn = sorted(silent)[int(value) % len(silent)]
            door.closed(conn, now)
            marked[silent.pop(conn)] = now + SUSPECT_FOR
            del since[conn]
        else:
            newcomer = kind == "newcomer"
            source = f"new{next(fresh)}" if newcomer else f"a{int(value) % attackers}"
            held = {s: 0 for s in silent.values()}
            for s in silent.values():
                held[s] += 1
            oldest = min(since.values(), default=None)
            flying, pending = door.in_flight, door.pending
            suspect = marked.get(source, -1.0) > now
            decision = door.admit(conn := next(ids), source, now)
            for victim in decision.evict:
                assert victim not in answers, "a real client was evicted"
                victim_source = silent.pop(victim)
                del since[victim]
                if decision.waited:
                    assert held[victim_source] > held.get(source, 0)
                    assert not suspect
                    marked[victim_source] = now + SUSPECT_FOR
            if decision.admitted and suspect and not decision.evict:
                assert pending < room - held_back
            if decision.admitted:
                event(f"{kind} admitted{' by the waiting rule' if decision.waited else ''}")
                since[conn] = now
                if newcomer:
                    answers[conn] = now + value * grace
                else:
                    silent[conn] = source
            elif newcomer:
                event("newcomer refused")
                young = oldest is None or now - oldest < grace
                assert young or flying > door.window, (now, oldest, flying, door.window)
            else:
                event("attacker refused")
        assert door.pending == len(since)


def test_a_source_that_leaves_a_connection_silent_may_not_take_the_top_of_the_room() -> None:
    """Churn: an attacker closes its own silent connections before they have waited
    the grace and reopens them at once, so none is ever old enough to give way. Its
    first such close marks its address: it keeps at most the room less the reserve,
    and a newcomer finds the reserve."""
    door = Admission(AdmissionLimits(max_pending_auth=8))  # the reserve: 2
    now = 0.0
    for n in range(8):
        door.admit(n, f"a{n}", now)
    for n in range(8):  # each churns once: closed while waiting, then reopens
        now += 0.01
        door.closed(n, now)
        # The first two find the room in its top quarter: what they left stays free.
        assert door.admit(100 + n, f"a{n}", now).admitted == (n >= 2), n
    assert door.pending == 6 and door.suspects == 8
    assert door.admit(200, "new", now) == Decision(OK)
    assert door.admit(201, "new2", now) == Decision(OK)
    door.closed(200)  # (no time given: no mark; the room is for anyone)
    assert door.admit(202, "a0", now) == Decision(BUSY)  # it lost its place by churning
    assert door.admit(203, "a0", now + SUSPECT_FOR) == Decision(OK)
    # Closing after answering marks nothing.
    assert door.suspects == 0  # all expired, and forgotten at that look
    door.authenticated(201)
    door.closed(201, now + SUSPECT_FOR)
    assert door.suspects == 0


def test_a_marked_source_still_gets_the_top_of_the_room_by_the_count_rule() -> None:
    """A user who closed a connection before answering (a reload) and comes back while
    one address floods: the top quarter is not for it, but the flooder holds two more,
    so it takes the flooder's oldest place, as it would in a full room."""
    door = Admission(AdmissionLimits(max_pending_auth=8))
    door.admit(0, "user", 0.0)
    door.closed(0, 0.0)  # marked
    for n in range(1, 7):
        door.admit(n, "flood", 0.0)
    assert door.pending == 6  # the top quarter begins
    assert door.admit(10, "user", 0.1) == Decision(OK, (1,))
    # By count it goes on until the two are level, and no further.
    assert door.admit(11, "user", 0.1) == Decision(OK, (2,))
    assert door.admit(12, "user", 0.1) == Decision(OK, (3,))
    assert door.admit(13, "user", 0.1) == Decision(BUSY)
    assert door.admit(14, "other", 0.1) == Decision(OK)  # unmarked: the top is free
