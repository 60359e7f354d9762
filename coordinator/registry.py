"""Which workers the coordinator knows, and whether the lobby has heard them all.

Theory of operation
-------------------
A worker is *known* from its first message until it says goodbye or falls silent for
longer than ``timeout``. It is *registered* once its ``Hello`` (every session it holds)
has been applied; only then are its events applied to the lobby. An unregistered
worker (new, or one this coordinator gave up for dead and hears again, or one whose
replies were lost) is asked to re-register with ``Reannounce``, at most once per
``reannounce_every`` seconds, and its other events are ignored until it does: its
``Hello`` will carry everything they said. Registering does not reset that clock: a
worker whose replies keep being lost re-registers at most once per ``reannounce_every``
(each ``Hello`` of a big worker costs the coordinator a whole registration).

A worker's silence is counted on the coordinator's time awake: the time the
coordinator itself stalled (:meth:`WorkerRegistry.stalled`: its loop was late, or busy
with one long message) is not the worker's silence, since its heartbeats may be the very
messages the coordinator has not read yet.

The lobby is *rebuilding* while a worker may still hold sessions the lobby does not
show: while any known worker is unregistered, and, if an earlier coordinator ran (its
lock file says so, or a worker reports an epoch that is not ours), for ``grace``
seconds after start (every live worker speaks at least once per heartbeat, so by then
every one is known). While rebuilding, a message to a key the lobby does not show is
answered ``unavailable``, not ``offline``: the key may well be online on a worker not
yet heard. A first start, with no earlier coordinator, has nothing to rebuild.

Pure: every call takes ``now`` (seconds on a monotonic clock).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class WorkerState:
    last_seen: float
    registered: bool = False
    results: tuple[str, str] = ("", "")
    """Where the worker takes results from other workers, and its CURVE key (``Hello``)."""
    asked_at: float | None = None
    """When ``Reannounce`` was last sent to it."""
    stalled: float = 0.0
    """The coordinator's own stalls until ``last_seen`` (see :meth:`WorkerRegistry.stalled`)."""


class WorkerRegistry:
    def __init__(
        self, *, timeout: float, grace: float, reannounce_every: float, started: float
    ) -> None:
        self.timeout = timeout
        self.reannounce_every = reannounce_every
        self._rebuilt_after = started + grace
        self.restarted = False
        """Whether an earlier coordinator ran (see the theory of operation)."""
        self._workers: dict[str, WorkerState] = {}
        self._stalled = 0.0  # the coordinator's own stalls, summed

    def stalled(self, seconds: float) -> None:
        """The coordinator was stalled for ``seconds``: nobody was silent meanwhile."""
        self._stalled += seconds

    def __contains__(self, worker: str) -> bool:
        return worker in self._workers

    def __len__(self) -> int:
        return len(self._workers)

    def heard(self, worker: str, now: float) -> WorkerState:
        """``worker`` sent something at ``now``; returns its state (new ones unregistered)."""
        state = self._workers.get(worker)
        if state is None:
            state = self._workers[worker] = WorkerState(last_seen=now, stalled=self._stalled)
        else:
            state.last_seen, state.stalled = now, self._stalled
        return state

    def register(self, worker: str, now: float, results: tuple[str, str]) -> None:
        state = self.heard(worker, now)
        state.registered = True
        state.results = results

    def unregister(self, worker: str) -> bool:
        """Its view may be off (a reply to it was lost): it must re-register. Returns
        whether it was registered."""
        state = self._workers.get(worker)
        if state is None or not state.registered:
            return False
        state.registered = False
        return True

    def forget(self, worker: str) -> None:
        self._workers.pop(worker, None)

    def registered(self, worker: str) -> bool:
        state = self._workers.get(worker)
        return state is not None and state.registered

    def results_of(self, worker: str) -> tuple[str, str]:
        state = self._workers.get(worker)
        return ("", "") if state is None else state.results

    def ask(self, worker: str, now: float) -> bool:
        """Whether to send ``Reannounce`` to the unregistered ``worker`` now (and note
        that it was sent)."""
        state = self._workers.get(worker)
        if state is None or state.registered:
            return False
        if state.asked_at is not None and now - state.asked_at < self.reannounce_every:
            return False
        state.asked_at = now
        return True

    def unregistered(self) -> list[str]:
        return [w for w, s in self._workers.items() if not s.registered]

    def expire(self, now: float) -> list[str]:
        """Forget and return the workers silent for longer than ``timeout`` (the
        coordinator's own stalls since each was heard not counted)."""
        deadline, stalled = now - self.timeout, self._stalled
        gone = [
            w for w, s in self._workers.items() if s.last_seen + (stalled - s.stalled) < deadline
        ]
        for worker in gone:
            del self._workers[worker]
        return gone

    def rebuilding(self, now: float) -> bool:
        if self.restarted and now < self._rebuilt_after:
            return True
        return any(not s.registered for s in self._workers.values())
