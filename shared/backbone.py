"""The backbone schema: every message between workers and the coordinator.

Theory of operation (after the ZeroMQ Guide's Clone pattern):

* **Events up.** Each worker holds one DEALER socket connected to the coordinator's
  ROUTER (the *events* endpoint). Its ZeroMQ routing id is its worker id and a token
  fresh per process (:func:`routing_id`), so the coordinator can answer one worker, and
  tell a second process claiming a worker id that another holds from the one that holds
  it (a ROUTER would silently ignore a second peer with the same routing id). Up go
  :class:`Hello`, :class:`Heartbeat`, :class:`Authed`, :class:`SetRecord`,
  :class:`Closed`, :class:`Goodbye`, :class:`SnapshotRequest`, :class:`Route` and
  :class:`Eject`.
  Messages from one worker arrive in the order it sent them; the coordinator applies
  all of them in one order.
* **Replies down, to one worker**, on the same ROUTER: :class:`Welcome`,
  :class:`Reannounce`, :class:`AuthAck`, :class:`Kick`, :class:`Deliver`, :class:`RouteDone`,
  :class:`Snapshot`, :class:`EjectSession`, :class:`EjectDone`, and :class:`Refused` to a
  process whose worker id is taken.
* **Results across, worker to worker**: the recipient's worker answers a
  :class:`Deliver` with a :class:`RouteDone` straight to the origin worker's *results*
  endpoint (a PULL socket it announced in :class:`Hello`), so a coordinator that stalls
  or dies between forwarding a message and hearing its result cannot turn a delivered
  message into a reported failure.
* **Numbered updates down, to every worker**, on the PUB socket (the *updates*
  endpoint): :class:`Update` (a net-effect delta, numbered ``seq`` within the
  coordinator's ``epoch``) and :class:`Beat` (liveness plus the latest ``seq``, so a
  worker that missed the last update notices the gap without waiting for the next one).

A worker subscribes first, then asks for a :class:`Snapshot`, then drops the updates at
or below its ``seq`` (the slow-joiner rule).

Two sequences number the updates. ``seq`` counts every update; ``mseq`` counts those
that change who is online (at least one joined or left key): an update that only
changes records takes the next ``seq`` and keeps ``mseq``. Protocol 1 clients are shown
``mseq`` alone (their updates are consecutive and never empty), protocol 2 clients
``seq``; the backbone's gap detection, stamps and acknowledgements use ``seq``.

Presence records (:mod:`shared.records`) travel as ``(status, data)`` strings, and
only where they differ from the default record: a message that lists keys or sessions
lists beside them the records of those that have another one (``records``), so a
lobby of protocol 1 clients, which all have the default, sends no more than before.

An ``epoch`` is a token chosen afresh by each coordinator start (:func:`new_epoch`);
sequence numbers from different epochs are never compared; how epochs order sessions
across coordinators is explained in :mod:`coordinator.lobby`.

Wire form: a message is a msgpack array ``[SCHEMA_VERSION, tag, field, ...]``, and a
ZeroMQ frame carries one message or a batch of them (a msgpack array of messages): each
process gathers what it sends to one peer during one turn of its loop into one frame
(:class:`Outbox`, at most :data:`MAX_BATCH` messages and :data:`MAX_BATCH_BYTES`), so
a busy backbone costs one ZeroMQ message per peer per turn, not one per message.
msgpack decodes to plain data only (never objects), and :func:`decode_batch` checks the
version, the tag, the field count and every field's type before building a message, so
a corrupt or foreign element is refused (and reported) on its own, never a crash.

No process modifies a message it made or received. Messages are frozen dataclasses,
except the two made or decoded once per event on the busiest paths, :class:`Authed`
and :class:`Update`: a frozen dataclass sets each field through
``object.__setattr__``, which costs more than the rest of making an ``Update``.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

import msgpack

from shared import records

SCHEMA_VERSION: Final = 8
"""Raised whenever a message changes shape (3: ``Update.at``; 4: frames may carry a
batch of messages; 5: ``Welcome.peers``; 6: ``Refused``, and a worker's routing id
carries a token of its process; 7: presence records and ``mseq``; 8: ``Eject``,
``EjectSession`` and ``EjectDone``, the backend API's kick), so processes of
different versions refuse each other's every message instead of misreading some."""


class BackboneDecodeError(ValueError):
    """A backbone frame that is not a message of this schema version."""


# ------------------------------------------------------------ worker -> coordinator


@dataclass(frozen=True, slots=True)
class Hello:
    """A worker (re)announces itself with every session it holds, so a restarted
    coordinator can rebuild the lobby from the workers. It is the whole truth about the
    worker: sessions the coordinator holds for it and it does not list have ended."""

    TAG: ClassVar[str] = "hello"
    worker: str
    epoch: str
    """The epoch the worker's replica follows ("" before any): a coordinator whose
    generation is not above it moves above it (see :mod:`coordinator.lobby`)."""
    results: str
    """The endpoint where this worker takes :class:`RouteDone` from other workers."""
    results_key: str
    """Its CURVE public key (Z85) when CURVE is on, else "": other workers connect to
    ``results`` with it, so only this worker can read what they send there."""
    sessions: list[tuple[int, str, str, int, bool]]
    """(connection id, public key, epoch, seq, acked) per session that sent ``Authed``:
    acked ones with the stamp of their ``AuthAck``, the others with the replica's
    ``(epoch, seq)`` when ``Authed`` was sent."""
    records: list[tuple[int, str, str]] = dataclasses.field(default_factory=list)
    """(connection id, status, data) of each of ``sessions`` whose record is not the
    default, so a restarted coordinator keeps records too."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    TAG: ClassVar[str] = "hb"
    worker: str


@dataclass(slots=True)  # not frozen, for speed alone (see the module's wire form)
class Authed:
    """Connection ``conn`` proved it holds ``key`` (signature verified by the worker);
    its session starts with the record ``(status, data)``."""

    TAG: ClassVar[str] = "authed"
    conn: int
    key: str
    status: str = records.DEFAULT_STATUS
    data: str = records.DEFAULT_DATA


@dataclass(frozen=True, slots=True)
class SetRecord:
    """The session of connection ``conn`` (as ``key``) changed its record. A session
    that is no longer the key's current one changes nothing."""

    TAG: ClassVar[str] = "setrec"
    conn: int
    key: str
    status: str
    data: str


@dataclass(frozen=True, slots=True)
class Closed:
    """Connection ``conn``, which had authenticated as ``key``, ended."""

    TAG: ClassVar[str] = "closed"
    conn: int
    key: str


@dataclass(frozen=True, slots=True)
class Goodbye:
    """The worker is stopping: drop all of its sessions now."""

    TAG: ClassVar[str] = "bye"
    worker: str


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    TAG: ClassVar[str] = "snapreq"


@dataclass(frozen=True, slots=True)
class Route:
    """A direct message from ``sender`` on the worker that sent this, to ``to``.

    ``route`` is chosen by the origin worker at random (unguessable: a result naming it
    is believed). ``deadline`` is the coordinator's wall clock after which the message
    is dropped wherever it is (the coordinator, the recipient's worker): the origin
    answers ``rejected``/``unavailable`` a little later, so a result produced before the
    deadline has time to come back (:mod:`shared.timings`)."""

    TAG: ClassVar[str] = "route"
    route: int
    sender: str
    to: str
    msg_id: str
    body: str
    deadline: float


@dataclass(frozen=True, slots=True)
class Eject:
    """The backend API was asked to close the session of ``key`` wherever it is (a
    kick); ``request`` is the asking worker's number for the answer (:class:`EjectDone`),
    ``reason`` the caller's words, for the logs."""

    TAG: ClassVar[str] = "eject"
    request: int
    key: str
    reason: str


# ------------------------------------------------------------ coordinator -> one worker


@dataclass(frozen=True, slots=True)
class Welcome:
    """The coordinator registered the worker. ``peers``: the CURVE public keys (Z85) of
    every worker it admits, the only ones whose results the worker's results socket
    takes (empty without CURVE: an ipc backbone is private to its user)."""

    TAG: ClassVar[str] = "welcome"
    epoch: str
    peers: list[str] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Reannounce:
    """The coordinator does not know this worker (it restarted, or it gave the worker
    up for dead): send ``Hello`` with every session again."""

    TAG: ClassVar[str] = "reannounce"


@dataclass(frozen=True, slots=True)
class AuthAck:
    """The session of ``conn`` is in the lobby as of update ``seq`` of ``epoch``:
    hold ``auth_ok`` until the replica has applied it."""

    TAG: ClassVar[str] = "authack"
    conn: int
    epoch: str
    seq: int


@dataclass(frozen=True, slots=True)
class Kick:
    """Close ``conn`` with 4002: its key authenticated on a newer connection."""

    TAG: ClassVar[str] = "kick"
    conn: int


@dataclass(frozen=True, slots=True)
class EjectSession:
    """Close ``conn`` with 4006 ``kicked`` (an :class:`Eject`): its close then removes the
    session from the lobby as any close does."""

    TAG: ClassVar[str] = "ejectsess"
    conn: int
    reason: str


EJECT_OUTCOMES: Final = ("kicked", "offline", "unavailable")
""":attr:`EjectDone.outcome`: the session was told to close; the key has no session; the
coordinator cannot tell now (it is rebuilding its lobby, or does not know the worker)."""


@dataclass(frozen=True, slots=True)
class EjectDone:
    """The answer to the origin worker's :class:`Eject` ``request``: one of
    :data:`EJECT_OUTCOMES`."""

    TAG: ClassVar[str] = "ejectdone"
    request: int
    outcome: str


@dataclass(frozen=True, slots=True)
class Deliver:
    """Write a :class:`Route`'s message to connection ``conn`` unless past ``deadline``,
    and answer the origin worker directly at ``reply_to`` with a :class:`RouteDone`
    (never through the coordinator, which may stall between the two)."""

    TAG: ClassVar[str] = "deliver"
    origin: str
    reply_to: str
    reply_key: str
    route: int
    conn: int
    sender: str
    msg_id: str
    body: str
    deadline: float


@dataclass(frozen=True, slots=True)
class RouteDone:
    """Final status of the origin worker's :class:`Route` ``route``: from the
    coordinator (``offline``, ``unavailable``) or from the recipient's worker on the
    results endpoint (``delivered``, ``offline``, ``rate_limited``)."""

    TAG: ClassVar[str] = "routedone"
    route: int
    status: str


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The lobby as of update ``seq`` (``mseq``): the online keys, sorted, and the
    ``(key, status, data)`` of those whose record is not the default."""

    TAG: ClassVar[str] = "snap"
    epoch: str
    seq: int
    mseq: int
    users: list[str]
    records: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Refused:
    """The coordinator ignores this process: another live process holds its worker id
    ``worker`` (two machines with one name). ``holder`` says where that one is from, for
    the log; the process may try again (its ``Hello``) once the holder is gone."""

    TAG: ClassVar[str] = "refused"
    worker: str
    holder: str


# ------------------------------------------------------------ coordinator -> all (PUB)


@dataclass(slots=True)  # not frozen, for speed alone (see the module's wire form)
class Update:
    """The net effect of one batching window: ``seq`` is the previous update's plus one;
    ``mseq`` is the previous one's plus one when ``joined`` or ``left`` is not empty,
    else the same. A key may be in both ``left`` and ``joined`` (a new session of it)."""

    TAG: ClassVar[str] = "upd"
    epoch: str
    seq: int
    mseq: int
    joined: list[str]
    left: list[str]
    at: float
    """The coordinator's wall clock when it published this update: a worker measures
    publication-to-written latency from it, on its estimate of that clock (no two
    machines' clocks need agree)."""
    updated: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(key, status, data): the new record of each key online before and after whose
    record changed (default or not)."""
    records: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
    """(key, status, data) of each ``joined`` key whose record is not the default."""


@dataclass(frozen=True, slots=True)
class Beat:
    """Liveness, the latest ``seq``, and the coordinator's wall clock ``at``: workers
    estimate their offset from it, so route deadlines need no synchronised clocks."""

    TAG: ClassVar[str] = "beat"
    epoch: str
    seq: int
    at: float


UpMessage = (
    Hello | Heartbeat | Authed | SetRecord | Closed | Goodbye | SnapshotRequest | Route | Eject
)
DownMessage = (
    Welcome
    | Reannounce
    | AuthAck
    | Kick
    | Deliver
    | RouteDone
    | Snapshot
    | Refused
    | EjectSession
    | EjectDone
)
PubMessage = Update | Beat
Message = UpMessage | DownMessage | PubMessage

_CLASSES: Final[tuple[type[Any], ...]] = typing.get_args(Message)


INSTANCE_SEPARATOR: Final = b"\x00"
"""Between the worker id and the process's token in a routing id (no worker id holds it:
a command line cannot)."""


def routing_id(worker: str) -> bytes:
    """The routing id of the DEALER of a worker process with id ``worker``: the id and a
    token fresh per process (the same across reconnections of the process)."""
    return worker.encode() + INSTANCE_SEPARATOR + secrets.token_hex(4).encode()


def split_routing_id(routing: bytes) -> tuple[str, str]:
    """(worker id, process token) of a routing id; the token is "" for a peer that gives
    its worker id alone (a test's stand-in)."""
    worker, _, token = routing.partition(INSTANCE_SEPARATOR)
    return worker.decode("utf-8", "replace"), token.decode("ascii", "replace")


EPOCH_DIGITS: Final = 20
MAX_GENERATION: Final = 10**19
"""Generations above this are refused (-1): a reported epoch can never push a
coordinator's past the fixed width (nanoseconds since 1970 reach it in the year 2286)."""


def new_epoch(above: int = -1) -> str:
    """A fresh epoch ``GENERATION-NONCE``: a generation above ``above`` (the start time
    in nanoseconds is the first guess, right unless a clock went back), fixed width so
    string order is generation order, and a random nonce so that two coordinators never
    share an epoch."""
    generation = min(max(time.time_ns(), above + 1), MAX_GENERATION)
    return f"{generation:0{EPOCH_DIGITS}d}-{secrets.token_hex(4)}"


def epoch_generation(epoch: str) -> int:
    """The generation of an epoch made by :func:`new_epoch`; -1 for anything else
    (which then ranks below every real epoch)."""
    generation, dash, nonce = epoch.partition("-")
    if not (dash and len(generation) == EPOCH_DIGITS and generation.isdigit()):
        return -1
    if len(nonce) != 8 or not all(c in "0123456789abcdef" for c in nonce):
        return -1
    value = int(generation)
    return value if value < MAX_GENERATION else -1


# ------------------------------------------------------------ codec


def encode(msg: Message) -> bytes:
    names = _FIELD_NAMES.get(type(msg))
    if names is None:  # once per type: dataclasses.fields() is slow for a hot path
        names = _FIELD_NAMES[type(msg)] = [f.name for f in dataclasses.fields(msg)]
    packed = _packb([SCHEMA_VERSION, msg.TAG, *[getattr(msg, n) for n in names]])
    assert isinstance(packed, bytes)
    return packed


_FIELD_NAMES: dict[type[Any], list[str]] = {}
_packer = msgpack.Packer(use_bin_type=True)
_packb = _packer.pack


def pack(frames: Sequence[bytes]) -> bytes:
    """One frame that carries the encoded messages ``frames`` (from :func:`encode`), in
    order: a single message as it is, several as a msgpack array of them (see
    :class:`Outbox`)."""
    if len(frames) == 1:
        return frames[0]
    header = _packer.pack_array_header(len(frames))
    assert isinstance(header, bytes)
    return header + b"".join(frames)


MAX_BATCH: Final = 1024
"""Messages in one batch frame at most."""
MAX_BATCH_BYTES: Final = 256 * 1024
"""Bytes of one batch frame at most (a larger message travels alone), far below the
smallest ``--max-message-bytes`` (1 MiB)."""

Sent = tuple[bytes, list[Message]]
"""A frame ready to send, with the messages it carries (to account for each if the
frame cannot be queued)."""


class Outbox:
    """Messages for one destination, gathered into one frame (:func:`pack`).

    A shell adds what it decides to send during one turn of its loop and sends the frame
    at the end of the turn: one ZeroMQ message (one wake-up of ZeroMQ's I/O thread, one
    write, one read on the other side) instead of one per message. Order is kept. The
    outbox never holds more than :data:`MAX_BATCH` messages or :data:`MAX_BATCH_BYTES`
    (a message past that goes out on its own): :meth:`add` returns the frames that
    must be sent at once, before anything added later."""

    __slots__ = ("_bytes", "_frames", "_messages")

    def __init__(self) -> None:
        self._frames: list[bytes] = []
        self._messages: list[Message] = []
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._messages)

    def add(self, msg: Message, frame: bytes | None = None) -> list[Sent]:
        """Queue ``msg`` (``frame``: its encoding, if the caller has it); returns the
        frames that are full and must be sent now, in order (usually none)."""
        if frame is None:
            frame = encode(msg)
        size = len(frame)
        ready: list[Sent] = []
        if self._frames and (
            self._bytes + size > MAX_BATCH_BYTES or len(self._frames) >= MAX_BATCH
        ):
            ready.append(self.take())
        self._frames.append(frame)
        self._messages.append(msg)
        self._bytes += size
        if self._bytes >= MAX_BATCH_BYTES:
            ready.append(self.take())
        return ready

    def take(self) -> Sent:
        """The frame of everything queued (empty the outbox; there must be something)."""
        sent = pack(self._frames), self._messages
        self._frames, self._messages, self._bytes = [], [], 0
        return sent


def decode(frame: bytes) -> Message:
    """Decode a frame that holds one message; raise :class:`BackboneDecodeError` for
    anything else."""
    return _from_raw(_unpack(frame))


def decode_batch(frame: bytes) -> tuple[list[Message], list[str]]:
    """Decode a frame of one message or a batch of them (:func:`pack`): the messages,
    in order, and why each element that is not a message of this schema was refused
    (the others are kept). A frame that is not msgpack at all is one refusal."""
    try:
        raw = _unpack(frame)
    except BackboneDecodeError as exc:
        return [], [str(exc)]
    if type(raw) is not list or not raw or type(raw[0]) is not list:
        try:
            return [_from_raw(raw)], []
        except BackboneDecodeError as exc:
            return [], [str(exc)]
    messages: list[Message] = []
    errors: list[str] = []
    for item in raw:
        try:
            messages.append(_from_raw(item))
        except BackboneDecodeError as exc:
            errors.append(str(exc))
    return messages, errors


def _unpack(frame: bytes) -> Any:
    try:
        return msgpack.unpackb(frame, raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise BackboneDecodeError(f"not msgpack: {exc}") from None


def _from_raw(raw: Any) -> Message:
    if type(raw) is not list or len(raw) < 2:
        raise BackboneDecodeError("not a message array")
    version, tag = raw[0], raw[1]
    if type(version) is not int or version != SCHEMA_VERSION:
        raise BackboneDecodeError(f"schema version {version!r}, expected {SCHEMA_VERSION}")
    shape = _SHAPES.get(tag) if type(tag) is str else None
    if shape is None:
        raise BackboneDecodeError(f"unknown tag {tag!r}")
    values = raw[2:]
    if len(values) != len(shape.checks):
        raise BackboneDecodeError(f"{tag}: {len(values)} fields, expected {len(shape.checks)}")
    try:
        if shape.scalars is not None:  # every field a plain type: one pass, no copy
            for value, (kind, what) in zip(values, shape.scalars, strict=True):
                if type(value) is not kind:  # exact: a bool is not an int here
                    raise _FieldTypeError(what)
            msg: Message = shape.cls(*values)
        else:
            msg = shape.cls(*[check(v) for check, v in zip(shape.checks, values, strict=True)])
    except _FieldTypeError as exc:
        raise BackboneDecodeError(f"{tag}: expected {exc}") from None
    return msg


class _FieldTypeError(Exception):
    """A field's value is not of its declared type (the message names the type)."""


Checker = Callable[[Any], Any]
_SCALARS: Final = (int, float, str, bool)


@dataclass(frozen=True, slots=True)
class _Shape:
    """How to check and build one message class, worked out once from its annotations:
    decoding is on every hot path, so types are not re-inspected per message."""

    cls: type[Any]
    checks: list[Checker]
    scalars: list[tuple[type[Any], str]] | None
    """``(type, description)`` per field when every field is a plain type (checked by
    ``type(value) is kind``), else ``None``."""

    @classmethod
    def of(cls, message: type[Any]) -> _Shape:
        hints = typing.get_type_hints(message)
        types = [hints[f.name] for f in dataclasses.fields(message)]
        scalars = None
        if all(t in _SCALARS for t in types):
            scalars = [(t, _describe(t)) for t in types]
        return cls(message, [_checker(t) for t in types], scalars)


def _checker(expected: Any) -> Checker:
    """A function that returns a value of type ``expected`` (int, str, list[X],
    tuple[X, ...]) in that shape (msgpack gives lists where the schema says tuple), or
    raises :class:`_FieldTypeError`."""
    origin = typing.get_origin(expected)
    if origin is list:
        (item,) = typing.get_args(expected)
        if item is str:  # the common case (lists of keys): one pass, no copy

            def str_list(value: Any) -> Any:
                if type(value) is not list or not all(type(v) is str for v in value):
                    raise _FieldTypeError("a list of str")
                return value

            return str_list
        each = _checker(item)
        return lambda value: [each(v) for v in _expect(value, list, "a list")]
    if origin is tuple:
        parts = [_checker(t) for t in typing.get_args(expected)]

        def as_tuple(value: Any) -> Any:
            if type(value) is not list or len(value) != len(parts):
                raise _FieldTypeError(f"a {len(parts)}-tuple")
            return tuple(check(v) for check, v in zip(parts, value, strict=True))

        return as_tuple
    what = _describe(expected)
    return lambda value: _expect(value, expected, what)


def _describe(kind: type[Any]) -> str:
    name = kind.__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _expect(value: Any, kind: type[Any], what: str) -> Any:
    if type(value) is not kind:  # exact: a bool is not an int here
        raise _FieldTypeError(what)
    return value


_SHAPES: Final[dict[str, _Shape]] = {cls.TAG: _Shape.of(cls) for cls in _CLASSES}
