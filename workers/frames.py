"""Pre-framed writes: a WebSocket frame built once, its bytes handed to many clients.

Theory of operation
-------------------
A lobby update is the same text for every client, and without compression the same
bytes on the wire: a server's frames are not masked (RFC 6455 5.1), so a Text frame is
a header that depends only on the payload's length, then the UTF-8 payload.
:func:`websockets.broadcast` nevertheless encodes and frames the message again for
every connection (``protocol.send_text`` then ``send_data``). :class:`SharedFrame`
builds the frame once, and :func:`write_all` hands the same ``bytes`` object to each
client's transport, so a client costs one ``transport.write``. Several frames due at
once (updates that queued up while the worker was busy) go as one write of their
concatenated bytes: the same bytes on the wire as writing them one by one, one system
call instead of several.

It keeps every guarantee of the normal path, because it only takes it where the normal
path would produce exactly these bytes and do exactly this write:

* only connections whose protocol is ``OPEN`` get anything (as ``broadcast`` does:
  one that is closing is skipped);
* never in the middle of another message: a connection sending a fragmented message
  (``send_in_progress``), or whose protocol expects a continuation frame, or still
  holds unsent protocol output (``writes``), takes the normal path, which skips or
  orders it exactly as before;
* a connection with extensions (permessage-deflate) frames differently: normal path;
* when websockets logs frames (its logger at DEBUG), the normal path, so the log shows
  every frame as before.

Backpressure and lag accounting are untouched: the bytes go into the same transport
buffer, whose size the worker reads and whose high-water mark pauses the same
protocol (``pause_writing``). A test (tests/workers/test_frames.py) checks the bytes
against websockets' own framing for every payload size class, and a differential test
against real connections checks that clients receive byte-identical, valid frames
either way.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.frames import Frame, Opcode
from websockets.protocol import State

__all__ = ["SharedFrame", "write_all"]

_OPEN: Final = State.OPEN


class SharedFrame:
    """One Text frame: ``text`` and its serialized, unmasked, uncompressed bytes."""

    __slots__ = ("data", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = Frame(Opcode.TEXT, text.encode()).serialize(mask=False, extensions=[])

    def __len__(self) -> int:
        return len(self.data)


def takes_shared(ws: ServerConnection) -> bool:
    """Whether writing a shared frame's bytes to ``ws``'s transport is exactly what
    ``broadcast()`` would do for it (see the module docstring)."""
    protocol = ws.protocol
    return not (
        protocol.extensions
        or protocol.writes
        or protocol.expect_continuation_frame
        or protocol.debug
        or ws.send_in_progress is not None
    )


def write_all(connections: Iterable[ServerConnection], frames: Sequence[SharedFrame]) -> int:
    """Write ``frames``, in order, to every open connection of ``connections``,
    synchronously: the shared bytes where they are exactly right (several frames as
    one write of their concatenated bytes, which is what writing them one after the
    other puts on the wire), and ``broadcast()`` of each elsewhere. Returns how many
    connections took the shared bytes.

    This loop runs once per client per lobby update, so :func:`takes_shared` is
    inlined and the protocol's state read without its property (a tenth of the loop's
    cost); ``tests/workers/test_frames.py`` pins both to websockets' behaviour."""
    if not frames:
        return 0
    shared = 0
    data = frames[0].data if len(frames) == 1 else b"".join(f.data for f in frames)
    normal: list[ServerConnection] = []
    for ws in connections:
        protocol = ws.protocol
        if protocol._state is not _OPEN:
            continue
        if (
            protocol.extensions
            or protocol.writes
            or protocol.expect_continuation_frame
            or protocol.debug
            or ws.send_in_progress is not None
        ):
            normal.append(ws)
        else:
            ws.transport.write(data)
            shared += 1
    for frame in frames if normal else ():
        broadcast(normal, frame.text)
    return shared
