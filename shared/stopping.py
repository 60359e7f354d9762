"""SIGTERM and SIGINT in an asyncio process: a request to stop cleanly, heard once.

asyncio and uvloop give a signal back its default action when the loop that handled it
closes. A second SIGTERM that lands after that, while the interpreter is still winding
down (threads joined, sockets closed), kills the process with -15 instead of the clean
exit it was on its way to: a supervisor that signals twice, or an operator's second
Ctrl-C, would be told the process crashed. :func:`settle` closes that window: once the
process has stopped its work, both signals are ignored until it exits (SIGKILL still
ends it, which is what a supervisor uses when a stop takes too long).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def on_stop_signals(
    loop: asyncio.AbstractEventLoop, callback: Callable[[signal.Signals], object]
) -> None:
    """Call ``callback(sig)`` on the loop for each SIGTERM or SIGINT."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, callback, sig)


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Stop listening for stop signals and ignore them from now on (see the module's
    docstring): call it once the process's work is over, before the loop closes."""
    # Removing a loop's handler gives the signal its default action back: blocked while
    # it is replaced, a signal arriving in between waits, then is dropped as ignored.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
