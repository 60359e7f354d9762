"""Which process speaks for each worker id.

Theory of operation
-------------------
A worker process's routing id is its worker id and a token of its own
(:func:`shared.backbone.routing_id`), so two processes started with the same worker id
(two machines with the same name) are two peers of the coordinator's ROUTER, not a
second one the ROUTER would ignore without a word. The first one heard *holds* the id;
another is refused, and both the coordinator and the refused process say so, for as
long as the holder is live (known to the registry: heard within the worker timeout,
and no goodbye). Once the holder is gone, the next process to speak takes the id over.
A process that reconnects after a blip keeps its routing id, so it is never locked out
(and a worker the launcher restarts gets a new id anyway).

Pure: the shell says whether a worker id is live (:meth:`Claims.claim`'s ``live``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Peer:
    """One process on the ROUTER: its routing id, and what its connection showed."""

    routing: bytes
    address: str = ""
    """Where its connection comes from ("" when the transport has no address: ipc)."""
    key: str = ""
    """Its CURVE public key (Z85), or the name of the key's file; "" without CURVE."""

    def __str__(self) -> str:
        where = self.address or "a local socket"
        return f"{where} with key {self.key}" if self.key else where


@dataclass(frozen=True, slots=True)
class Verdict:
    """``accepted``: the peer speaks for the worker id. ``other``: when accepted, the
    holder it took over from (gone); when refused, the live holder."""

    accepted: bool
    other: Peer | None = None


class Claims:
    def __init__(self) -> None:
        self._holders: dict[str, Peer] = {}

    def __len__(self) -> int:
        return len(self._holders)

    def claim(self, worker: str, peer: Peer, *, live: bool) -> Verdict:
        """May ``peer`` speak for ``worker``? ``live``: whether the registry knows the
        worker id now (its holder was heard recently)."""
        holder = self._holders.get(worker)
        if holder is not None and holder.routing == peer.routing:
            return Verdict(True)
        if holder is not None and live:
            return Verdict(False, holder)
        self._holders[worker] = peer
        return Verdict(True, holder)

    def routing(self, worker: str) -> bytes | None:
        """The routing id of the holder of ``worker`` (replies go there)."""
        holder = self._holders.get(worker)
        return None if holder is None else holder.routing

    def release(self, live: Callable[[str], bool]) -> list[bytes]:
        """Forget the holders of worker ids no longer live; returns their routing ids."""
        gone = [worker for worker in self._holders if not live(worker)]
        return [self._holders.pop(worker).routing for worker in gone]
