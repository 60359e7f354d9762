"""The backend API: "is this user online?" and "who is online?" over plain HTTP (sans-I/O).

Theory of operation
-------------------
A product's own server asks these questions without being a WebSocket client (to decide
whether to send a push notification, say). Every worker can answer them from its
replica of the lobby, which is the coordinator's lobby exactly as of the replica's
``seq``; so the API is served by the workers, on a port of its own (``--api-port``,
shared by all workers through SO_REUSEPORT like the public one), and each answer names
the ``seq`` it is exact as of (protocol 1's: the replica's ``mseq``, which a change of
records alone leaves as it is):

* ``GET /v1/users/{publicKey}`` -> ``{"publicKey": KEY, "online": BOOL, "seq": N}``,
  and the user's ``"status"`` and ``"data"`` (a JSON object) when online
* ``GET /v1/lobby`` -> ``{"seq": N, "users": [{"publicKey": KEY, "status": S,
  "data": {...}}, ...]}`` (sorted)

An answer is only given while it is the truth: while the replica is not ``LIVE``
(starting, resyncing) or the worker cannot hear its coordinator, every request gets
``503`` (``{"error": "unavailable"}``) and the caller asks again, or another worker.
Both reads happen in one step of the event loop, so the users and the ``seq`` always
belong together.

Only holders of the operator's bearer token get in: ``Authorization: Bearer TOKEN``,
compared in constant time (:func:`hmac.compare_digest`); anything else is ``401``
with ``WWW-Authenticate``, before the path is even looked at, so a stranger learns
nothing, not even which paths exist. The token comes from a file
(``--api-token-file``), never from the command line (other local users can read
command lines); the API refuses to start without one (:func:`load_token`).

:class:`BackendApi` maps one request to one :class:`Answer`; the worker's shell carries
it out with websockets' HTTP machinery and decides nothing.
"""

from __future__ import annotations

import hmac
import json
import os
import stat
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from shared import protocol, records
from shared.options import SettingsError, option, optional, port_number, validate
from shared.records import Record
from workers.replica import ReplicaView, SyncState

API_PREFIX: Final = "/v1/"
USERS_PATH: Final = "/v1/users/"
LOBBY_PATH: Final = "/v1/lobby"
MIN_TOKEN_CHARS: Final = 16
"""A shorter token could be guessed; ``openssl rand -hex 32`` makes a good one."""
MAX_TOKEN_BYTES: Final = 4096


def _port_or_off(text: str) -> int | None:
    """A port number; ``off`` (or nothing) leaves the API off."""
    return None if text.strip().lower() in ("", "off", "none") else int(text)


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiOptions:
    """Where the backend API listens, and the token that opens it."""

    api_port: int | None = option(
        None,
        "port of the backend API (GET /v1/users/KEY, GET /v1/lobby; docs/API.md), shared "
        "by every worker; needs --api-token-file. Off by default",
        parse=_port_or_off,
        check=optional(port_number),
        shown="off",
    )
    api_host: str | None = option(
        None,
        "interface the backend API listens on (keep it off the public network)",
        shown="the --host of the public port",
    )
    api_token_file: str | None = option(
        None,
        "file holding the API's bearer token (at least 16 characters, one line; readable "
        "only by this user): the API never starts without one",
    )

    def __post_init__(self) -> None:
        validate(self)
        if self.api_port is not None and self.api_token_file is None:
            raise SettingsError(
                "--api-port needs --api-token-file: the backend API never starts without a token"
            )

    @property
    def enabled(self) -> bool:
        return self.api_port is not None


class ApiTokenError(Exception):
    """The API token file is missing, unreadable, open to other users, or too weak."""


def load_token(path: str) -> bytes:
    """The bearer token in ``path`` (surrounding whitespace stripped).

    Refused (:class:`ApiTokenError` naming the file): a file that cannot be read, that
    other users could read or write (mode bits for group or others: chmod 600 it), that
    is empty, longer than 4 KiB, shorter than 16 characters, or not one line of visible
    ASCII (what an HTTP header can carry)."""
    name = f"--api-token-file {path}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise ApiTokenError(f"{name}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ApiTokenError(f"{name} is not a regular file")
        if info.st_mode & 0o077:
            raise ApiTokenError(
                f"{name} is open to other users (mode {stat.S_IMODE(info.st_mode):04o}); "
                "chmod 600 it"
            )
        raw = os.read(fd, MAX_TOKEN_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_TOKEN_BYTES:
        raise ApiTokenError(f"{name} is longer than {MAX_TOKEN_BYTES} bytes")
    token = raw.strip()
    if not token:
        raise ApiTokenError(f"{name} is empty")
    if any(not 0x21 <= b <= 0x7E for b in token):
        raise ApiTokenError(f"{name} must hold one line of visible ASCII characters")
    if len(token) < MIN_TOKEN_CHARS:
        raise ApiTokenError(
            f"{name} holds {len(token)} characters; at least {MIN_TOKEN_CHARS} are needed "
            "(openssl rand -hex 32 makes a good token)"
        )
    return token


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP response: status, JSON body (already encoded) and extra headers."""

    status: HTTPStatus
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json(status: HTTPStatus, value: object, *headers: tuple[str, str]) -> Answer:
    return Answer(status, json.dumps(value, separators=(",", ":")).encode() + b"\n", headers)


def _error(status: HTTPStatus, error: str, *headers: tuple[str, str]) -> Answer:
    return _json(status, {"error": error}, *headers)


UNAUTHORIZED: Final = _error(
    HTTPStatus.UNAUTHORIZED,
    "unauthorized",
    ("WWW-Authenticate", 'Bearer realm="presence"'),
)
UNAVAILABLE: Final = _error(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", ("Retry-After", "1"))
NOT_FOUND: Final = _error(HTTPStatus.NOT_FOUND, "not_found")
NOT_ALLOWED: Final = _error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", ("Allow", "GET"))
BAD_KEY: Final = _error(HTTPStatus.BAD_REQUEST, "invalid_public_key")


class BackendApi:
    """Answers API requests from a replica view; holds the token and a cache of the
    last ``/v1/lobby`` body (one encoding per ``seq``, however many callers ask)."""

    __slots__ = ("_expected", "_lobby_cache")

    def __init__(self, token: bytes) -> None:
        self._expected = b"Bearer " + token
        self._lobby_cache: tuple[tuple[str | None, int], Answer] | None = None

    def authorised(self, authorization: str | None) -> bool:
        """Whether the ``Authorization`` header carries the token (constant time in
        the token's content; a missing header is simply refused)."""
        if authorization is None:
            return False
        try:
            given = authorization.encode("ascii")
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(given, self._expected)

    def answer(
        self,
        method: str,
        path: str,
        authorization: str | None,
        replica: ReplicaView,
        *,
        reachable: bool,
    ) -> Answer:
        """The answer to ``method path`` (``path`` without its query string), asked
        with the ``Authorization`` header ``authorization`` (``None`` when missing, or
        given more than once).

        ``reachable``: whether the worker hears its coordinator now; without it the
        replica may be stale and the answer is 503."""
        if not self.authorised(authorization):
            return UNAUTHORIZED
        key: str | None = None
        if path.startswith(USERS_PATH) and "/" not in path[len(USERS_PATH) :]:
            key = path[len(USERS_PATH) :]
        elif path != LOBBY_PATH:
            return NOT_FOUND
        if method != "GET":
            return NOT_ALLOWED
        if key is not None and not protocol.is_hex_key(key):
            return BAD_KEY
        if replica.sync is not SyncState.LIVE or not reachable:
            return UNAVAILABLE
        if key is None:
            return self._lobby(replica)
        key = protocol.normalise_key(key)
        answer: dict[str, object] = {"publicKey": key, "online": key in replica.users}
        answer["seq"] = replica.mseq
        if answer["online"]:
            answer.update(_record(replica.record_of(key)))
        return _json(HTTPStatus.OK, answer)

    def _lobby(self, replica: ReplicaView) -> Answer:
        state = (replica.epoch, replica.seq)  # every update, records too
        if self._lobby_cache is None or self._lobby_cache[0] != state:
            record_of = replica.record_of
            users = [{"publicKey": key, **_record(record_of(key))} for key in sorted(replica.users)]
            answer = _json(HTTPStatus.OK, {"seq": replica.mseq, "users": users})
            self._lobby_cache = (state, answer)
        return self._lobby_cache[1]


_DEFAULT_RECORD: Final[dict[str, object]] = {"status": records.DEFAULT_STATUS, "data": {}}


def _record(record: Record) -> dict[str, object]:
    """A record's fields in an answer: ``data`` as the JSON object it is."""
    if record == records.DEFAULT:
        return _DEFAULT_RECORD
    status, data = record
    return {"status": status, "data": json.loads(data)}
