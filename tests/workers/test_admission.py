"""Token buckets, the per-connection flood guard and the per-worker door, on a fake clock."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.admission import (
    Admission,
    AdmissionLimits,
    Admit,
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


def test_admission_caps_the_challenge_phase_and_releases_idempotently() -> None:
    door = Admission(AdmissionLimits(max_pending_auth=2, auth_rate=1000.0, auth_burst=1000.0))
    assert [door.admit(c, 0.0) for c in (1, 2, 3)] == [Admit.OK, Admit.OK, Admit.BUSY]
    assert door.admit(1, 0.0) is Admit.OK  # already in: no second slot, no token
    door.release(1)
    door.release(1)
    door.release(99)  # never admitted: nothing happens
    assert door.pending == {2}
    assert door.admit(3, 0.0) is Admit.OK
    assert door.refused == {Admit.BUSY: 1}


def test_admission_rate_refuses_past_the_burst_and_readmits_at_the_rate() -> None:
    door = Admission(AdmissionLimits(max_pending_auth=100, auth_rate=2.0, auth_burst=3.0))
    ids = itertools.count()
    got = [door.admit(next(ids), 0.0) for _ in range(5)]
    assert got == [Admit.OK] * 3 + [Admit.THROTTLED] * 2
    assert door.admit(next(ids), 0.25) is Admit.THROTTLED
    assert door.admit(next(ids), 0.5) is Admit.OK
    assert door.refused == {Admit.THROTTLED: 3}


def test_a_busy_refusal_spends_no_token() -> None:
    door = Admission(AdmissionLimits(max_pending_auth=1, auth_rate=0.0, auth_burst=2.0))
    assert door.admit(1, 0.0) is Admit.OK
    assert door.admit(2, 0.0) is Admit.BUSY
    door.release(1)
    assert door.admit(2, 0.0) is Admit.OK  # the second token was still there


@settings(max_examples=300, deadline=None)
@given(
    cap=st.integers(1, 20),
    rate=st.floats(min_value=0.0, max_value=50.0),
    burst=st.floats(min_value=1.0, max_value=30.0),
    ops=st.lists(
        st.tuples(st.booleans(), st.integers(0, 40), st.floats(min_value=0.0, max_value=0.3)),
        max_size=300,
    ),
)
def test_admission_invariants(
    cap: int, rate: float, burst: float, ops: list[tuple[bool, int, float]]
) -> None:
    """Random admits and releases: the pending set never passes the cap, admissions
    never pass the rate, BUSY only when full, and every refusal is counted."""
    door = Admission(AdmissionLimits(max_pending_auth=cap, auth_rate=rate, auth_burst=burst))
    now = 0.0
    admitted = refusals = 0
    for is_admit, conn, delta in ops:
        now += delta
        if not is_admit:
            door.release(conn)
            continue
        was_in, was_full = conn in door.pending, len(door.pending) >= cap
        verdict = door.admit(conn, now)
        if verdict is Admit.OK:
            assert conn in door.pending
            admitted += not was_in
        else:
            refusals += 1
            assert conn not in door.pending
            assert (verdict is Admit.BUSY) == was_full
        assert len(door.pending) <= cap
        assert admitted <= burst + rate * now + 1e-6
    assert sum(door.refused.values()) == refusals
