"""What the ops of a generator process use of its :class:`~scripts.loadtest.agent.Agent`,
declared once: each ops mixin (messages, records, resume, scale) derives from
:class:`AgentSurface`, and the agent defines every name."""

from __future__ import annotations

from typing import Any

from scripts.loadtest.client import LoadClient
from scripts.loadtest.tallies import ConnectStats


class AgentSurface:
    """The agent's state and helpers its ops share (the agent defines each)."""

    index: int
    progress: int
    concurrency: int
    clients: dict[int, LoadClient]
    follows: dict[int, dict[str, Any]]

    def pub(self, index: int) -> str:
        """Client ``index``'s public key (hex)."""
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
