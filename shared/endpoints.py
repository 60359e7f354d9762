"""Where the backbone listens, and who else on this machine can reach it.

By default both backbone sockets live under a private directory (mode 0700) named
after the public port, so two clusters on different ports on one machine never
collide and no other local user can connect. ``tcp://`` endpoints can be given
instead so that workers on other machines can join (with CURVE, see
:mod:`shared.curve`).

A local attacker must not be able to slip in between: every process checks the
directory of each ``ipc://`` endpoint it uses before it binds or connects
(:func:`check_private_dir`): owned by this user, a real directory (not a symlink),
closed to other users (no group or other permission bits), and every directory above
it owned by this user or root and not writable by others unless sticky (``/tmp``), so
nobody can swap it for their own. A directory that fails is refused with
:class:`UnsafeDirectory` naming it; nothing is ever chmod-ed or created except the
default directories, which are created private.

Where the default directory is: under ``$PRESENCE_RUNTIME_DIR`` when set (the launcher
sets it for its children, so that they all agree), else under ``$XDG_RUNTIME_DIR``,
else under ``/tmp/presence-UID``. Anyone can create that last one first (``/tmp`` is
writable by all, and sticky, so its owner alone can remove it): then a process does not
give up but takes a private directory of its own, ``/tmp/presence-UID-XXXXXXXX``, the
first such one that is safe (owned by this user, mode 0700) or a new one, and says so
(:func:`fallback_notice`). Every process of the cluster picks the same one that way, and
the launcher picks it once for all its children. One coordinator per endpoint: the
coordinator holds an exclusive lock (:class:`Lock`) beside its events socket for its
whole life, so a second one fails at start instead of silently taking over the sockets.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import math
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from shared import defaults, logs
from shared.options import at_least, option, validate

if TYPE_CHECKING:
    import zmq

log = logging.getLogger("endpoints")

DEFAULT_PORT = defaults.PORT
DEFAULT_HOST = defaults.HOST


@dataclass(frozen=True, slots=True)
class Endpoints:
    events: str  # coordinator ROUTER <- worker DEALERs
    updates: str  # coordinator PUB -> worker SUBs


RUNTIME_ENV = "PRESENCE_RUNTIME_DIR"
"""The directory the processes of one cluster share, set by the launcher."""


def runtime_dir(port: int) -> Path:
    """The private directory for the ipc endpoints of the cluster on ``port``."""
    return runtime_base() / f"presence-{port}"


def runtime_base() -> Path:
    """Where the default directories live: see the module docstring. Without
    ``$PRESENCE_RUNTIME_DIR`` and ``$XDG_RUNTIME_DIR`` this creates ``/tmp/presence-UID``
    (mode 0700) when it is missing, or a private directory of this user's when another
    user holds that name (:func:`fallback_notice` then says which and why)."""
    given = os.environ.get(RUNTIME_ENV) or os.environ.get("XDG_RUNTIME_DIR")
    if given:
        return Path(given)
    return _private_base(tempfile.gettempdir(), os.getuid())[0]


def fallback_notice() -> str | None:
    """Why the default directory is not ``/tmp/presence-UID`` and where it is instead
    (for the log), or None when it is (or when an environment variable chose it)."""
    if os.environ.get(RUNTIME_ENV) or os.environ.get("XDG_RUNTIME_DIR"):
        return None
    return _private_base(tempfile.gettempdir(), os.getuid())[1]


@functools.cache
def _private_base(tmp: str, uid: int) -> tuple[Path, str | None]:
    """``tmp/presence-UID``, made private when missing, if it is safe; else the first
    safe ``tmp/presence-UID-*`` or a new one (made by :func:`tempfile.mkdtemp`, mode
    0700), with the reason. Worked out once per process."""
    default = Path(tmp) / f"presence-{uid}"
    _make_private(default)
    try:
        check_private_dir(default)
        return default, None
    except UnsafeDirectory as exc:
        why = str(exc)
    for candidate in sorted(Path(tmp).glob(f"presence-{uid}-*")):
        try:
            check_private_dir(candidate)
        except (UnsafeDirectory, OSError):
            continue  # another user's, or not private: never ours to use
        chosen = candidate
        break
    else:
        chosen = Path(tempfile.mkdtemp(prefix=f"presence-{uid}-", dir=tmp))
    return chosen, f"{why}; using the private directory {chosen} instead"


def default_endpoints(port: int) -> Endpoints:
    directory = runtime_dir(port)
    return Endpoints(events=f"ipc://{directory}/events", updates=f"ipc://{directory}/updates")


class UnsafeDirectory(Exception):
    """An ``ipc://`` endpoint's directory could let another local user in."""


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an ``ipc://`` endpoint; ``None`` for other transports."""
    if not endpoint.startswith("ipc://"):
        return None
    return Path(endpoint[len("ipc://") :])


def prepare(endpoint: str, *, port: int | None = None) -> None:
    """Make sure an ``ipc://`` endpoint's directory is private (no-op for others).

    The default directory of ``port`` (and its ``/tmp/presence-UID`` base) is created
    with mode 0700 when missing; any other directory must exist already. Either way it
    is then checked (:func:`check_private_dir`)."""
    path = ipc_path(endpoint)
    if path is None:
        return
    directory = path.parent
    default = port is not None and directory.name == f"presence-{port}"
    if default and port is not None and directory == runtime_dir(port):
        notice = fallback_notice()
        if notice is not None and notice not in _told:
            _told.add(notice)
            log.warning("%s", notice, extra=logs.event("ipc_dir_fallback", notice=notice))
        base = directory.parent
        check_private_dir(base)  # before anything is made inside it
        _make_private(directory)
    check_private_dir(directory)


_told: set[str] = set()  # fallback notices logged (once per process)


def _make_private(directory: Path) -> None:
    with contextlib.suppress(FileExistsError):  # then checked, never chmod-ed
        directory.mkdir(mode=0o700)


def check_private_dir(directory: Path) -> None:
    """Refuse (:class:`UnsafeDirectory`) a directory another local user could enter,
    replace or write to; see the module docstring."""
    uid = os.getuid()
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        raise UnsafeDirectory(f"ipc directory {directory} does not exist") from None
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectory(f"ipc directory {directory} is not a directory (a symlink?)")
    if info.st_uid != uid:
        raise UnsafeDirectory(
            f"ipc directory {directory} belongs to uid {info.st_uid}, not to this user "
            f"({uid}): another user could read and inject backbone messages"
        )
    if info.st_mode & 0o077:
        raise UnsafeDirectory(
            f"ipc directory {directory} is open to other users (mode "
            f"{stat.S_IMODE(info.st_mode):04o}); make it 0700"
        )
    above_dirs = [*Path(os.path.abspath(directory)).parents]
    above_dirs += Path(os.path.realpath(directory)).parents
    for above in above_dirs:
        info = os.lstat(above)
        if stat.S_ISLNK(info.st_mode):
            info = os.stat(above)  # its target is among the resolved parents too
        if info.st_uid not in (0, uid):
            raise UnsafeDirectory(
                f"{above}, above the ipc directory {directory}, belongs to uid "
                f"{info.st_uid}: that user could replace the directory"
            )
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            raise UnsafeDirectory(
                f"{above}, above the ipc directory {directory}, is writable by other "
                "users and not sticky: they could replace the directory"
            )


class Lock:
    """An exclusive ``flock`` on ``<events socket>.lock``, held for a process's life.

    The file stays behind when the process ends and holds a line of the holder's
    choosing (:meth:`record`): the coordinator writes its epoch there, so the next one
    knows a coordinator ran before it (:attr:`previous`)."""

    def __init__(self, fd: int | None, previous: str = "", path: Path | None = None) -> None:
        self._fd = fd
        self._path = path
        self.previous = previous

    @classmethod
    def take(cls, endpoint: str, role: str) -> Lock:
        """Lock the ``ipc://`` endpoint for ``role``, or raise :class:`EndpointInUse`.
        A ``tcp://`` endpoint needs no lock: binding a port twice already fails."""
        path = ipc_path(endpoint)
        if path is None:
            return cls(None)
        lock_path = path.with_name(path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise EndpointInUse(
                    f"another {role} is running on {endpoint} (it holds {lock_path})"
                ) from None
            raise
        previous = os.read(fd, 4096).decode("utf-8", "replace").strip()
        return cls(fd, previous, lock_path)

    def record(self, text: str) -> None:
        """Replace the file's line with ``text`` (no-op without a file)."""
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, text.encode() + b"\n", 0)

    def release(self, *, remove: bool = False) -> None:
        """Let go of the lock; ``remove`` also deletes the file and the socket beside it
        (for endpoints named after a process that will never start again)."""
        if self._fd is None:
            return
        if remove and self._path is not None:
            socket_path = self._path.with_name(self._path.name.removesuffix(".lock"))
            for path in (socket_path, self._path):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        os.close(self._fd)
        self._fd = None


class EndpointInUse(Exception):
    """Another process already serves this endpoint."""


def resolve(port: int, events: str | None, updates: str | None) -> Endpoints:
    """Endpoints from explicit values, falling back to the defaults for ``port``."""
    if events and updates:
        return Endpoints(events=events, updates=updates)  # no default directory made
    default = default_endpoints(port)
    return Endpoints(events=events or default.events, updates=updates or default.updates)


@dataclass(frozen=True, slots=True, kw_only=True)
class BackboneOptions:
    """How a process reaches the backbone (both roles; each adds its own CURVE key)."""

    events_endpoint: str | None = option(
        None,
        "ZeroMQ endpoint of the coordinator's ROUTER for worker events",
        shown="ipc://$XDG_RUNTIME_DIR (or /tmp/presence-UID)/presence-PORT/events",
    )
    updates_endpoint: str | None = option(
        None,
        "ZeroMQ endpoint of the coordinator's PUB for numbered updates",
        shown="beside the events endpoint, .../updates",
    )
    hwm: int = option(
        100_000,
        "high-water mark of each backbone socket, in messages: past it updates are lost "
        "(a worker's replica sees the gap and resyncs from a snapshot) and other messages "
        "are refused, counted and logged",
        check=at_least(1),
    )
    max_message_bytes: int = option(
        64 * 1024 * 1024,
        "largest backbone message a socket accepts (ZMQ_MAXMSGSIZE; a peer that sends a "
        "larger one is disconnected): the largest legitimate ones are a Hello or a "
        "Snapshot, about 110 bytes per session",
        check=at_least(1024 * 1024),
    )
    plain_tcp: bool = option(
        False,
        "allow tcp:// endpoints without CURVE, even on loopback. Insecure: any process "
        "that can reach them can join as a worker, read every message and kick anyone; "
        "logged as a warning at every start",
    )
    curve_secret_key: str | None = option(
        None,
        "this process's CURVE certificate, a .key_secret file from "
        "scripts/backbone_keys.py: encrypts the backbone and proves who is talking; "
        "required for tcp:// endpoints",
    )

    def __post_init__(self) -> None:
        validate(self)

    def endpoints(self, port: int) -> Endpoints:
        """The endpoints to use: the given ones, else the defaults for ``port``."""
        return resolve(port, self.events_endpoint, self.updates_endpoint)

    def configure(self, sock: zmq.Socket[bytes], *, beat: float, silence: float) -> None:
        """Set a new backbone socket's bounds and liveness, the same for every socket.

        Bounds: no linger at close, ``--hwm`` both ways, ``--max-message-bytes``.

        Liveness, over tcp: a connection is dropped when the peer's machine has not
        acknowledged what was sent to it for ``silence`` seconds (``TCP_USER_TIMEOUT``),
        or has not answered keepalive probes sent after ``beat`` seconds without
        traffic, every ``beat``, for ``silence`` (a SUB only ever receives, so only
        probes tell it its publisher is gone); and a connection attempt gives up after
        ``beat`` seconds and is tried again. So a network partition ends the connection
        within about ``silence`` plus a beat, and after the heal a new one is made
        within about a beat. Without this a connection that crossed a partition stays
        in TCP's retransmission back-off (9 s after a 15 s partition, measured) or, on
        the receiving side, open for ever. A stalled process (SIGSTOP, a long pause) is
        not a partition: its kernel still acknowledges and answers probes, so its
        connections and the messages queued on them are kept, and it reads them when
        it runs again (ZeroMQ's own heartbeats would drop those, and everything queued
        with them). Whatever a dropped connection lost is repaired like any other loss:
        a gap, a re-announcement."""
        import zmq  # here, not above: the launcher reads DEFAULT_PORT without pyzmq

        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, self.hwm)
        sock.setsockopt(zmq.RCVHWM, self.hwm)
        sock.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        sock.setsockopt(zmq.TCP_MAXRT, _ms(silence))
        probe = max(1, round(beat))  # TCP counts these in whole seconds
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, probe)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, probe)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, max(1, math.ceil(silence / probe)))
        sock.setsockopt(zmq.CONNECT_TIMEOUT, _ms(beat))


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))
