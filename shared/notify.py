"""Readiness notifications: the systemd ``sd_notify`` protocol, both ends, no dependency.

Theory of operation. A supervisor that wants to know when a process is serving creates
an ``AF_UNIX`` datagram socket and starts the process with its address in the
environment variable ``NOTIFY_SOCKET``: a filesystem path, or a name in Linux's abstract
namespace written with a leading ``@``. The process sends one datagram of
newline-separated ``KEY=VALUE`` assignments when its state changes: ``READY=1`` once it
serves (with ``STATUS=...``, a line for humans), ``STOPPING=1`` when it begins to shut
down. systemd is such a supervisor (a unit with ``Type=notify``), and so are
``scripts/cluster.py`` (``make run``), the load tester's server starter and the tests,
which therefore never have to recognise a log line to know that a process is up.

Sending is best effort: without ``NOTIFY_SOCKET`` it does nothing, and a supervisor that
is gone, slow or misconfigured costs a logged warning, never an exception or a blocked
event loop (the socket is non-blocking; a full queue drops the datagram).

:class:`Listener` is the supervisor's end, for Python supervisors (the launcher, the tests
and the load tester); :func:`send` is the sending end for one that reports a failure in
its own words (the launcher, when it tells its own supervisor).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import struct
import sys
import tempfile

from shared import logs

log = logging.getLogger("notify")

ENV = "NOTIFY_SOCKET"
_UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
MAX_DATAGRAM = 4096


def ready(status: str = "") -> None:
    """Tell the supervisor this process serves now (``READY=1``, and ``STATUS`` if given)."""
    notify("READY=1", status)


def stopping(status: str = "") -> None:
    """Tell the supervisor this process has begun to stop (``STOPPING=1``)."""
    notify("STOPPING=1", status)


def notify(state: str, status: str = "") -> None:
    """Send ``state`` (and ``STATUS=status`` when given) as one datagram to
    ``$NOTIFY_SOCKET``; a no-op when it is unset. Never raises: a failure is logged."""
    exc = send(state, status)
    if exc is not None:
        log.warning(
            "could not notify %s=%s of %s: %s",
            ENV,
            os.environ.get(ENV),
            state,
            exc,
            extra=logs.event("notify_failed", state=state, error=str(exc)),
        )


def send(state: str, status: str = "") -> OSError | ValueError | None:
    """Send ``state`` (and ``STATUS=status`` when given) as one datagram to
    ``$NOTIFY_SOCKET``, if it is set. Never raises: returns why it could not send
    (:class:`NotAnAddress` when the variable names no socket), else None."""
    target = os.environ.get(ENV)
    if not target:
        return None
    message = state
    if status:
        message += "\nSTATUS=" + " ".join(status.splitlines())
    try:
        address = _address(target)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            sock.sendto(message.encode("utf-8", "replace"), address)
    except (OSError, ValueError) as exc:
        return exc
    return None


class NotAnAddress(ValueError):
    """``NOTIFY_SOCKET`` is neither a path nor an ``@abstract`` name."""


def _address(target: str) -> str:
    """The socket address ``target`` (a ``NOTIFY_SOCKET`` value) names."""
    if target.startswith("@"):
        return "\0" + target[1:]
    if target.startswith("/"):
        return target
    raise NotAnAddress("not a path or an @abstract name (other forms are not supported)")


def parse(datagram: bytes) -> dict[str, str]:
    """The ``KEY=VALUE`` assignments of one notification (malformed lines are skipped)."""
    fields: dict[str, str] = {}
    for line in datagram.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if eq and key:
            fields[key] = value
    return fields


class Listener:
    """The supervisor's end: one datagram socket, for one child, to read its notifications.

    Give the child ``{NOTIFY_SOCKET: listener.address}`` in its environment, then call
    :meth:`receive` (which waits at most ``timeout``) in a loop with a deadline of your
    own, checking that the child still runs. On Linux the socket lives in the abstract
    namespace under a random name (nothing to clean up); elsewhere it is a file in a
    private temporary directory, removed by :meth:`close`.

    Only the child may speak. An abstract name has no permissions and is listed in
    ``/proc/net/unix`` for anyone to read, so on Linux the kernel attaches the sender's
    credentials to every datagram (``SO_PASSCRED``) and one from another user, or from
    another process than :attr:`pid` once it is set (the child's, by :meth:`expect`), is
    not taken: it goes to :attr:`ignored` as ``(pid, uid)``. Elsewhere the socket file's
    directory is mode 0700, which keeps other users out.
    """

    def __init__(self, *, in_file: bool = False, prefix: str = "presence-notify") -> None:
        """``in_file``: a socket file even on Linux, for a child in another network
        namespace (abstract sockets belong to the namespace they were made in);
        ``prefix``: the start of the abstract name (who listens, for ``ss -x``)."""
        self.received: list[dict[str, str]] = []
        self.ignored: list[tuple[int, int]] = []
        """``(pid, uid)`` of each datagram not taken (see the class docstring)."""
        self.pid: int | None = None
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._dir: str | None = None
        self._creds = hasattr(socket, "SO_PASSCRED") and hasattr(socket, "SCM_CREDENTIALS")
        if self._creds:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        name = f"{prefix}-{os.getpid()}-{secrets.token_hex(8)}"
        try:
            if sys.platform.startswith("linux") and not in_file:
                self._sock.bind("\0" + name)
                self.address = "@" + name
            else:
                self._dir = tempfile.mkdtemp(prefix="notify-")
                self.address = os.path.join(self._dir, "sock")
                self._sock.bind(self.address)
        except OSError:
            self.close()
            raise

    def receive(self, timeout: float) -> list[dict[str, str]]:
        """Notifications that arrive within ``timeout`` seconds (the first one ends the
        wait, and everything queued behind it is taken too); also kept in
        :attr:`received`. An empty list when none came."""
        got: list[dict[str, str]] = []
        self._sock.settimeout(max(timeout, 0.0))
        try:
            while True:
                datagram = self._take()
                if datagram is not None:
                    got.append(parse(datagram))
                self._sock.settimeout(0.0)
        except (BlockingIOError, TimeoutError):
            pass
        self.received += got
        return got

    def expect(self, pid: int) -> None:
        """From now on take notifications from process ``pid`` alone (the child)."""
        self.pid = pid

    def _take(self) -> bytes | None:
        """One datagram, or None when its sender may not speak (then in :attr:`ignored`)."""
        if not self._creds:
            return self._sock.recv(MAX_DATAGRAM)
        data, ancillary, _, _ = self._sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(_UCRED.size))
        sender: tuple[int, int] | None = None
        for level, kind, value in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid, uid, _gid = _UCRED.unpack_from(value)
                sender = (pid, uid)
        if sender is None:
            self.ignored.append((0, -1))
            return None
        pid, uid = sender
        if uid != os.getuid() or (self.pid is not None and pid != self.pid):
            self.ignored.append(sender)
            return None
        return data

    def fileno(self) -> int:
        """The socket's descriptor, to wait for notifications in an event loop (then
        :meth:`receive` with a timeout of 0 takes them without blocking)."""
        return self._sock.fileno()

    def count(self, key: str = "READY") -> int:
        """How many of the notifications received so far set ``key=1``."""
        return sum(n.get(key) == "1" for n in self.received)

    def close(self) -> None:
        """Close the socket (and remove its directory, where there is one). Idempotent."""
        self._sock.close()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
