"""The worker's HTTP door: every answer given before (or instead of) a WebSocket upgrade.

Theory of operation
-------------------
websockets reads each request on the public port and asks :meth:`Door.process_request`
before any handshake: ``/ws`` upgrades (``GET`` only), unless the core refuses it at
the door (:meth:`~workers.core.WorkerCore.door`), which is an HTTP 503 with
``Retry-After`` that clients treat as 1013 (see docs/PROTOCOL.md) and costs no
handshake, no connection handler and no close handshake: that is what lets a storm be
refused cheaply. The core admits a new WebSocket into the challenge phase only while
the challenge phase has room and the auth window (auths in flight, sized by the event
loop's lag) has room for its source (:class:`~workers.admission.Admission`).
``/healthz`` answers GET and HEAD (anything else: 405) with the core's
figures (:meth:`~workers.core.WorkerCore.health`), 503 as soon as the coordinator is
unreachable; the lobby page and its files are served with safe headers; anything else
is 404. The backend API has a port and a shell of its own (:mod:`workers.apiserver`).

The admission source of a request is the client's address, from a trusted proxy's
header when the peer is one (:mod:`workers.sources`), IPv6 by /64.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, Final
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from shared import protocol
from workers import pages
from workers.core import WorkerCore
from workers.sources import IPNetwork, client_address, source_key

RETRY_AFTER: Final = 1
"""``Retry-After`` seconds of an upgrade refused at capacity: a hint only, as clients
back off with jitter on their own (a window frees within a round trip or two)."""


class Door:
    """The answers of the public port."""

    def __init__(
        self,
        core: WorkerCore[Any],
        now: Callable[[], float],
        *,
        trusted: tuple[IPNetwork, ...],
    ) -> None:
        self.core = core
        self._now = now
        self._trusted = trusted
        self._pages = pages.load()

    def source_of(self, peer: Any, request: Request | None) -> str:
        """The admission source: the client's address (from a trusted proxy's header
        when the peer is one), IPv6 by /64."""
        address = str(peer[0]) if isinstance(peer, tuple) and peer else None
        if self._trusted and request is not None:
            address = client_address(address, request.headers, self._trusted)
        return source_key(address or "")

    def process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == protocol.WS_PATH:
            if request.method != "GET":
                return _not_allowed(conn, "GET")
            return self._upgrade(conn, request)
        page = self._pages.get(path)
        if path != protocol.HEALTH_PATH and page is None:
            return conn.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        if request.method not in ("GET", "HEAD"):
            return _not_allowed(conn, "GET, HEAD")
        head = request.method == "HEAD"
        if page is None:
            return self._health(conn, head=head)
        return _page(conn, page, head=head)

    def _upgrade(self, conn: ServerConnection, request: Request) -> Response | None:
        """Refuse an upgrade the core would refuse, before the handshake. ``None`` goes
        on with the handshake; the handler then admits for real."""
        source = self.source_of(conn.remote_address, request)
        if self.core.door(source, self._now()) is None:
            return None
        response = conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "try again later\n")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    def _health(self, conn: ServerConnection, *, head: bool) -> Response:
        up, body = self.core.health(self._now())
        status = HTTPStatus.OK if up else HTTPStatus.SERVICE_UNAVAILABLE
        response = conn.respond(status, json.dumps(body) + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        if head:
            response.body = b""  # Content-Length stays that of the GET answer
        return response


def _page(conn: ServerConnection, page: pages.Page, *, head: bool) -> Response:
    response = conn.respond(HTTPStatus.OK, "")
    headers = response.headers
    del headers["Content-Type"], headers["Content-Length"]
    headers["Content-Type"] = page.content_type
    headers["Content-Length"] = str(len(page.body))
    for name, value in pages.SECURITY_HEADERS:
        headers[name] = value
    response.body = b"" if head else page.body
    return response


def _not_allowed(conn: ServerConnection, allow: str) -> Response:
    response = conn.respond(HTTPStatus.METHOD_NOT_ALLOWED, "Method Not Allowed\n")
    response.headers["Allow"] = allow
    return response
