"""The backbone is not an open door: ipc in a private directory by default, CURVE on
every tcp endpoint, one coordinator per endpoint (issue 7 item 9)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
import zmq.auth

from scripts.fake_worker import CurveClient, FakeWorker
from shared import backbone as bb
from shared import curve, endpoints
from shared.client import LobbyClient
from tests.support import ROOT, ManagedProcess, free_port, wait_until

NOBODY = 65534


def _refused(module: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run ``python -m module args``; it must exit 2 at once, without a traceback.
    Returns its stderr."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def _ipc(directory: Path) -> list[str]:
    return [
        "--events-endpoint",
        f"ipc://{directory}/events",
        "--updates-endpoint",
        f"ipc://{directory}/updates",
    ]


@pytest.mark.parametrize(
    ("endpoints_", "curve_on", "plain_tcp", "outcome"),
    [
        (["ipc:///x/events"], False, False, None),
        (["tcp://127.0.0.1:5555"], True, False, None),
        (["tcp://127.0.0.1:5555"], False, False, "refusing tcp://127.0.0.1:5555 without CURVE"),
        (["tcp://[::1]:5555"], False, False, "refusing"),
        (["tcp://0.0.0.0:5555"], False, False, "refusing"),
        (["tcp://127.0.0.1:5555"], False, True, "INSECURE"),
        (["inproc://x"], False, False, "unsupported backbone endpoint"),
        (["pgm://x"], True, False, "unsupported backbone endpoint"),
    ],
)
def test_tcp_needs_curve_even_on_loopback(
    endpoints_: list[str], curve_on: bool, plain_tcp: bool, outcome: str | None
) -> None:
    """Any local process can connect to a loopback port: only ipc in a private
    directory, or CURVE, keeps strangers out. --plain-tcp is a loud opt-out."""
    if outcome is None or outcome == "INSECURE":
        warning = curve.check_exposure(endpoints_, curve_on=curve_on, plain_tcp=plain_tcp)
        assert warning is None if outcome is None else outcome in (warning or "")
    else:
        with pytest.raises(curve.BackboneSecurityError, match=outcome):
            curve.check_exposure(endpoints_, curve_on=curve_on, plain_tcp=plain_tcp)


def test_default_ipc_directory_is_created_private(tmp_path: Path) -> None:
    base = tmp_path / "run"
    base.mkdir(mode=0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(base)
    try:
        ends = endpoints.default_endpoints(4242)
        endpoints.prepare(ends.events, port=4242)
    finally:
        del os.environ["XDG_RUNTIME_DIR"]
    directory = base / "presence-4242"
    assert ends.events == f"ipc://{directory}/events"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def _unsafe(tmp_path: Path, how: str) -> Path:
    """A directory another local user could get into, made ``how``."""
    directory = tmp_path / how
    if how == "foreign-owner":
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)
    elif how == "group-writable":
        directory.mkdir()
        directory.chmod(0o770)
    elif how == "world-readable":
        directory.mkdir()
        directory.chmod(0o755)
    elif how == "symlink":
        target = tmp_path / "target"
        target.mkdir(mode=0o700)
        directory.symlink_to(target)
    elif how == "open-parent":
        parent = tmp_path / "open-parent-dir"
        parent.mkdir()
        parent.chmod(0o777)  # not sticky: anyone may rename what is inside
        directory = parent / "inner"
        directory.mkdir(mode=0o700)
    return directory


UNSAFE = ["foreign-owner", "group-writable", "world-readable", "symlink", "open-parent"]


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory owned by another user")
@pytest.mark.parametrize("how", UNSAFE)
def test_an_unsafe_ipc_directory_is_refused(tmp_path: Path, how: str) -> None:
    with pytest.raises(endpoints.UnsafeDirectory):
        endpoints.check_private_dir(_unsafe(tmp_path, how))


@pytest.mark.process
@pytest.mark.skipif(os.getuid() != 0, reason="making a directory owned by another user")
def test_both_processes_refuse_an_ipc_directory_others_could_enter(tmp_path: Path) -> None:
    for how in ("foreign-owner", "group-writable", "symlink"):
        directory = _unsafe(tmp_path, how)
        for module in ("coordinator", "workers"):
            error = _refused(module, *_ipc(directory))
            assert "cannot start the backbone" in error and str(directory) in error


@pytest.fixture
def planted_tmp() -> Iterator[Path]:
    """A TMPDIR (short, for ipc paths) in which another user created ``presence-UID``
    first, open to all, as anyone may in /tmp."""
    with tempfile.TemporaryDirectory(prefix="pl-") as tmp:
        planted = Path(tmp) / f"presence-{os.getuid()}"
        planted.mkdir()
        planted.chmod(0o777)
        os.chown(planted, NOBODY, NOBODY)
        yield Path(tmp)


@pytest.mark.process
@pytest.mark.skipif(os.getuid() != 0, reason="making a directory owned by another user")
def test_a_default_directory_planted_by_another_user_is_passed_by(planted_tmp: Path) -> None:
    """With XDG_RUNTIME_DIR unset the default lives under /tmp/presence-UID; another
    user who creates it first must neither get the sockets nor keep the server from
    starting: each process takes the same private directory of this user's, and says
    where."""
    planted = planted_tmp / f"presence-{os.getuid()}"
    env = {"TMPDIR": str(planted_tmp), "XDG_RUNTIME_DIR": ""}
    port = free_port()
    coordinator = ManagedProcess("coordinator", ["--port", str(port)], env=env)
    worker: ManagedProcess | None = None
    try:
        coordinator.wait_ready()
        said = re.search(r"using the private directory (\S+) instead", coordinator.output())
        assert said, coordinator.output()
        assert f"{planted} belongs to uid {NOBODY}" in coordinator.output()
        private = Path(said.group(1))
        assert private.parent == planted_tmp
        assert stat.S_IMODE(private.stat().st_mode) == 0o700
        assert private.stat().st_uid == os.getuid()
        assert (private / f"presence-{port}" / "events").exists()
        # A worker started on its own finds the same directory: it joins (it is ready
        # only once the coordinator has sent it the lobby).
        worker = ManagedProcess("workers", ["--port", str(port), "--worker-id", "w1"], env=env)
        worker.wait_ready()
        assert f"using the private directory {private} instead" in worker.output()
    finally:
        for proc in (worker, coordinator):
            if proc is not None:
                assert proc.stop() == 0
                proc.assert_no_traceback()
    assert list(planted.iterdir()) == []  # nothing of ours in the other user's directory
    assert stat.S_IMODE(planted.stat().st_mode) == 0o777  # never chmod-ed


def test_the_default_directory_is_made_private_when_missing(tmp_path: Path) -> None:
    base, notice = endpoints._private_base(str(tmp_path), 4321)
    assert base == tmp_path / "presence-4321" and notice is None
    assert stat.S_IMODE(base.stat().st_mode) == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="making a directory owned by another user")
def test_a_planted_default_directory_gives_way_to_a_private_one_all_processes_agree_on(
    tmp_path: Path,
) -> None:
    uid = os.getuid()
    planted = tmp_path / f"presence-{uid}"
    planted.mkdir()
    os.chown(planted, NOBODY, NOBODY)
    # Another user's look-alikes are passed by too.
    (tmp_path / f"presence-{uid}-aaaa").mkdir(mode=0o700)
    os.chown(tmp_path / f"presence-{uid}-aaaa", NOBODY, NOBODY)
    (tmp_path / f"presence-{uid}-bbbb").symlink_to(tmp_path)
    first, notice = endpoints._private_base.__wrapped__(str(tmp_path), uid)
    assert first.parent == tmp_path and first.name.startswith(f"presence-{uid}-")
    assert first.name not in (f"presence-{uid}-aaaa", f"presence-{uid}-bbbb")
    assert stat.S_IMODE(first.stat().st_mode) == 0o700
    assert notice == (
        f"ipc directory {planted} belongs to uid {NOBODY}, not to this user ({uid}): another "
        "user could read and inject backbone messages; using the private directory "
        f"{first} instead"
    )
    # Another process (the same work done afresh) picks the same one.
    again, _ = endpoints._private_base.__wrapped__(str(tmp_path), uid)
    assert again == first


def test_the_launchers_choice_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    assert endpoints.runtime_dir(9) == tmp_path / "xdg" / "presence-9"
    monkeypatch.setenv(endpoints.RUNTIME_ENV, str(tmp_path / "shared"))
    assert endpoints.runtime_dir(9) == tmp_path / "shared" / "presence-9"
    assert endpoints.fallback_notice() is None


@pytest.mark.process
def test_both_processes_refuse_tcp_without_curve_unless_told_loudly(tmp_path: Path) -> None:
    p1, p2, p3 = free_port(), free_port(), free_port()
    tcp = ["--events-endpoint", f"tcp://127.0.0.1:{p1}", "--updates-endpoint"]
    tcp += [f"tcp://127.0.0.1:{p2}"]
    assert "without CURVE" in _refused("coordinator", *tcp)
    assert "without CURVE" in _refused("workers", *tcp, "--results-endpoint", "tcp://x:1")
    # A worker on a tcp backbone must say where other workers reach it.
    assert "--results-endpoint is required" in _refused("workers", *tcp, "--plain-tcp")
    coordinator = ManagedProcess("coordinator", [*tcp, "--plain-tcp"])
    try:
        coordinator.wait_ready()
        assert coordinator.count("INSECURE: the backbone uses tcp://127.0.0.1") == 1
    finally:
        assert coordinator.stop() == 0
    _ = p3, tmp_path


@pytest.mark.process
def test_a_second_coordinator_on_the_same_endpoint_is_refused(tmp_path: Path) -> None:
    first = ManagedProcess("coordinator", _ipc(tmp_path))
    try:
        first.wait_ready()
        error = _refused("coordinator", *_ipc(tmp_path))
        assert f"another coordinator is running on ipc://{tmp_path}/events" in error
        # The first still owns its sockets: a worker reaches it.
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            worker = FakeWorker(ctx, "w9", f"ipc://{tmp_path}/events")
            worker.send(bb.Hello("w9", "", "", "", []))
            assert isinstance(worker.reply(timeout=5.0), bb.Welcome)
        finally:
            ctx.destroy(linger=0)
    finally:
        assert first.stop() == 0
    # Once it is gone, a new one may take over (the lock went with it).
    second = ManagedProcess("coordinator", _ipc(tmp_path))
    try:
        second.wait_ready()
    finally:
        assert second.stop() == 0


def _keys(tmp: Path) -> tuple[Path, Path, Path]:
    """Key pairs for the coordinator, one admitted worker and one stranger."""
    keys = tmp / "keys"
    subprocess.run(
        [sys.executable, "scripts/backbone_keys.py", str(keys), "coordinator", "w1", "stranger"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=30,
    )
    admitted = tmp / "admitted"
    admitted.mkdir()
    (admitted / "w1.key").write_bytes((keys / "w1.key").read_bytes())
    assert stat.S_IMODE((keys / "w1.key_secret").stat().st_mode) == 0o600
    return keys, admitted, keys / "stranger.key_secret"


@pytest.mark.process
def test_curve_admits_only_listed_workers_and_never_logs_secrets(tmp_path: Path) -> None:
    keys, admitted, stranger = _keys(tmp_path)
    p1, p2, p3, web = free_port(), free_port(), free_port(), free_port()
    events, updates = f"tcp://127.0.0.1:{p1}", f"tcp://127.0.0.1:{p2}"
    backbone = ["--events-endpoint", events, "--updates-endpoint", updates]
    coordinator = ManagedProcess(
        "coordinator",
        [
            *backbone,
            "--curve-secret-key",
            str(keys / "coordinator.key_secret"),
            "--curve-clients",
            str(admitted),
            "--log-level",
            "DEBUG",
        ],
    )
    worker: ManagedProcess | None = None
    try:
        coordinator.wait_ready()
        worker = ManagedProcess(
            "workers",
            [
                *backbone,
                "--port",
                str(web),
                "--worker-id",
                "w1",
                "--log-level",
                "DEBUG",
                "--curve-secret-key",
                str(keys / "w1.key_secret"),
                "--curve-server-key",
                str(keys / "coordinator.key"),
                "--results-endpoint",
                f"tcp://127.0.0.1:{p3}",
            ],
        )
        worker.wait_ready()

        async def join() -> None:
            async with LobbyClient.connect(f"ws://127.0.0.1:{web}/ws") as client:
                assert client.view.online == {client.public_key}

        asyncio.run(join())
        server_public = curve.load_public(str(keys / "coordinator.key"))
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        try:
            # No CURVE at all, and CURVE with a key the coordinator does not list:
            # neither gets an answer (an unknown worker would be asked to reannounce).
            plain = FakeWorker(ctx, "plain", events)
            stranger_keys = CurveClient(curve.load_keypair(str(stranger)), server_public)
            intruder = FakeWorker(ctx, "intruder", events, client=stranger_keys)
            for fake in (plain, intruder):
                # Once its handshake has failed a DEALER has no pipe, and a blocking
                # send would wait forever: then nothing reached the coordinator at all.
                with contextlib.suppress(zmq.Again):
                    fake.dealer.send(bb.encode(bb.Heartbeat(fake.name)), zmq.NOBLOCK)
            plain.no_reply(1.5)
            intruder.no_reply(0.01)
            assert coordinator.count("unknown worker plain") == 0
            assert coordinator.count("unknown worker intruder") == 0
        finally:
            ctx.destroy(linger=0)
        logs = coordinator.output() + worker.output()
        for secret_file in keys.glob("*.key_secret"):
            _, secret = zmq.auth.load_certificate(secret_file)
            assert secret is not None and secret.decode() not in logs
    finally:
        for proc in (worker, coordinator):
            if proc is not None:
                assert proc.stop() == 0
                proc.assert_no_traceback()


def _handshake(sock: zmq.Socket[bytes], endpoint: str, timeout: float = 10.0) -> int:
    """Connect ``sock`` to ``endpoint`` and return how its CURVE handshake ended: the
    monitor event ``HANDSHAKE_SUCCEEDED`` or one of the ``HANDSHAKE_FAILED_*``."""
    from zmq.utils.monitor import recv_monitor_message

    monitor = sock.get_monitor_socket()
    try:
        sock.connect(endpoint)
        ended = {
            zmq.EVENT_HANDSHAKE_SUCCEEDED,
            zmq.EVENT_HANDSHAKE_FAILED_AUTH,
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
            zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
        }
        while monitor.poll(int(timeout * 1000)):
            event = int(recv_monitor_message(monitor)["event"])
            if event in ended:
                return event
        raise AssertionError(f"no handshake with {endpoint} within {timeout}s")
    finally:
        sock.disable_monitor()
        monitor.close(0)


JUNK_FRAMES = 20_000


@pytest.mark.process
def test_results_sockets_take_only_the_workers_the_coordinator_admits(tmp_path: Path) -> None:
    """A key the coordinator lists nowhere must not even complete a CURVE handshake with
    a worker's results socket; an admitted one that sends junk gets a few log lines a
    second, and the count of the rest, not one line per frame."""
    keys, admitted, stranger = _keys(tmp_path)
    subprocess.run(
        [sys.executable, "scripts/backbone_keys.py", str(keys), "w2"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=30,
    )
    (admitted / "w2.key").write_bytes((keys / "w2.key").read_bytes())
    p1, p2, p3, web = free_port(), free_port(), free_port(), free_port()
    events, updates = f"tcp://127.0.0.1:{p1}", f"tcp://127.0.0.1:{p2}"
    results = f"tcp://127.0.0.1:{p3}"
    backbone = ["--events-endpoint", events, "--updates-endpoint", updates]
    coordinator = ManagedProcess(
        "coordinator",
        [
            *backbone,
            "--curve-secret-key",
            str(keys / "coordinator.key_secret"),
            "--curve-clients",
            str(admitted),
        ],
    )
    worker: ManagedProcess | None = None
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    try:
        coordinator.wait_ready()
        worker = ManagedProcess(
            "workers",
            [
                *backbone,
                "--port",
                str(web),
                "--worker-id",
                "w1",
                "--curve-secret-key",
                str(keys / "w1.key_secret"),
                "--curve-server-key",
                str(keys / "coordinator.key"),
                "--results-endpoint",
                results,
            ],
        )
        worker.wait_ready()
        w1_public = curve.load_public(str(keys / "w1.key"))

        def pusher(key_file: Path) -> zmq.Socket[bytes]:
            sock = ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, 10_000)  # a worker that stopped reading fails
            curve.make_client(sock, curve.load_keypair(str(key_file)), w1_public)
            return sock

        assert _handshake(pusher(stranger), results) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
        admitted_peer = pusher(keys / "w2.key_secret")
        assert _handshake(admitted_peer, results) == zmq.EVENT_HANDSHAKE_SUCCEEDED
        for _ in range(JUNK_FRAMES):
            admitted_peer.send(b"\xc1 not msgpack")

        def accounted() -> tuple[int, int]:
            """(lines about junk frames, frames they account for)."""
            output = worker.output() if worker is not None else ""
            lines = output.count("dropping undecodable backbone frame")
            held = re.findall(r"(\d+) more undecodable_frame lines suppressed", output)
            return lines + len(held), lines + sum(int(n) for n in held)

        wait_until(lambda: accounted()[1] >= JUNK_FRAMES, "every junk frame to be counted", 30)
        lines, frames = accounted()
        assert frames == JUNK_FRAMES
        assert lines < 200, f"{lines} log lines for {JUNK_FRAMES} junk frames"
    finally:
        ctx.destroy(linger=0)
        for proc in (worker, coordinator):
            if proc is not None:
                assert proc.stop() == 0
                proc.assert_no_traceback()


@pytest.mark.process
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_secret_key_other_users_can_read_is_refused_naming_it(tmp_path: Path, mode: int) -> None:
    """Anyone who reads a .key_secret can join the backbone as its owner: like the API's
    token file, one open to other users (a copy made without care) is refused."""
    keys, admitted, _ = _keys(tmp_path)
    secret = keys / "coordinator.key_secret"
    secret.chmod(mode)
    p1, p2 = free_port(), free_port()
    backbone = ["--events-endpoint", f"tcp://127.0.0.1:{p1}"]
    backbone += ["--updates-endpoint", f"tcp://127.0.0.1:{p2}"]
    error = _refused(
        "coordinator",
        *backbone,
        "--curve-secret-key",
        str(secret),
        "--curve-clients",
        str(admitted),
    )
    assert f"{secret} is open to other users (mode {mode:04o})" in error
    worker_secret = keys / "w1.key_secret"
    worker_secret.chmod(mode)
    error = _refused(
        "workers",
        *backbone,
        "--curve-secret-key",
        str(worker_secret),
        "--curve-server-key",
        str(keys / "coordinator.key"),
        "--results-endpoint",
        f"tcp://127.0.0.1:{free_port()}",
    )
    assert f"{worker_secret} is open to other users (mode {mode:04o})" in error
