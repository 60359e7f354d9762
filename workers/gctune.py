"""The cyclic garbage collector's settings in a worker (:func:`tune_gc`, at start)."""

from __future__ import annotations

import gc
from typing import Final

GC_THRESHOLDS: Final = (50_000, 20, 20)
"""The cyclic garbage collector's thresholds in a worker (Python's: 700, 10, 10).

A worker keeps a few hundred container objects per connection and makes as many again
per handshake that reference counting frees; at Python's 700 the young generation is
collected every few handshakes, its survivors scanned again in the older ones, and a
mass join of 5,000 watchlist clients spent 12% of the worker's CPU in the collector
(perf, CPU clock), 2% at 50,000. What waits longer is only cyclic garbage: at most
50,000 young container objects' worth (megabytes), never a live object."""


def tune_gc() -> None:
    """Collect young objects less often, and leave what the start made (modules,
    settings: never garbage) out of every later full collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
