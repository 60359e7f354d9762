"""A WebSocket flooder as its own process, for the control-frame abuse tests.

It opens a connection to a worker (and authenticates with a fresh key with ``--auth``),
prints ``FLOODING``, then sends 125-byte pings (``--kind``: or unsolicited 125-byte
pongs, a message that never ends in 1-byte fragments, or tiny whole messages) as fast
as the socket takes them while reading what comes back at ``--read-rate`` bytes a
second: a trickle, so that the
server always sees some reading progress. The flood ends when the server drops the
connection (a send fails) or after ``--seconds``; then it reads whatever is left (up to
``--drain`` seconds) and prints one line::

    RESULT close=<code or none> ended=<s> pongs=<n> last_answered=<s> sent=<bytes>

``ended``: seconds from the first ping to the end of the TCP connection as the flooder
saw it (a failed send or the end of the stream), or ``none`` if it was still open when
the flood phase ended. ``last_answered``: when the last ping that got a pong before the
close frame was sent, in seconds from the first (each ping carries its send time), so
the server decided to close at most a few pings after it. Frames are built and parsed
here, by hand, so that the flooder sends exactly what the test needs and nothing else
(no keepalive of its own, no automatic answers).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import select
import socket
import struct
import sys
import threading
import time

from nacl.signing import SigningKey

from shared import protocol

CONT, TEXT, CLOSE, PING, PONG = 0x0, 0x1, 0x8, 0x9, 0xA
PAYLOAD = 125  # the largest control frame payload RFC 6455 allows


def masked(opcode: int, payload: bytes, *, fin: bool = True) -> bytes:
    """One client frame (masked, payload below 126 bytes or 16-bit length)."""
    mask = os.urandom(4)
    size = len(payload)
    head = bytes([(0x80 if fin else 0) | opcode])
    head += bytes([0x80 | size]) if size < 126 else bytes([0x80 | 126]) + struct.pack("!H", size)
    key = (mask * (size // 4 + 1))[:size]
    body = (int.from_bytes(payload, "big") ^ int.from_bytes(key, "big")).to_bytes(size, "big")
    return head + mask + body


class Frames:
    """Server frames (never masked) parsed from a byte stream as it arrives."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buffer += data
        frames = []
        while len(self.buffer) >= 2:
            opcode, size, at = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if size == 126:
                if len(self.buffer) < 4:
                    break
                size, at = struct.unpack_from("!H", self.buffer, 2)[0], 4
            elif size == 127:
                if len(self.buffer) < 10:
                    break
                size, at = struct.unpack_from("!Q", self.buffer, 2)[0], 10
            if len(self.buffer) < at + size:
                break
            frames.append((opcode, bytes(self.buffer[at : at + size])))
            del self.buffer[: at + size]
        return frames


def handshake(sock: socket.socket, port: int) -> bytes:
    """Upgrade; returns the bytes read past the response's head."""
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise SystemExit("connection closed during the handshake")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"upgrade refused: {head.splitlines()[0]!r}")
    return rest


def next_text(sock: socket.socket, frames: Frames, pending: list[tuple[int, bytes]]) -> dict:
    """The next text frame, decoded (control frames before it are skipped)."""
    while True:
        while pending:
            opcode, payload = pending.pop(0)
            if opcode == TEXT:
                decoded: dict = json.loads(payload)
                return decoded
            if opcode == CLOSE:
                raise SystemExit(f"closed before authentication: {payload[:2].hex()}")
        chunk = sock.recv(65536)
        if not chunk:
            raise SystemExit("connection closed before authentication")
        pending.extend(frames.feed(chunk))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--auth", action="store_true", help="authenticate first")
    parser.add_argument("--seconds", type=float, default=10.0, help="longest flood")
    parser.add_argument("--read-rate", type=float, default=2048.0, help="bytes a second")
    parser.add_argument("--drain", type=float, default=5.0, help="seconds to read the rest")
    parser.add_argument("--kind", choices=("ping", "pong", "fragment", "tiny"), default="ping")
    args = parser.parse_args()

    sock = socket.create_connection(("127.0.0.1", args.port))
    frames = Frames()
    pending = frames.feed(handshake(sock, args.port))
    challenge = next_text(sock, frames, pending)
    if args.auth:
        key = SigningKey.generate()
        signature = key.sign(protocol.signed_payload(challenge["nonce"])).signature.hex()
        public = key.verify_key.encode().hex()
        auth = {"type": "auth", "publicKey": public, "signature": signature}
        sock.sendall(masked(TEXT, json.dumps(auth).encode()))
        assert next_text(sock, frames, pending)["type"] == "auth_ok"
        assert next_text(sock, frames, pending)["type"] == "lobby_snapshot"
    # What was read past the handshake stays in ``pending`` (for the count below).

    start = time.monotonic()
    ended: list[float] = []
    sent = [0]
    stop = threading.Event()

    def frame() -> bytes:
        if args.kind == "ping":
            stamp = struct.pack("!d", time.monotonic() - start)
            return masked(PING, stamp + b"p" * (PAYLOAD - 8))
        if args.kind == "pong":
            return masked(PONG, b"p" * PAYLOAD)
        if args.kind == "fragment":
            return masked(CONT, b"x", fin=False)
        return masked(TEXT, b"{}")  # "tiny": whole (tiny, malformed) messages

    def flood() -> None:
        if args.kind == "fragment":  # one message that never ends, a byte a frame
            sock.sendall(masked(TEXT, b"x", fin=False))
        try:
            while not stop.is_set():
                batch = b"".join(frame() for _ in range(256))
                sock.sendall(batch)
                sent[0] += len(batch)
        except OSError:
            ended.append(time.monotonic() - start)

    print("FLOODING", flush=True)
    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    received: list[tuple[int, bytes]] = list(pending)
    read = 0
    eof = False
    deadline = start + args.seconds
    while not ended and not eof and time.monotonic() < deadline:
        allowed = int(args.read_rate * (time.monotonic() - start)) - read
        ready, _, _ = select.select([sock], [], [], 0.05)  # paces the trickle
        if ready and allowed > 0:
            try:
                chunk = sock.recv(min(allowed, 65536))
            except OSError:
                chunk = b""
            if not chunk:
                eof = True
                ended.append(time.monotonic() - start)
            read += len(chunk)
            received += frames.feed(chunk)
    stop.set()
    drain_until = time.monotonic() + args.drain
    while not eof and time.monotonic() < drain_until:
        ready, _, _ = select.select([sock], [], [], 0.05)
        if ready:
            try:
                chunk = sock.recv(65536)
            except OSError:
                chunk = b""
            eof = not chunk
            received += frames.feed(chunk)
    sock.close()
    sender.join(2)

    close, pongs, last = "none", 0, "none"
    for opcode, payload in received:
        if opcode == PONG:
            pongs += 1
            last = f"{struct.unpack_from('!d', payload)[0]:.3f}"
        elif opcode == CLOSE:
            close = str(struct.unpack_from("!H", payload)[0]) if len(payload) >= 2 else "1005"
            break
    end = f"{ended[0]:.3f}" if ended else "none"
    print(
        f"RESULT close={close} ended={end} pongs={pongs} last_answered={last} sent={sent[0]}",
        flush=True,
    )


if __name__ == "__main__":
    sys.exit(main())
