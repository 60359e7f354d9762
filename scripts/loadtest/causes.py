"""Why a connection attempt of the generator ended badly, as one named cause.

Every exception a connect can raise, from either WebSocket library and either protocol
version, maps to a short name the result counts (``connect.causes``):

* ``dropped_before_upgrade``: the connection ended before the server's HTTP answer to
  the upgrade (reset, closed, or cut mid-handshake);
* ``refused_http_<status>``: the server answered the upgrade with another status;
* ``handshake_timeout``: no complete upgrade or auth answer within ``open_timeout``;
* ``reset_after_upgrade``: the upgrade succeeded, then the connection ended without a
  close frame before the client was in;
* ``closed_<code>``: the server sent a close frame before the client was in (1013: try
  again later);
* ``auth_failed_<reason>``: the server refused the credentials (never retried);
* ``connect_refused``: nothing listens at the address;
* ``protocol_error``: the server sent something the contract does not allow;
* ``error_<ExceptionName>``: anything else (a bug to look at, still counted, never a
  traceback).

A client that was in and lost its connection without the generator closing it counts
as ``reset_mid_run`` (no close frame) or ``closed_mid_run_<code>``
(:func:`mid_run`); the scenario's checks judge what that did to the run.

:func:`retry` says whether a cause is worth another attempt: 1013 and 503 up to the
scenario's attempts, transport failures up to :data:`TRANSPORT_ATTEMPTS` per client;
for a client coming back after losing its server, whatever the client library's
reconnection retries, and transport failures with no count, until its deadline.
"""

from __future__ import annotations

from typing import Final

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
)

from shared.client import AuthFailed, ConnectionRefusedByServer, ProtocolError
from shared.session import retryable

TRANSPORT_ATTEMPTS: Final = 5
"""Attempts per client when the connection itself fails (dropped, reset, timed out)."""

TRY_AGAIN_LATER: Final = ("closed_1013", "refused_http_503")
"""Causes the server gives to say "come back later": retried up to the scenario's
attempts, with backoff."""

ABNORMAL: Final = 1006


def _slug(text: str) -> str:
    return "_".join(text.split()) or "none"


def classify(exc: BaseException) -> str:
    """The cause of a failed connection attempt that raised ``exc``."""
    if isinstance(exc, AuthFailed):
        return f"auth_failed_{_slug(exc.reason)}"
    if isinstance(exc, ConnectionRefusedByServer):
        if exc.http_status is not None:
            return f"refused_http_{exc.http_status}"
        if exc.code is None or exc.code == ABNORMAL:
            return "reset_after_upgrade"
        return f"closed_{exc.code}"
    if isinstance(exc, InvalidStatus):
        return f"refused_http_{exc.response.status_code}"
    if isinstance(exc, TimeoutError):
        return "handshake_timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "connect_refused"
    if isinstance(exc, InvalidMessage | EOFError | ConnectionError):
        return "dropped_before_upgrade"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else ABNORMAL
        return "reset_after_upgrade" if code == ABNORMAL else f"closed_{code}"
    if isinstance(exc, ProtocolError | InvalidHandshake):
        return "protocol_error"
    if isinstance(exc, OSError):
        return "dropped_before_upgrade"
    return f"error_{type(exc).__name__}"


_FINAL: Final = ("auth_failed_", "closed_", "refused_http_", "error_")
"""Causes a fresh attempt would meet again (unless the library retries them)."""


def retry(
    cause: str,
    transport_failures: int,
    exc: BaseException | None = None,
    *,
    returning: bool = False,
) -> bool:
    """Whether an attempt that ended with ``cause`` (raised as ``exc``) is tried again,
    the client having had ``transport_failures`` such failures so far (this one
    included).

    ``returning``: a client coming back after losing its server retries as the client
    library's reconnection does (:func:`shared.session.retryable`, 4003 included) and
    every transport failure with no count, its scenario's deadline bounding it: a storm
    of returns on a busy machine drops connections before the upgrade (a full listen
    queue), and a real client comes back through them. It still stops where the library
    stops: credentials refused, a final close, a server that broke the protocol."""
    if cause in TRY_AGAIN_LATER:
        return True
    if returning:
        if exc is not None and retryable(exc):
            return True
        return not cause.startswith((*_FINAL, "protocol_error"))
    if cause.startswith(_FINAL):
        return False
    return transport_failures < TRANSPORT_ATTEMPTS


def mid_run(code: int | None) -> str:
    """The cause of a client's connection ending mid-run with close ``code``."""
    return "reset_mid_run" if code is None or code == ABNORMAL else f"closed_mid_run_{code}"
