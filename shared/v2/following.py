"""Which choice a version 2 client's view is of, across its scope requests (pure).

Theory of operation
-------------------
A client changes what it follows with *scope requests* (``follow``, ``watch``,
``unwatch``). The server applies them in order, or refuses one with an ``error``;
every ``snapshot`` and ``count`` carries ``applied``, the number of this connection's
requests applied when it was built, and an ``error`` refusing one carries the number
applied before it (docs/PROTOCOL.md, "Resume"). :class:`Following` keeps:

* ``view``: the choice the view is of (the ``auth``'s ``follow``, then that of each
  snapshot or count: ``view`` with the first ``applied - reflected`` requests sent);
* ``reflected``: the ``applied`` of the view's last snapshot or count;
* ``sent``: the requests sent since, neither reflected nor refused, in order. An
  ``error`` with ``applied`` ``a`` refuses ``sent[a - reflected]`` (errors come in
  order, and every request before it in ``sent`` was applied).

:attr:`Following.wanted` (the view's choice with every request in ``sent`` applied)
is the choice the client believes it follows; a refusal takes its request out of it.
A reconnection resumes with ``follow`` = ``view`` and re-sends ``sent`` after
``auth_ok`` (:meth:`Following.next`): the resumed view is then of the choice stated,
and the requests it did not reflect are asked again, on a connection whose count
starts at 0.
"""

from __future__ import annotations

from collections.abc import Iterable

from shared.v2.client import Follow, FollowFrame, Scope, Unwatch, Watch

Request = FollowFrame | Watch | Unwatch
"""A scope request."""


def apply(choice: Follow, request: Request) -> Follow:
    """``choice`` after the server applied ``request`` (a ``watch`` or ``unwatch``
    while following no watchlist is refused: ``choice`` is unchanged)."""
    if isinstance(request, FollowFrame):
        return request.follow
    if choice.scope is not Scope.WATCH:
        return choice
    if isinstance(request, Watch):
        return Follow(Scope.WATCH, tuple(dict.fromkeys((*choice.keys, *request.keys))))
    removed = set(request.keys)
    return Follow(Scope.WATCH, tuple(key for key in choice.keys if key not in removed))


def apply_all(choice: Follow, requests: Iterable[Request]) -> Follow:
    for request in requests:
        choice = apply(choice, request)
    return choice


class Following:
    """The choice a connection's view is of, and its requests since (module docstring).
    ``view`` is the ``follow`` of the connection's ``auth``."""

    __slots__ = ("reflected", "sent", "view")

    def __init__(self, view: Follow) -> None:
        self.view = view
        self.reflected = 0
        self.sent: list[Request] = []

    def __repr__(self) -> str:
        return f"Following({self.view!r}, reflected={self.reflected}, sent={self.sent!r})"

    @property
    def wanted(self) -> Follow:
        """The choice once every request sent is applied."""
        return apply_all(self.view, self.sent)

    def send(self, request: Request) -> None:
        """``request`` is written."""
        self.sent.append(request)

    def refused(self, applied: int) -> Request:
        """An ``error`` with ``applied`` refused a request: which (taken out).
        :class:`ValueError` when no request sent can be the one."""
        index = applied - self.reflected
        if not 0 <= index < len(self.sent):
            raise ValueError(
                f"an error refuses a request after {applied} applied, but {self.reflected} "
                f"are reflected and {len(self.sent)} more are waiting"
            )
        return self.sent.pop(index)

    def viewed(self, applied: int) -> Follow:
        """A snapshot or count with ``applied`` replaced the view: its choice.
        :class:`ValueError` when ``applied`` counts requests never sent."""
        done = applied - self.reflected
        if not 0 <= done <= len(self.sent):
            raise ValueError(
                f"a snapshot reflects {applied} requests, but {self.reflected} were and "
                f"{len(self.sent)} more are waiting"
            )
        self.view = apply_all(self.view, self.sent[:done])
        del self.sent[:done]
        self.reflected = applied
        return self.view

    def next(self) -> tuple[Following, list[Request]]:
        """For the next connection, which resumes the view: its :class:`Following`
        (``follow`` in its ``auth`` is ``view``), and the requests to send again once
        ``auth_ok`` came, in order (passing each to its :meth:`send`)."""
        return Following(self.view), list(self.sent)
