"""The pure lobby: race resolution, net-effect batching, numbering, snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator.lobby import Delta, Lobby, Session

A = "a" * 64
B = "b" * 64
W1, W2 = "w1", "w2"


def test_add_user_new_entry() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 1))
    assert lobby.get_user(A) == Session(W1, 1)
    flush = lobby.flush()
    assert flush.delta == Delta(1, [A], [])
    assert flush.acks == [(Session(W1, 1), 1)]
    assert lobby.snapshot() == (1, [A])


def test_add_user_reconnection_replaces() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    lobby.add_user(A, Session(W2, 7))
    assert lobby.get_user(A) == Session(W2, 7)
    assert len(lobby) == 1
    flush = lobby.flush()
    # A reconnection is in both lists of one update, and the old connection is kicked.
    assert flush.delta == Delta(2, [A], [A])
    assert flush.kicks == [Session(W1, 1)]
    assert flush.acks == [(Session(W2, 7), 2)]
    # The replaced connection's close, arriving late, must not remove the new session.
    assert lobby.remove_user(A, Session(W1, 1)) is False
    assert lobby.get_user(A) == Session(W2, 7)
    assert not lobby.pending


def test_remove_user_deletes_entry() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    assert lobby.remove_user(A, Session(W1, 1)) is True
    assert lobby.get_user(A) is None
    assert lobby.flush().delta == Delta(2, [], [A])
    assert lobby.snapshot() == (2, [])


def test_remove_nonexistent_user_safe() -> None:
    lobby = Lobby()
    assert lobby.remove_user(A, Session(W1, 1)) is False
    assert not lobby.pending
    assert lobby.flush().delta is None
    assert lobby.seq == 0


def test_get_user_returns_existing() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 3))
    assert lobby.get_user(A) == Session(W1, 3)


def test_get_user_returns_none_for_missing() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 3))
    assert lobby.get_user(B) is None


def test_concurrent_add_remove_safe() -> None:
    """Interleaved events from two workers for one key, in the worst order: the newer
    session's auth is applied before the older session's close is reported."""
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 1))
    lobby.add_user(A, Session(W2, 1))  # same conn id, other worker: a distinct session
    lobby.remove_user(A, Session(W1, 1))  # stale close from the replaced session
    lobby.add_user(B, Session(W1, 2))
    lobby.remove_user(B, Session(W1, 2))
    assert lobby.get_user(A) == Session(W2, 1)
    assert lobby.get_user(B) is None
    flush = lobby.flush()
    # Net effect only: B joined and left inside the batch, so it never appears.
    assert flush.delta == Delta(1, [A], [])
    assert flush.kicks == [Session(W1, 1)]
    assert flush.acks == [(Session(W2, 1), 1)]


def test_snapshot_is_as_of_seq_not_live() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 1))
    lobby.flush()
    lobby.add_user(B, Session(W1, 2))  # unpublished
    assert lobby.snapshot() == (1, [A])


def test_drop_worker_removes_all_its_sessions_in_one_update() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 1))
    lobby.add_user(B, Session(W2, 1))
    lobby.flush()
    assert lobby.drop_worker(W1) == 1
    assert lobby.flush().delta == Delta(2, [], [A])
    assert lobby.drop_worker(W1) == 0


def test_replaced_before_publication_is_kicked_not_acked() -> None:
    lobby = Lobby()
    lobby.add_user(A, Session(W1, 1))
    lobby.add_user(A, Session(W1, 2))
    flush = lobby.flush()
    assert flush.delta == Delta(1, [A], [])
    assert flush.acks == [(Session(W1, 2), 1)]
    assert flush.kicks == [Session(W1, 1)]


def test_restore_keeps_the_newer_authentication() -> None:
    """Sessions re-registered with their stamps: the newest authentication of a key
    stays, whichever worker re-registers first, across epochs."""
    lobby = Lobby("e2")
    lobby.restore_user(A, Session(W1, 1), ("e1", 9))
    lobby.restore_user(A, Session(W2, 1), ("e1", 4))  # older: kicked
    lobby.restore_user(B, Session(W2, 2), ("e1", 3))
    lobby.restore_user(B, Session(W1, 2), ("e1", 8))  # newer: displaces W2's
    flush = lobby.flush()
    assert lobby.get_user(A) == Session(W1, 1) and lobby.get_user(B) == Session(W1, 2)
    assert flush.kicks == [Session(W2, 1), Session(W2, 2)]
    assert flush.acks == []  # restored sessions were acknowledged long ago
    assert flush.delta == Delta(1, [A, B], [])


def test_fresh_auth_is_newer_than_any_restored_session() -> None:
    lobby = Lobby("e1")
    lobby.add_user(A, Session(W2, 5))  # authenticated elsewhere while W1 was away
    lobby.restore_user(A, Session(W1, 1), ("e1", 0))  # W1 comes back with its old one
    flush = lobby.flush()
    assert lobby.get_user(A) == Session(W2, 5)
    assert flush.kicks == [Session(W1, 1)]
    assert flush.acks == [(Session(W2, 5), 1)]


# ------------------------------------------------------------ property tests

KEYS = [c * 64 for c in "0123456"]
WORKERS = ["w1", "w2", "w3"]


@dataclass
class Model:
    """What really exists: connections that are open, by the workers holding them."""

    next_conn: int = 0
    open: dict[Session, str] = field(default_factory=dict)
    authed_at: dict[Session, int] = field(default_factory=dict)
    clock: int = 0

    def expected(self) -> dict[str, Session]:
        newest: dict[str, Session] = {}
        for session, key in self.open.items():
            if key not in newest or self.authed_at[session] > self.authed_at[newest[key]]:
                newest[key] = session
        return newest


op = st.one_of(
    st.tuples(st.just("auth"), st.sampled_from(WORKERS), st.sampled_from(KEYS)),
    st.tuples(st.just("close"), st.integers(0, 50)),
    st.tuples(st.just("stale_close"), st.integers(0, 50)),
    st.tuples(st.just("drop"), st.sampled_from(WORKERS)),
    st.tuples(st.just("flush")),
    st.tuples(st.just("snapshot")),
)


def apply_delta(view: set[str], delta: Delta) -> None:
    for key in delta.left:
        assert key in view, "left for a key that was not online"
        view.remove(key)
    for key in delta.joined:
        assert key not in view, "joined for a key that was already online"
        view.add(key)


@settings(max_examples=400, deadline=None)
@given(st.lists(op, max_size=80))
def test_random_interleavings_keep_invariants(ops: list[tuple[object, ...]]) -> None:
    lobby = Lobby()
    model = Model()
    closed: list[tuple[Session, str]] = []
    deltas: list[Delta] = []
    snapshots: list[tuple[int, list[str]]] = [lobby.snapshot()]

    def flush() -> None:
        result = lobby.flush()
        if result.delta is not None:
            assert result.delta.seq == (deltas[-1].seq if deltas else 0) + 1
            assert result.delta.joined or result.delta.left
            deltas.append(result.delta)
        published = set(lobby.snapshot()[1])
        for session, seq in result.acks:
            assert seq == lobby.seq and lobby.get_published(model.open[session]) == session
        for session in result.kicks:  # the worker closes a kicked connection
            if session in model.open:
                key = model.open.pop(session)
                closed.append((session, key))
                assert lobby.get_user(key) != session
        assert published == set(lobby.snapshot()[1])

    for step in ops:
        if step[0] == "auth":
            session = Session(str(step[1]), model.next_conn)
            model.next_conn += 1
            model.clock += 1
            model.open[session] = str(step[2])
            model.authed_at[session] = model.clock
            lobby.add_user(str(step[2]), session)
        elif step[0] == "close" and model.open:
            session = sorted(model.open)[int(str(step[1])) % len(model.open)]
            key = model.open.pop(session)
            closed.append((session, key))
            lobby.remove_user(key, session)
        elif step[0] == "stale_close" and closed:
            session, key = closed[int(str(step[1])) % len(closed)]
            assert lobby.remove_user(key, session) is False
        elif step[0] == "drop":
            for session in [s for s in model.open if s.worker == step[1]]:
                closed.append((session, model.open.pop(session)))
            lobby.drop_worker(str(step[1]))
        elif step[0] == "flush":
            flush()
        elif step[0] == "snapshot":
            snapshots.append(lobby.snapshot())
    flush()
    # Kicked connections close; their closes must change nothing.
    for session, key in closed:
        assert lobby.remove_user(key, session) is False

    # Every key online at most once, and exactly the newest open session per key.
    expected = model.expected()
    assert {k: lobby.get_user(k) for k in KEYS if lobby.get_user(k)} == expected
    assert len(lobby) == len(expected)
    # Replaying the published deltas onto any snapshot reproduces the lobby.
    for seq, users in snapshots:
        view = set(users)
        for delta in deltas[seq:]:
            apply_delta(view, delta)
        assert view == set(expected)
    assert lobby.snapshot() == (len(deltas), sorted(expected))
