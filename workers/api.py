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
* ``GET /v1/lobby`` -> ``{"seq": N, "lastEventId": "EPOCH:SEQ", "users":
  [{"publicKey": KEY, "status": S, "data": {...}}, ...]}`` (sorted); ``lastEventId``
  names the last event (:mod:`shared.events`) the answer includes, where a consumer of
  the event stream continues from
* ``POST /v1/users:lookup`` with ``{"publicKeys": [KEY, ...]}`` (at most
  :data:`MAX_LOOKUP_KEYS`) -> ``{"seq": N, "lastEventId": ..., "users": [...]}``, one
  user answer per distinct key, in the order asked
* ``GET /v1/events`` -> the event stream (:class:`OpenStream`; :mod:`workers.feed`
  decides what each consumer is sent)
* ``POST /v1/users/{publicKey}:kick`` (body optional: ``{"reason": TEXT}``) -> the
  shell asks the coordinator (:class:`KickAsked`), then :meth:`BackendApi.kicked`

Every bad request gets a 400 naming its problem (``{"error": CODE, "detail": TEXT}``)
before anything is read from the replica. An answer is only given while it is the
truth: while the replica is not ``LIVE`` (starting, resyncing) or the worker cannot
hear its coordinator, every request gets ``503`` (``{"error": "unavailable"}``) and
the caller asks again, or another worker. Both reads happen in one step of the event
loop, so the users and the ``seq`` always belong together.

Only holders of the operator's bearer token get in: ``Authorization: Bearer TOKEN``,
compared in constant time (:func:`hmac.compare_digest`); anything else is ``401``
with ``WWW-Authenticate``, before the path is even looked at, so a stranger learns
nothing, not even which paths exist. The token comes from a file
(``--api-token-file``), never from the command line (other local users can read
command lines); the API refuses to start without one (:func:`load_token`).

:class:`BackendApi` maps one request to one :data:`Decision` (an :class:`Answer`, or
what to start); the worker's shell (:mod:`workers.apiserver`) reads the request, carries
the decision out and decides nothing.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Final

from shared import events, protocol, records, secretfile
from shared.options import (
    SettingsError,
    at_least,
    option,
    optional,
    port_number,
    positive,
    validate,
)
from shared.records import Record
from workers import feed
from workers.replica import ReplicaView, SyncState

API_PREFIX: Final = "/v1/"
USERS_PATH: Final = "/v1/users/"
LOBBY_PATH: Final = "/v1/lobby"
EVENTS_PATH: Final = "/v1/events"
LOOKUP_PATH: Final = "/v1/users:lookup"
KICK_SUFFIX: Final = ":kick"
MAX_LOOKUP_KEYS: Final = 1000
MAX_BODY_BYTES: Final = 128 * 1024
"""Bytes of a request body at most: a lookup of 1,000 keys takes about 67 KiB."""
MAX_REASON_BYTES: Final = 200
"""Bytes of UTF-8 of a kick's reason at most (it goes to the logs)."""


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
    events_ring_bytes: int = option(
        feed.RING_BYTES,
        "bytes of recent events kept to resume event-stream consumers from (GET "
        "/v1/events with Last-Event-ID), charged to --memory-budget",
        check=at_least(0),
    )
    events_ring_age: float = option(
        feed.RING_AGE, "seconds of recent events kept to resume consumers from", check=positive
    )
    events_max_consumers: int = option(
        feed.MAX_CONSUMERS,
        "event-stream consumers one worker serves at once (then 503 too_many_consumers)",
        check=at_least(1),
    )
    events_keepalive: float = option(
        feed.KEEPALIVE,
        "seconds of silence on the event stream before a keep-alive comment",
        check=positive,
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


ApiTokenError = secretfile.SecretFileError
"""The API token file is missing, unreadable, open to other users, or too weak."""


def load_token(path: str) -> bytes:
    """The bearer token in ``path``, by the rules of :func:`shared.secretfile.read`
    (surrounding whitespace stripped; refused with :class:`ApiTokenError` naming the
    file: unreadable, open to other users, empty, too long or short, not one line of
    visible ASCII)."""
    return secretfile.read(path, "--api-token-file")


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


def bad_request(error: str, detail: str) -> Answer:
    """A 400 naming the problem: ``{"error": CODE, "detail": TEXT}``."""
    return _json(HTTPStatus.BAD_REQUEST, {"error": error, "detail": detail})


@dataclass(frozen=True, slots=True)
class OpenStream:
    """Start the event stream for a consumer that last saw event ``after`` (None: it
    names none)."""

    after: tuple[str, int] | None


@dataclass(frozen=True, slots=True)
class KickAsked:
    """Ask the coordinator to close ``key``'s session, then answer with
    :meth:`BackendApi.kicked`."""

    key: str
    reason: str


Decision = Answer | OpenStream | KickAsked


UNAUTHORIZED: Final = _error(
    HTTPStatus.UNAUTHORIZED,
    "unauthorized",
    ("WWW-Authenticate", 'Bearer realm="presence"'),
)
UNAVAILABLE: Final = _error(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable", ("Retry-After", "1"))
NOT_FOUND: Final = _error(HTTPStatus.NOT_FOUND, "not_found")
NOT_ALLOWED: Final = _error(HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", ("Allow", "GET"))
NOT_ALLOWED_POST: Final = _error(
    HTTPStatus.METHOD_NOT_ALLOWED, "method_not_allowed", ("Allow", "POST")
)
BAD_KEY: Final = _error(HTTPStatus.BAD_REQUEST, "invalid_public_key")
BODY_TOO_LARGE: Final = bad_request(
    "body_too_large", f"a request body is at most {MAX_BODY_BYTES} bytes"
)
UNEXPECTED_BODY: Final = bad_request("unexpected_body", "a GET request has no body")
TOO_MANY_CONSUMERS: Final = _error(
    HTTPStatus.SERVICE_UNAVAILABLE, "too_many_consumers", ("Retry-After", "1")
)


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
        body: bytes = b"",
        last_event_id: str | None = None,
    ) -> Decision:
        """What to do for ``method path`` (``path`` without its query string), asked
        with the ``Authorization`` header ``authorization`` (``None`` when missing, or
        given more than once), the request's ``body`` and its ``Last-Event-ID`` header.

        ``reachable``: whether the worker hears its coordinator now; without it the
        replica may be stale and the answer is 503."""
        if not self.authorised(authorization):
            return UNAUTHORIZED
        key: str | None = None
        kick = False
        if path.startswith(USERS_PATH) and "/" not in path[len(USERS_PATH) :]:
            key = path[len(USERS_PATH) :]
            kick = key.endswith(KICK_SUFFIX)
            key = key.removesuffix(KICK_SUFFIX)
        elif path not in (LOBBY_PATH, EVENTS_PATH, LOOKUP_PATH):
            return NOT_FOUND
        if kick or path == LOOKUP_PATH:
            if method != "POST":
                return NOT_ALLOWED_POST
        elif method != "GET":
            return NOT_ALLOWED
        elif body:
            return UNEXPECTED_BODY
        if key is not None and not protocol.is_hex_key(key):
            return BAD_KEY
        decision: Decision | list[str] | None = None
        if path == EVENTS_PATH:
            decision = _stream(last_event_id)
        elif path == LOOKUP_PATH:
            decision = _lookup_keys(body)
        elif kick:
            decision = _kick(protocol.normalise_key(key or ""), body)
        if isinstance(decision, Answer):
            return decision  # a bad request
        if replica.sync is not SyncState.LIVE or not reachable:
            return UNAVAILABLE
        if isinstance(decision, OpenStream | KickAsked):
            return decision
        if isinstance(decision, list):
            return self._lookup(replica, decision)
        if key is None:
            return self._lobby(replica)
        key = protocol.normalise_key(key)
        return _json(HTTPStatus.OK, _user(replica, key, seq=True))

    @staticmethod
    def kicked(key: str, outcome: str) -> Answer:
        """The answer to a kick once the coordinator said ``outcome``
        (:data:`shared.backbone.EJECT_OUTCOMES`; ``None`` when it did not answer in
        time: 503)."""
        if outcome not in ("kicked", "offline"):
            return UNAVAILABLE
        return _json(HTTPStatus.OK, {"publicKey": key, "kicked": outcome == "kicked"})

    def _lookup(self, replica: ReplicaView, keys: list[str]) -> Answer:
        answer = {
            "seq": replica.mseq,
            "lastEventId": events.event_id(replica.epoch or "", replica.seq),
            "users": [_user(replica, key) for key in keys],
        }
        return _json(HTTPStatus.OK, answer)

    def _lobby(self, replica: ReplicaView) -> Answer:
        state = (replica.epoch, replica.seq)  # every update, records too
        if self._lobby_cache is None or self._lobby_cache[0] != state:
            record_of = replica.record_of
            users = [{"publicKey": key, **_record(record_of(key))} for key in sorted(replica.users)]
            last = events.event_id(replica.epoch or "", replica.seq)
            answer = _json(
                HTTPStatus.OK, {"seq": replica.mseq, "lastEventId": last, "users": users}
            )
            self._lobby_cache = (state, answer)
        return self._lobby_cache[1]


_DEFAULT_RECORD: Final[dict[str, object]] = {"status": records.DEFAULT_STATUS, "data": {}}


def _record(record: Record) -> dict[str, object]:
    """A record's fields in an answer: ``data`` as the JSON object it is."""
    if record == records.DEFAULT:
        return _DEFAULT_RECORD
    status, data = record
    return {"status": status, "data": json.loads(data)}


def _user(replica: ReplicaView, key: str, *, seq: bool = False) -> dict[str, object]:
    """One user's answer: online or not (with ``seq`` for a single lookup), and the
    record when online."""
    answer: dict[str, object] = {"publicKey": key, "online": key in replica.users}
    if seq:
        answer["seq"] = replica.mseq
    if answer["online"]:
        answer.update(_record(replica.record_of(key)))
    return answer


def _stream(last_event_id: str | None) -> OpenStream | Answer:
    if last_event_id is None or last_event_id == "":
        return OpenStream(None)
    try:
        return OpenStream(events.parse_event_id(last_event_id))
    except events.BadEventId as exc:
        return bad_request("invalid_last_event_id", str(exc))


def _json_body(body: bytes) -> object | Answer:
    try:
        obj: object = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        return bad_request("invalid_json", f"the body is not JSON: {exc}"[:300])
    return obj


def _lookup_keys(body: bytes) -> list[str] | Answer:
    """The distinct keys a lookup asks for, in order, or the 400 saying what is wrong."""
    obj = _json_body(body)
    if isinstance(obj, Answer):
        return obj
    if type(obj) is not dict or set(obj) != {"publicKeys"} or type(obj["publicKeys"]) is not list:
        return bad_request("invalid_body", 'the body must be {"publicKeys": [KEY, ...]}')
    given: list[object] = obj["publicKeys"]
    if len(given) > MAX_LOOKUP_KEYS:
        return bad_request(
            "too_many_keys", f"at most {MAX_LOOKUP_KEYS} keys per lookup, not {len(given)}"
        )
    for at, key in enumerate(given):
        if not protocol.is_hex_key(key):
            return bad_request(
                "invalid_public_key", f"publicKeys[{at}] is not 64 hexadecimal characters"
            )
    return list(dict.fromkeys(protocol.normalise_key(str(key)) for key in given))


def _kick(key: str, body: bytes) -> KickAsked | Answer:
    if not body:
        return KickAsked(key, "")
    obj = _json_body(body)
    if isinstance(obj, Answer):
        return obj
    if type(obj) is not dict or not set(obj) <= {"reason"}:
        return bad_request("invalid_body", 'the body must be empty or {"reason": TEXT}')
    reason = obj.get("reason", "")
    if type(reason) is not str or _reason_problem(reason):
        return bad_request(
            "invalid_reason",
            f"reason must be a string of at most {MAX_REASON_BYTES} bytes of UTF-8 without "
            "control characters",
        )
    return KickAsked(key, reason)


def _reason_problem(reason: str) -> bool:
    try:
        size = len(reason.encode("utf-8"))
    except UnicodeEncodeError:
        return True
    return size > MAX_REASON_BYTES or any(c < " " or "\x7f" <= c <= "\x9f" for c in reason)


# ------------------------------------------------------------------ reading a request

MAX_HEAD_BYTES: Final = 16 * 1024
"""Bytes of a request's line and headers at most: longer is not answered."""
_TOKEN: Final = frozenset(
    "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


@dataclass(frozen=True, slots=True)
class Head:
    """A request's line and headers (names in lowercase, in order, repeats kept)."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]

    def all(self, name: str) -> list[str]:
        return [value for key, value in self.headers if key == name]

    def one(self, name: str) -> str | None:
        """The header's value when given exactly once, else None."""
        values = self.all(name)
        return values[0] if len(values) == 1 else None


def parse_head(raw: bytes) -> Head | None:
    """The request line and headers of ``raw`` (up to the blank line, excluded); None
    for anything but an HTTP/1.1 or HTTP/1.0 request, which is not answered."""
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or parts[2] not in ("HTTP/1.1", "HTTP/1.0"):
        return None
    method, target = parts[0], parts[1]
    if not method or not _TOKEN.issuperset(method) or not target.startswith("/"):
        return None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or not name or not _TOKEN.issuperset(name):
            return None  # no colon, a folded line, a space before the colon
        headers.append((name.lower(), value.strip(" \t")))
    return Head(method, target.partition("?")[0], tuple(headers))


def body_length(head: Head) -> int | Answer:
    """How many bytes of body to read for ``head``, or the answer that refuses it
    without reading it (a body sent otherwise than with one ``Content-Length``, or one
    over :data:`MAX_BODY_BYTES`)."""
    if head.all("transfer-encoding"):
        return bad_request(
            "unsupported_transfer_encoding", "send a body with Content-Length, not chunked"
        )
    lengths = head.all("content-length")
    if not lengths:
        return 0
    if len(lengths) > 1 or not lengths[0].isdigit() or not lengths[0].isascii():
        return bad_request("invalid_content_length", "one Content-Length, a decimal number")
    if len(lengths[0]) > 9 or int(lengths[0]) > MAX_BODY_BYTES:
        return BODY_TOO_LARGE
    return int(lengths[0])
