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

import struct
from typing import Final

__all__ = ["SharedFrame"]

_TEXT: Final = 0x81
"""FIN and the Text opcode: the first header byte of every unfragmented Text frame
(no extension sets a reserved bit: shared frames go only where none is negotiated)."""
_BINARY: Final = 0x82
_SHORT: Final = struct.Struct("!BB")
_MEDIUM: Final = struct.Struct("!BBH")
_LONG: Final = struct.Struct("!BBQ")


class SharedFrame:
    """One Text frame (or Binary, for ``bytes``: protocol version 2's lobby frames):
    ``text``, its payload, and its serialized, unmasked, uncompressed bytes."""

    __slots__ = ("data", "text")

    def __init__(self, text: str | bytes) -> None:
        self.text = text
        if isinstance(text, str):
            first, payload = _TEXT, text.encode()
        else:
            first, payload = _BINARY, text
        # RFC 6455 5.2, unmasked: the length in 7 bits, or 126 and 16 bits, or 127 and
        # 64 bits (what websockets' Frame.serialize writes, without its per-call checks).
        length = len(payload)
        if length < 126:
            head = _SHORT.pack(first, length)
        elif length < 65536:
            head = _MEDIUM.pack(first, 126, length)
        else:
            head = _LONG.pack(first, 127, length)
        self.data = head + payload

    def __len__(self) -> int:
        return len(self.data)
