"""A fake worker: a coordinator's peer on the backbone, played from a test or a benchmark.

A real worker holds two backbone sockets (see :mod:`shared.backbone`): a DEALER to the
coordinator's ROUTER (the *events* endpoint), whose ZeroMQ routing id is its worker id,
and a SUB to its PUB (the *updates* endpoint). :class:`FakeWorker` holds the same two,
sends what its driver tells it to (messages, or raw frames to test what the coordinator
refuses), and decodes what comes back with :func:`shared.backbone.decode_batch`: a frame
may carry a batch of messages, which are then handed out one at a time. Nothing here
knows the wire format; everything goes through :mod:`shared.backbone`.

Every wait blocks on a socket with a timeout (``poll``), never sleeps. A frame that is not
a message of this schema raises :class:`~shared.backbone.BackboneDecodeError`: the
coordinator never sends one, so the test or the measurement is wrong.

This lives beside the scripts, not in ``shared``: the server never fakes a worker, and
only the benchmark (``scripts/coordinator_costs.py``) and the tests use it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import zmq

from shared import backbone as bb
from shared import curve

Context = zmq.Context[zmq.Socket[bytes]]


@dataclass(frozen=True)
class CurveClient:
    """A worker's CURVE key pair and the coordinator's public key, for a ``tcp://``
    backbone."""

    keys: curve.KeyPair
    server_public: bytes


def _socket(
    ctx: Context, kind: int, client: CurveClient | None, hwm: int | None
) -> zmq.Socket[bytes]:
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if hwm is not None:
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.RCVHWM, hwm)
    if client is not None:
        curve.make_client(sock, client.keys, client.server_public)
    return sock


def dealer(
    ctx: Context,
    name: str,
    events: str,
    *,
    client: CurveClient | None = None,
    hwm: int | None = None,
) -> zmq.Socket[bytes]:
    """A DEALER with the routing id ``name``, connected to ``events``."""
    sock = _socket(ctx, zmq.DEALER, client, hwm)
    sock.setsockopt(zmq.ROUTING_ID, name.encode())
    sock.connect(events)
    return sock


def subscriber(
    ctx: Context,
    updates: str,
    *,
    client: CurveClient | None = None,
    hwm: int | None = None,
) -> zmq.Socket[bytes]:
    """A SUB to everything published at ``updates`` (it receives nothing until its
    subscription has reached the PUB: the slow-joiner rule)."""
    sock = _socket(ctx, zmq.SUB, client, hwm)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(updates)
    return sock


def messages_of(frame: bytes) -> list[bb.Message]:
    """The messages of one frame from the coordinator, in order; raises
    :class:`~shared.backbone.BackboneDecodeError` if any element is refused."""
    messages, errors = bb.decode_batch(frame)
    if errors or not messages:
        raise bb.BackboneDecodeError(f"a frame the coordinator should not send: {errors}")
    return messages


def encoded_size(frame: bytes, messages: Sequence[bb.Message], msg: bb.Message) -> int:
    """The bytes of ``msg``, one of the ``messages`` of ``frame``: the frame itself when
    it carries ``msg`` alone (the coordinator sends a lone message as it is), else its
    encoding."""
    return len(frame) if len(messages) == 1 else len(bb.encode(msg))


class FakeWorker:
    """A worker's two backbone sockets: DEALER up (routing id = ``name``), and a SUB
    down when ``updates`` is given. ``client``: CURVE for a ``tcp://`` backbone;
    ``hwm``: both high-water marks of both sockets (ZeroMQ's default otherwise)."""

    def __init__(
        self,
        ctx: Context,
        name: str,
        events: str,
        updates: str | None = None,
        *,
        client: CurveClient | None = None,
        hwm: int | None = None,
    ) -> None:
        self.name = name
        self.sub = None if updates is None else subscriber(ctx, updates, client=client, hwm=hwm)
        self.dealer = dealer(ctx, name, events, client=client, hwm=hwm)
        self._waiting: dict[zmq.Socket[bytes], list[bb.Message]] = {}

    # ------------------------------------------------------------------ sending

    def send(self, msg: bb.Message) -> None:
        self.dealer.send(bb.encode(msg))

    def send_frame(self, frame: bytes) -> None:
        """Send bytes as they are (an encoded message, or anything at all)."""
        self.dealer.send(frame)

    def register(
        self,
        results: str = "",
        *,
        epoch: str = "",
        sessions: Sequence[tuple[int, str, str, int, bool]] = (),
        timeout: float = 5.0,
    ) -> bb.Welcome:
        """Say Hello as a worker whose results endpoint is ``results``; the Welcome."""
        self.send(bb.Hello(self.name, epoch, results, "", list(sessions)))
        welcome = self.reply(timeout)
        assert isinstance(welcome, bb.Welcome), f"{self.name}: {welcome!r}, not a Welcome"
        return welcome

    # ------------------------------------------------------------------ receiving

    def next_frame(self, timeout: float = 5.0) -> list[bb.Message]:
        """The messages of the next frame on the DEALER, whole (a batch stays one);
        not to be mixed with :meth:`reply`, which may hold a frame's rest."""
        assert not self._waiting.get(self.dealer), f"{self.name}: replies are waiting"
        return self._frame(self.dealer, timeout)

    def reply(self, timeout: float = 5.0) -> bb.Message:
        """The next message from the coordinator to this worker."""
        return self._next(self.dealer, timeout)

    def replies(self, timeout: float) -> Iterator[bb.Message]:
        """Every reply that arrives with at most ``timeout`` seconds between frames, one
        at a time as they come (the caller may answer in between)."""
        waiting = self._waiting.setdefault(self.dealer, [])
        while waiting or self.dealer.poll(int(timeout * 1000)):
            if not waiting:
                waiting.extend(messages_of(self.dealer.recv()))
            yield waiting.pop(0)

    def published(self, timeout: float = 5.0, skip_beats: bool = True) -> bb.Message:
        """The next message published to every worker (Beats skipped unless asked)."""
        assert self.sub is not None, f"{self.name} has no SUB socket"
        deadline = time.monotonic() + timeout
        while True:
            msg = self._next(self.sub, max(0.0, deadline - time.monotonic()))
            if not (skip_beats and isinstance(msg, bb.Beat)):
                return msg

    def wait_subscribed(self, timeout: float = 5.0) -> None:
        """Wait until the SUB is connected (the slow-joiner rule): a Beat arrives."""
        self.published(timeout=timeout, skip_beats=False)

    def no_reply(self, within: float) -> None:
        assert not self.dealer.poll(int(within * 1000)), f"{self.name}: unexpected reply"

    def drain_replies(self) -> None:
        """Forget every reply received so far."""
        self._drain(self.dealer)

    def drain_pub(self) -> None:
        """Forget everything published so far."""
        if self.sub is not None:
            self._drain(self.sub)

    def close(self) -> None:
        if self.sub is not None:
            self.sub.close(0)
        self.dealer.close(0)

    def _frame(self, sock: zmq.Socket[bytes], timeout: float) -> list[bb.Message]:
        if not sock.poll(int(timeout * 1000)):
            raise AssertionError(f"{self.name}: nothing received within {timeout}s")
        return messages_of(sock.recv())

    def _next(self, sock: zmq.Socket[bytes], timeout: float) -> bb.Message:
        """The next message (a frame may carry a batch of them: the rest wait here)."""
        waiting = self._waiting.setdefault(sock, [])
        if not waiting:
            waiting.extend(self._frame(sock, timeout))
        return waiting.pop(0)

    def _drain(self, sock: zmq.Socket[bytes]) -> None:
        self._waiting.pop(sock, None)
        while sock.poll(0):
            sock.recv()
