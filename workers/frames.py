"""Pre-framed writes: a WebSocket frame built once, its bytes handed to many clients.

Theory of operation
-------------------
A lobby update is the same text for every client, and without compression the same
bytes on the wire: a server's frames are not masked (RFC 6455 5.1), so a Text frame is
a header that depends only on the payload's length, then the UTF-8 payload.
:func:`websockets.broadcast` nevertheless encodes and frames the message again for
every connection (``protocol.send_text`` then ``send_data``). :class:`SharedFrame`
builds the frame once, and :func:`~workers.wsinternals.write_all` hands the same
``bytes`` object to each client's transport, so a client costs one
``transport.write``. Several frames due at once (updates that queued up while the
worker was busy) go as one write of their concatenated bytes: the same bytes on the
wire as writing them one by one, one system call instead of several.

It keeps every guarantee of the normal path, because it only takes it where the normal
path would produce exactly these bytes and do exactly this write; that check reaches
into websockets' internals, so it lives with the rest of them
(:func:`workers.wsinternals.write_all`). A test (tests/workers/test_frames.py) checks the
bytes against websockets' own framing for every payload size class, and a differential
test against real connections checks that clients receive byte-identical, valid frames
either way.
"""

from __future__ import annotations

from websockets.frames import Frame, Opcode

__all__ = ["SharedFrame"]


class SharedFrame:
    """One Text frame (or Binary, for ``bytes``: protocol version 2's lobby frames):
    ``text``, its payload, and its serialized, unmasked, uncompressed bytes."""

    __slots__ = ("data", "text")

    def __init__(self, text: str | bytes) -> None:
        self.text = text
        if isinstance(text, str):
            frame = Frame(Opcode.TEXT, text.encode())
        else:
            frame = Frame(Opcode.BINARY, text)
        self.data = frame.serialize(mask=False, extensions=[])

    def __len__(self) -> int:
        return len(self.data)
