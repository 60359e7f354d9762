"""The files a worker serves over plain HTTP on its public port (pure: no sockets).

``GET /`` is the lobby page (``workers/static/index.html``), which loads ``/lobby.js``
(the JavaScript client, an ES module that imports ``/lobby_core.js`` and
``/identity.js``, which imports ``/protocol_v2.js``) and ``/lobby.css``. They are read once when the
worker starts and served from memory; anything else but ``/ws`` and ``/healthz`` is 404.
Every answer carries headers that keep a browser from reading more into it than it is:
the exact content type with ``nosniff``, a content security policy that lets the page run
only its own module and connect only back to this origin, and no caching without a check
(a deployment that updates the files is seen at the next load).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}

ROUTES: Final = {"/": "index.html", "/index.html": "index.html"}
"""Paths other than ``/<name>`` for a served file."""

SECURITY_HEADERS: Final = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-cache"),
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
)


@dataclass(frozen=True, slots=True)
class Page:
    content_type: str
    body: bytes


def load() -> dict[str, Page]:
    """Every servable file by URL path, read once from the package."""
    pages: dict[str, Page] = {}
    for entry in (resources.files("workers") / "static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in TYPES:
            pages["/" + entry.name] = Page(TYPES[suffix], entry.read_bytes())
    for path, name in ROUTES.items():
        if "/" + name in pages:
            pages[path] = pages["/" + name]
    return pages
