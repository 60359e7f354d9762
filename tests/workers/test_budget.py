"""The worker's memory budget (pure): exact accounting, fair refusals, memory back."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.options import SettingsError
from workers.budget import CONNECTION_SHARE, MemoryBudget, MemoryLimits

MIB = 1024 * 1024


def test_defaults_fit_a_small_machine() -> None:
    limits = MemoryLimits()
    assert (limits.memory_budget, limits.send_buffer_bytes) == (512 * MIB, 8 * 1024)
    # Half the budget reserves the kernel buffers Linux grants (twice the asked size).
    assert limits.memory_budget * CONNECTION_SHARE // (2 * limits.send_buffer_bytes) == 16_384
    with pytest.raises(SettingsError, match="--memory-budget"):
        MemoryLimits(memory_budget=1000)


def test_connections_reserve_their_kernel_buffer_up_to_half_the_budget() -> None:
    budget: MemoryBudget[str] = MemoryBudget(4 * MIB)
    admitted = [h for h in (f"c{i}" for i in range(100)) if budget.reserve(h, 64 * 1024)]
    assert len(admitted) == 32 and budget.refused_connections == 68
    assert not budget.admits(64 * 1024)
    budget.release("c0")
    assert budget.admits(64 * 1024) and budget.reserve("new", 64 * 1024)
    budget.check()


def test_backlogs_are_charged_as_observed_and_released_on_drain_or_close() -> None:
    budget: MemoryBudget[str] = MemoryBudget(4 * MIB)
    budget.reserve("a", 16384)
    budget.observe("a", 5000)
    budget.observe("b", 700)
    assert budget.figures().backlog == 5700 and set(budget.backlogged()) == {"a", "b"}
    budget.observe("a", 1000)  # partly drained
    assert budget.figures().used == 16384 + 1700
    budget.observe("a", 0)
    budget.release("b")
    assert budget.figures().used == 16384 and list(budget.backlogged()) == []
    budget.release("a")
    assert budget.figures().used == 0
    budget.check()


def test_past_half_the_pool_the_heaviest_are_refused_and_a_light_client_is_served() -> None:
    budget: MemoryBudget[str] = MemoryBudget(4 * MIB)
    pool = 4 * MIB
    assert budget.allowance("light") == pool  # nothing charged yet
    for i in range(10):  # ten heavy backlogs, 300 KiB each: past half the pool
        budget.observe(f"heavy{i}", 300 * 1024)
    assert budget.figures().backlog > pool // 2
    share = pool // 2 // 11  # an equal share of half the pool
    assert budget.allowance("heavy0") <= 0  # heavier than an equal share: refused
    assert budget.allowance("light") == share  # a newcomer still gets its share
    budget.observe("light", share)
    assert budget.allowance("light") <= 0  # and no more


def test_the_indexes_are_charged_first_and_refused_growth_under_pressure() -> None:
    budget: MemoryBudget[str] = MemoryBudget(4 * MIB)
    held = MIB
    budget.indexes = lambda: held
    assert budget.allowance("a") == 3 * MIB  # what the indexes hold is not in the pool
    assert budget.figures().indexes == MIB and budget.figures().used == MIB
    assert budget.admits_index(1024)
    budget.observe("a", 3 * MIB // 2)  # half the pool left by the indexes
    assert not budget.admits_index(1024)  # pressure: the watchlists may not grow
    held = 0
    assert budget.admits_index(1024)


@settings(max_examples=300, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.sampled_from(["reserve", "observe", "release"]),
            st.integers(0, 7),
            st.integers(0, 600_000),
        ),
        max_size=80,
    )
)
def test_the_accounting_is_exact_in_any_order(events: list[tuple[str, int, int]]) -> None:
    """Whatever happens in whatever order, the totals are the sums of the ledger, the
    reservations stay within their share, writes that respect the allowance never take
    the budget past its limit, and once every connection is gone it is all free."""
    limit = 2 * MIB
    budget: MemoryBudget[int] = MemoryBudget(limit)
    backlogs: dict[int, int] = {}
    for kind, handle, size in events:
        if kind == "reserve":
            budget.reserve(handle, size // 8)
        elif kind == "observe":
            grow = min(size, max(0, budget.allowance(handle)))  # a write within it
            backlogs[handle] = backlogs.get(handle, 0) // 2 + grow  # half drained
            budget.observe(handle, backlogs[handle])
        else:
            budget.release(handle)
            backlogs.pop(handle, None)
        budget.check()
        assert budget.figures().used <= limit
    for handle in range(8):
        budget.release(handle)
    assert budget.figures().used == 0 and budget.figures().connections == 0
    budget.check()


def test_memory_is_given_back_once_after_a_load_leaves() -> None:
    budget: MemoryBudget[str] = MemoryBudget(8 * MIB)
    budget.observe("a", 2 * MIB)  # past an eighth of the budget
    assert not budget.drained()
    budget.observe("a", 1 * MIB)
    assert not budget.drained()  # still loaded
    budget.release("a")
    assert budget.drained()  # once
    assert not budget.drained()


def test_while_backlogs_are_past_half_the_pool_newcomers_wait() -> None:
    budget: MemoryBudget[str] = MemoryBudget(4 * MIB)
    assert budget.reserve("heavy", 16384, source="10.6.6.6")
    budget.observe("heavy", 3 * MIB)
    assert not budget.admits(16384, "10.6.6.6")
    assert not budget.reserve("new", 16384, source="10.6.6.6")
    assert budget.reserve("light", 16384, source="10.1.1.1")  # another address
    budget.observe("heavy", MIB)
    assert budget.reserve("new", 16384, source="10.6.6.6")


def test_one_address_with_many_keys_counts_as_one_user_of_the_pool() -> None:
    """Keys are free: under pressure a source's connections share one equal share, so
    an address holding most of the pool is refused and another address is served."""
    budget: MemoryBudget[str] = MemoryBudget(4 * MIB)
    for i in range(40):
        assert budget.reserve(f"bot{i}", 8192, source="10.6.6.6")
    for i in range(40):
        budget.observe(f"bot{i}", 64 * 1024)  # 2.5 MiB from one address
    assert budget.reserve("alice", 8192, source="10.1.1.1")
    budget.observe("alice", 1000)
    assert budget.allowance("bot0") <= 0 and budget.allowance("alice") > 100_000
    assert not budget.admits(8192, "10.6.6.6") and budget.admits(8192, "10.2.2.2")
    budget.check()
    for i in range(40):
        budget.release(f"bot{i}")
    assert budget.admits(8192, "10.6.6.6")
    budget.check()
