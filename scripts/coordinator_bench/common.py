"""What every part of the coordinator benchmark shares: the workload's names and keys."""

from __future__ import annotations

from shared import backbone as bb
from shared.endpoints import BackboneOptions

W1, W2 = "w1", "w2"
BODY = "x" * 100
"""The body of every measured direct message (100 characters)."""
MAX_MESSAGE_BYTES = BackboneOptions().max_message_bytes
IDLE_SECONDS = 5.0


def key_of(i: int) -> str:
    """A distinct 64-hex-character public key for each ``i``."""
    return f"{i:064x}"


def hello(worker: str) -> bb.Hello:
    return bb.Hello(worker, "", f"ipc:///nonexistent/results-{worker}", "", [])


class MeasureError(RuntimeError):
    """The measurement could not be made (the coordinator died, lost track, timed out)."""
