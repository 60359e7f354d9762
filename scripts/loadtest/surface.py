"""What the ops of a generator process use of its :class:`~scripts.loadtest.agent.Agent`,
declared once: each ops mixin (messages, records, resume, scale) derives from
:class:`AgentSurface`, and the agent defines every name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from scripts.loadtest.client import LoadClient
from scripts.loadtest.tallies import ConnectStats

if TYPE_CHECKING:
    from scripts.loadtest.clientv2 import LoadClientV2
    from scripts.loadtest.stats import Histogram
    from shared.session_v2 import ViewChange


class AgentSurface:
    """The agent's state and helpers its ops share (the agent defines each)."""

    index: int
    progress: int
    concurrency: int
    clients: dict[int, LoadClient]
    follows: dict[int, dict[str, Any]]
    measuring: set[int]
    watching: set[int]
    watchlists: dict[int, frozenset[str]]
    status_sent: dict[tuple[str, str], list[float]]
    """(key, status) -> [sent at, sampled watchers still to see it]."""
    status_latency: dict[str, Histogram]
    """Status change to sighting, by what the sampled watcher follows (lobby, watch)."""
    status_seen: int
    status_made: int
    """Status changes this process made in the run: each next one's number."""

    def pub(self, index: int) -> str:
        """Client ``index``'s public key (hex)."""
        raise NotImplementedError

    def _mark_leave(self, index: int) -> None:
        """Client ``index`` is about to leave on purpose (its close is expected)."""
        raise NotImplementedError

    def _on_record(self, client: LoadClientV2, event: ViewChange) -> None:
        """A sampled watcher saw a record change (the records ops time it)."""
        raise NotImplementedError

    def _watchers_of(self, public_key: str) -> int:
        """Sampled watchers that see a change of ``public_key``."""
        raise NotImplementedError

    async def _connect(
        self, index: int, stats: ConnectStats, until: float | None = None
    ) -> LoadClient | None:
        """Connect client ``index``, retried within bounds (``until``: a returning
        client's deadline); None when it could not."""
        raise NotImplementedError

    def _adopt(self, index: int, client: LoadClient, watch: bool) -> None:
        """Make ``client`` this process's client ``index``."""
        raise NotImplementedError

    def _retire(self, index: int) -> LoadClient | None:
        """Forget client ``index``, returning it."""
        raise NotImplementedError
