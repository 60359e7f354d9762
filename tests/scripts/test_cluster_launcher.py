"""scripts/cluster.py: the pure pieces, then the launcher with stand-in children, then
(when they exist) with the real coordinator and workers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts import procfs
from scripts.cluster import parse_args
from scripts.launcher.config import BackoffPolicy, Config, connect_url, split_forwarded, worker_id
from scripts.launcher.supervise import describe_exit, is_ready, notify_socket, notify_supervisor
from scripts.procfs import environ, listening_ports
from shared import defaults, listen, notify
from tests.support import (
    AS_ROOT,
    NOBODY,
    ROOT,
    ManagedProcess,
    another_user,
    free_port,
    http,
    wait_until,
)

# --------------------------------------------------------------------------- pure logic


def test_backoff_grows_on_fast_crashes_and_is_capped() -> None:
    policy = BackoffPolicy(initial=0.5, factor=2.0, cap=4.0, stable_after=30.0)
    assert [policy.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert policy.delay(10_000) == 4.0  # no overflow however long it crash-loops


def test_backoff_counts_only_consecutive_fast_crashes() -> None:
    policy = BackoffPolicy(stable_after=30.0)
    crashes = 0
    for uptime in (0.1, 2.0, 29.9):
        crashes = policy.fast_crashes(crashes, uptime)
    assert crashes == 3
    assert policy.fast_crashes(crashes, 30.0) == 1  # ran long enough: start over
    assert policy.delay(1) == policy.initial


def test_worker_ids_are_unique_per_slot_and_generation() -> None:
    ids = {worker_id(slot, gen) for slot in range(1, 12) for gen in range(1, 12)}
    assert len(ids) == 11 * 11
    assert worker_id(3, 2) == "w3-2"


def test_ready_is_the_ready_assignment_not_text_that_contains_it() -> None:
    assert is_ready(notify.parse(b"READY=1"))
    assert is_ready(notify.parse(b"STATUS=worker w1-1 ready\nREADY=1"))
    assert not is_ready(notify.parse(b"STOPPING=1\nSTATUS=READY=1"))
    assert not is_ready(notify.parse(b"READY=10"))
    assert not is_ready(notify.parse(b"worker w1-1 ready"))


def test_the_launchers_socket_hears_what_shared_notify_sends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both ends of the protocol agree: a child using shared.notify reaches the socket
    the launcher hands it, and the launcher's own notification reaches a supervisor."""
    child = notify_socket()
    supervisor = notify.Listener()
    try:
        assert child.receive(0) == []  # never blocks
        monkeypatch.setenv("NOTIFY_SOCKET", child.address)
        notify.ready("worker w1-1 ready")
        # A local datagram is queued by the time sendto returns: nothing to wait for.
        assert [is_ready(n) for n in child.receive(0)] == [True]
        monkeypatch.setenv("NOTIFY_SOCKET", supervisor.address)
        assert notify_supervisor("READY=1", "all 2 processes ready") is None
        assert supervisor.receive(5) == [{"READY": "1", "STATUS": "all 2 processes ready"}]
        monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1")
        assert "not a path" in (notify_supervisor("READY=1") or "")
        monkeypatch.delenv("NOTIFY_SOCKET")
        assert notify_supervisor("READY=1") is None
    finally:
        child.close()
        supervisor.close()


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "ws://127.0.0.1:9000/ws"),
        ("0.0.0.0", "ws://127.0.0.1:9000/ws"),
        ("::", "ws://[::1]:9000/ws"),
        ("::1", "ws://[::1]:9000/ws"),
        ("example.org", "ws://example.org:9000/ws"),
    ],
)
def test_connect_url(host: str, url: str) -> None:
    assert connect_url(host, 9000) == url
    assert connect_url(host, 9000, tls=True) == url.replace("ws://", "wss://")
    page = url.replace("ws://", "http://").removesuffix("ws")
    assert connect_url(host, 9000, page=True) == page


def test_describe_exit() -> None:
    assert describe_exit(0) == "exit code 0"
    assert describe_exit(3) == "exit code 3"
    assert describe_exit(-9) == "signal SIGKILL"
    assert describe_exit(None) == "no exit status"


def test_split_forwarded_takes_values_verbatim() -> None:
    argv = [
        "--workers",
        "2",
        "--worker-arg",
        "--ping-interval",
        "--worker-arg=5",
        "--",
        "--coordinator-arg",
        "--log-level=debug",
        "--worker-arg",
        "-v",
    ]
    rest, coordinator, worker = split_forwarded(argv)
    assert rest == ["--workers", "2"]
    assert coordinator == ["--log-level=debug"]
    assert worker == ["--ping-interval", "5", "-v"]


@pytest.mark.parametrize("argv", [["--", "--workers", "2"], ["--worker-arg"]])
def test_split_forwarded_rejects_strays(argv: list[str]) -> None:
    with pytest.raises(ValueError):
        split_forwarded(argv)


def test_parse_args_builds_the_commands() -> None:
    config = parse_args(
        [
            *("--workers", "3", "--port", "9100", "--host", "0.0.0.0", "--log-level", "debug"),
            *("--", "--worker-arg", "--x", "--coordinator-arg", "--y"),
        ]
    )
    assert config.workers == 3
    assert config.coordinator_command()[1:] == [
        "-m",
        "coordinator",
        "--port",
        "9100",
        "--log-level",
        "debug",
        "--y",
    ]
    assert config.worker_command("w2-1")[1:] == [
        "-m",
        "workers",
        "--host",
        "0.0.0.0",
        "--port",
        "9100",
        "--worker-id",
        "w2-1",
        "--log-level",
        "debug",
        "--x",
    ]


def test_parse_args_defaults() -> None:
    config = parse_args([])
    assert config == Config(workers=os.cpu_count() or 1, host=defaults.HOST, port=defaults.PORT)


def test_log_format_goes_to_every_process() -> None:
    config = parse_args(["--log-format", "json"])
    assert config.coordinator_command()[-2:] == ["--log-format", "json"]
    assert config.worker_command("w1-1")[-2:] == ["--log-format", "json"]
    assert "--log-format" not in parse_args([]).worker_command("w1-1")
    with pytest.raises(SystemExit):
        parse_args(["--log-format", "xml"])


def test_metrics_port_is_on_by_default_and_0_turns_it_off() -> None:
    assert parse_args([]).metrics_port == 9765
    assert parse_args(["--metrics-port", "0"]).metrics_port == 0
    with pytest.raises(SystemExit):
        parse_args(["--metrics-port", "-1"])


@pytest.mark.parametrize("argv", [["--workers", "0"], ["--port", "70000"], ["--", "x"]])
def test_parse_args_rejects_nonsense(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)


def key_dirs(tmp_path: Path) -> tuple[Path, Path]:
    """The coordinator's and one worker machine's key directories, as
    ``backbone_keys.py --cluster`` lays them out (empty files: only names matter here)."""
    coordinator, worker = tmp_path / "coordinator", tmp_path / "host-a"
    (coordinator / "workers").mkdir(parents=True)
    worker.mkdir()
    for path in (
        coordinator / "coordinator.key_secret",
        coordinator / "workers" / "host-a.key",
        worker / "coordinator.key",
        worker / "worker.key_secret",
    ):
        path.write_text("")
    return coordinator, worker


def test_role_coordinator_runs_the_coordinator_alone_on_a_curve_backbone(tmp_path: Path) -> None:
    keys, _ = key_dirs(tmp_path)
    config = parse_args(
        ["--role", "coordinator", "--backbone", "198.18.0.1:7100", "--keys", str(keys)]
    )
    assert (config.runs_coordinator, config.runs_workers) == (True, False)
    assert config.coordinator_command()[5:] == [
        "--events-endpoint", "tcp://198.18.0.1:7100",
        "--updates-endpoint", "tcp://198.18.0.1:7101",
        "--curve-secret-key", f"{keys}/coordinator.key_secret",
        "--curve-clients", f"{keys}/workers",
    ]  # fmt: skip
    default = parse_args(["--role", "coordinator", "--keys", str(keys)])
    assert default.backbone == ("0.0.0.0", 7100)


def test_role_workers_join_the_coordinator_with_ids_unique_across_machines(tmp_path: Path) -> None:
    _, keys = key_dirs(tmp_path)
    argv = ["--role", "workers", "--coordinator", "127.0.0.1:7100", "--keys", str(keys)]
    config = parse_args([*argv, "--name", "host-a", "--api-port", "9000", "--api-token-file", "t"])
    assert (config.runs_coordinator, config.runs_workers) == (False, True)
    assert config.advertise == "127.0.0.1"  # the local address towards the coordinator
    assert config.worker_name(2, 3) == "host-a-w2-3"
    command = config.worker_command("host-a-w2-3", 2)
    assert command[command.index("--events-endpoint") :] == [
        "--events-endpoint", "tcp://127.0.0.1:7100",
        "--updates-endpoint", "tcp://127.0.0.1:7101",
        "--results-endpoint", "tcp://127.0.0.1:*",
        "--curve-secret-key", f"{keys}/worker.key_secret",
        "--curve-server-key", f"{keys}/coordinator.key",
        "--api-port", "9000", "--api-token-file", "t",
    ]  # fmt: skip
    fixed = parse_args([*argv, "--advertise", "198.18.0.2", "--results-port-base", "7300"])
    assert "--results-endpoint" in (command := fixed.worker_command("x", 2))
    assert command[command.index("--results-endpoint") + 1] == "tcp://198.18.0.2:7301"
    assert parse_args(argv).name  # the host name by default, in a directory without a name


def test_role_workers_are_named_after_the_machine_their_key_directory_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, keys = key_dirs(tmp_path)
    argv = ["--role", "workers", "--coordinator", "127.0.0.1:7100", "--keys", str(keys)]
    (keys / "name").write_text("web2\n")  # as backbone_keys.py --cluster writes it
    assert parse_args(argv).worker_name(1, 1) == "web2-w1-1"
    assert parse_args([*argv, "--name", "other"]).worker_name(1, 1) == "other-w1-1"
    (keys / "name").write_text("../web2")
    with pytest.raises(SystemExit) as exited:
        parse_args(argv)
    assert exited.value.code == 2
    assert "does not hold a machine name" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--role", "workers"], "--role workers needs --coordinator HOST:PORT"),
        (["--role", "workers", "--coordinator", "nohost"], "--coordinator must be HOST:PORT"),
        (["--role", "coordinator", "--backbone", "h:0"], "--backbone must be HOST:PORT"),
        (["--backbone", "h:1"], "--backbone is for --role coordinator"),
        (["--coordinator", "h:1"], "--coordinator is for --role workers"),
        (["--api-port", "9000"], "--api-port needs --api-token-file"),
        (["--role", "coordinator", "--keys", "{empty}"], "coordinator.key_secret"),
        (["--role", "workers", "--coordinator", "h:1", "--keys", "{empty}"], "worker.key_secret"),
    ],
)
def test_a_role_without_what_it_needs_is_refused_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], complaint: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args([a.format(empty=tmp_path) for a in argv])
    assert exited.value.code == 2
    assert complaint in capsys.readouterr().err


# --------------------------------------------------------------------------- processes

FAKE = """\
import argparse, os, signal, sys, threading
from scripts import procfs
from scripts.procfs import environ, listening_ports
from shared import notify
parser = argparse.ArgumentParser()
parser.add_argument("--worker-id")
args, extra = parser.parse_known_args()
ignore = bool(os.environ.get("FAKE_IGNORE_TERM") and args.worker_id)
if ignore:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    # sigwait, not a handler: a child may get SIGTERM more than once (the parent-death
    # signal comes once per exiting launcher thread) and must not deadlock on it.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
print("argv", " ".join(sys.argv[1:]), flush=True)
if os.environ.get("FAKE_REFUSE") and args.worker_id:
    print("error: argument --bad: refused", flush=True)
    sys.exit(2)
if not (os.environ.get("FAKE_SILENT") and args.worker_id):
    notify.ready(STATUS)
if ignore:
    threading.Event().wait()
signal.sigwait({signal.SIGTERM})
print("bye", flush=True)
"""


@pytest.fixture
def fakes(tmp_path: Path) -> Path:
    """Stand-in coordinator and workers modules that notify READY=1 (and log nothing
    that looks like readiness) and wait for SIGTERM."""
    (tmp_path / "fake_coordinator.py").write_text(FAKE.replace("STATUS", '"coordinator"'))
    worker_status = 'f"worker {args.worker_id}"'
    (tmp_path / "fake_workers.py").write_text(FAKE.replace("STATUS", worker_status))
    return tmp_path


def started_pids(launcher: ManagedProcess) -> dict[str, int]:
    found = re.findall(r"started (\S+) pid (\d+)", launcher.output())
    return {name: int(pid) for name, pid in found}


def gone(pid: int) -> bool:
    """True once ``pid`` no longer exists (or is a zombie nobody has reaped yet)."""
    try:
        return procfs.state(pid) in (None, "Z")
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def shut_down(launcher: ManagedProcess) -> None:
    """Stop the launcher and kill any child it left behind, so that a failing test
    does not leave processes holding ports."""
    launcher.stop()
    for pid in started_pids(launcher).values():
        if not gone(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def launch(workers: int, port: int, extra: list[str], env: dict[str, str]) -> ManagedProcess:
    """The launcher, without metrics unless ``extra`` asks for them (a launcher killed
    with SIGKILL cannot remove its metrics directory)."""
    args = ["--workers", str(workers), "--port", str(port), "--restart-delay", "0.05"]
    args += ["--metrics-port", "0", *extra]
    return ManagedProcess("scripts.cluster", args, env=env)


@pytest.fixture
def short_runtime_dir() -> Iterator[str]:
    """A private XDG_RUNTIME_DIR short enough for ipc socket paths (~107 bytes max)."""
    with tempfile.TemporaryDirectory(prefix="lobby-") as directory:
        yield directory


def exercise_restart_and_stop(launcher: ManagedProcess, workers: int, stop_signal: int) -> None:
    status = launcher.wait_ready(timeout=30)
    assert status.startswith(f"all {workers + 1} processes ready: connect to ws://"), status
    pids = started_pids(launcher)
    assert set(pids) == {"coordinator", *(worker_id(i, 1) for i in range(1, workers + 1))}

    os.kill(pids["w1-1"], signal.SIGKILL)
    launcher.wait_for_line("w1-1 died (signal SIGKILL)", timeout=15)
    launcher.wait_for_line("started w1-2 pid", timeout=15)
    assert "ready again: connect to ws://" in launcher.wait_ready(timeout=30, count=2)
    launcher.wait_for_line("ready again: connect to ws://", timeout=5)  # for humans too
    assert gone(pids["w1-1"])
    pids = started_pids(launcher)
    assert "w1-2" in pids
    for name, pid in pids.items():
        if name != "w1-1":
            assert not gone(pid), f"{name} should still run"

    launcher.signal(stop_signal)
    if stop_signal == signal.SIGTERM:  # a supervisor may repeat it: still a clean exit
        deadline = time.monotonic() + 30
        while launcher.proc.poll() is None and time.monotonic() < deadline:
            launcher.signal(signal.SIGTERM)
            time.sleep(0.0005)  # pacing the signals, not waiting for anything
    assert launcher.proc.wait(30) == 0, launcher.output()
    wait_until(lambda: all(gone(pid) for pid in pids.values()), "every child to exit", 10)
    launcher.assert_no_traceback()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.process
def test_launcher_restarts_and_stops_stand_ins(fakes: Path, stop_signal: int) -> None:
    env = {"PYTHONPATH": str(fakes)}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    extra += ["--", "--worker-arg", "--flag-for-workers", "--coordinator-arg", "--c-flag"]
    launcher = launch(2, free_port(), extra, env)
    try:
        exercise_restart_and_stop(launcher, 2, stop_signal)
        output = launcher.output()
        assert re.search(r"^w2-1 +\| argv .*--worker-id w2-1 --flag-for-workers$", output, re.M)
        assert re.search(r"^coordinator +\| argv --port \d+ --c-flag$", output, re.M)
        assert output.count("| bye") >= 3  # every child got SIGTERM and exited itself
    finally:
        shut_down(launcher)


@pytest.mark.process
def test_a_child_refusing_its_options_stops_the_launcher_with_code_2(fakes: Path) -> None:
    env = {"PYTHONPATH": str(fakes), "FAKE_REFUSE": "1"}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    launcher = launch(2, free_port(), extra, env)
    try:
        assert launcher.proc.wait(30) == 2, launcher.output()
        output = launcher.output()
        assert "its options or could not listen (exit code 2): error: argument --bad" in output
        assert "error: argument --bad: refused" in output
        assert "w1-2" not in output and "w2-2" not in output  # never restarted
        assert output.count("| bye") == 1  # the coordinator was stopped, not left behind
        launcher.assert_no_traceback()
    finally:
        shut_down(launcher)


def _say_ready_to_every_notify_socket_of(launcher_pid: int) -> str:
    """As another user: send ``READY=1`` to every notify socket the launcher has open
    (their abstract names are public in /proc/net/unix). Returns how many it reached."""
    prefix = f"@presence-cluster-{launcher_pid}-"
    with open("/proc/net/unix") as table:
        names = {line.split()[-1] for line in table if line.split()[-1].startswith(prefix)}
    sent = 0
    for name in names:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1\nSTATUS=fake", "\0" + name[1:])
            sent += 1
    return str(sent)


@pytest.mark.skipif(not AS_ROOT, reason="acting as another user needs root (as in CI)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract sockets are Linux's")
@pytest.mark.process
def test_only_the_launchers_own_children_can_say_they_are_ready(fakes: Path) -> None:
    """Another local user who finds the notify sockets (abstract names, listed in
    /proc/net/unix for anyone) and sends READY=1 must not make the launcher announce a
    cluster whose workers never became ready."""
    env = {"PYTHONPATH": str(fakes), "FAKE_SILENT": "1"}  # the workers never say ready
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    launcher = launch(2, free_port(), extra, env)
    try:
        launcher.wait_for_line("started w2-1 pid", timeout=30)
        with another_user(lambda: _say_ready_to_every_notify_socket_of(launcher.proc.pid)) as sent:
            assert sent == "3", sent  # the coordinator's socket and both workers'
        wait_until(
            lambda: (
                "processes ready" in launcher.output()
                or launcher.output().count("ignored a notification from pid") == 3
            ),
            "the launcher to take the three datagrams",
        )
        output = launcher.output()
        assert "processes ready" not in output, output
        assert "uid 65534" in output
        launcher.notify.receive(0)
        assert launcher.notify.count() == 0  # nor did it tell its own supervisor
    finally:
        shut_down(launcher)


@pytest.mark.process
def test_launcher_kills_children_that_ignore_sigterm(fakes: Path) -> None:
    env = {"PYTHONPATH": str(fakes), "FAKE_IGNORE_TERM": "1"}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    launcher = launch(1, free_port(), [*extra, "--grace", "0.5"], env)
    try:
        launcher.wait_ready(timeout=30)
        pids = started_pids(launcher)
        launcher.signal(signal.SIGTERM)
        assert launcher.proc.wait(30) == 0, launcher.output()
        assert "w1-1 still running after 0.5s; SIGKILL" in launcher.output()
        wait_until(lambda: all(gone(pid) for pid in pids.values()), "every child to exit", 10)
    finally:
        shut_down(launcher)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.process
def test_children_stop_when_the_launcher_is_killed(fakes: Path) -> None:
    env = {"PYTHONPATH": str(fakes)}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    launcher = launch(2, free_port(), extra, env)
    try:
        launcher.wait_ready(timeout=30)
        pids = started_pids(launcher)
        launcher.signal(signal.SIGKILL)
        wait_until(lambda: all(gone(pid) for pid in pids.values()), "orphans to exit", 10)
    finally:
        shut_down(launcher)


SERVER_LIBRARIES = {
    *("zmq", "websockets", "msgpack", "nacl", "uvloop", "prometheus_client", "pythonjsonlogger"),
    *("coordinator", "workers"),
}
PROBE = """\
import runpy, sys
sys.argv = ["cluster.py", *sys.argv[1:]]
try:
    runpy.run_path("scripts/cluster.py", run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code)
print(" ".join(sorted({m.split(".")[0] for m in sys.modules})))
"""


@pytest.mark.process
def test_the_launcher_refuses_bad_options_before_loading_any_server_library() -> None:
    """It imports shared's standard-library modules (notify, logs, the default port),
    never the server's libraries nor the server itself: it starts fast, refuses bad
    options with argparse's message and code 2, and metrics off need nothing more."""
    for argv, complaint in ((["--workers", "0"], "--workers must be at least 1"), (["-h"], "")):
        probe = subprocess.run(
            [sys.executable, "-c", PROBE, *argv],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        exit_line, modules = probe.stdout.splitlines()[-2:]
        assert exit_line == ("exit 2" if complaint else "exit 0"), probe.stdout + probe.stderr
        assert complaint in probe.stderr
        loaded = set(modules.split())
        assert {"shared", "scripts"} <= loaded  # the probe is not vacuous
        assert not loaded & SERVER_LIBRARIES, loaded & SERVER_LIBRARIES


REAL = (ROOT / "coordinator" / "__main__.py").exists() and (
    ROOT / "workers" / "__main__.py"
).exists()


@pytest.mark.skipif(not REAL, reason="python -m coordinator / workers not written yet")
@pytest.mark.process
def test_real_cluster_restarts_a_killed_worker_and_stops_cleanly(short_runtime_dir: str) -> None:
    from shared.client import LobbyClient

    port = free_port()
    launcher = launch(2, port, [], {"XDG_RUNTIME_DIR": short_runtime_dir})
    try:
        launcher.wait_ready(timeout=60)

        async def visit() -> None:
            async with LobbyClient.connect(f"ws://127.0.0.1:{port}/ws") as client:
                assert client.public_key in client.view
                assert client.errors == []

        asyncio.run(visit())
        exercise_restart_and_stop(launcher, 2, signal.SIGTERM)
    finally:
        shut_down(launcher)


@pytest.mark.skipif(not REAL, reason="python -m coordinator / workers not written yet")
@pytest.mark.skipif(not AS_ROOT, reason="making a directory owned by another user")
@pytest.mark.process
def test_a_cluster_starts_when_another_user_holds_its_default_directory() -> None:
    """Without XDG_RUNTIME_DIR the backbone's default is under /tmp/presence-UID, which
    anyone can create first: the launcher picks a private directory of its own instead,
    says where, and gives it to every child, so that they still find each other."""
    with tempfile.TemporaryDirectory(prefix="pl-") as tmp:
        planted = Path(tmp) / f"presence-{os.getuid()}"
        planted.mkdir()
        planted.chmod(0o777)
        os.chown(planted, NOBODY, NOBODY)
        launcher = launch(2, free_port(), [], {"TMPDIR": tmp, "XDG_RUNTIME_DIR": ""})
        try:
            status = launcher.wait_ready(timeout=60)
            assert status.startswith("all 3 processes ready"), status
            output = launcher.output()
            said = re.search(
                r"^cluster +\| .*using the private directory (\S+) instead", output, re.M
            )
            assert said, output
            private = Path(said.group(1))
            assert private.parent == Path(tmp) and private.stat().st_uid == os.getuid()
            pids = started_pids(launcher)
            for name in ("coordinator", "w1-1", "w2-1"):
                assert environ(pids[name]).get("PRESENCE_RUNTIME_DIR") == str(private)
            assert list(planted.iterdir()) == []
        finally:
            shut_down(launcher)


# --------------------------------------------------------------------------- metrics


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
@pytest.mark.process
def test_metrics_port_0_serves_nothing_and_needs_no_prometheus_client(fakes: Path) -> None:
    """Off, the launcher imports no prometheus_client (here one that cannot be imported),
    listens on no port, and gives its children no metrics directory, not even one it
    inherited."""
    poisoned = fakes / "prometheus_client"
    poisoned.mkdir()
    (poisoned / "__init__.py").write_text("raise ImportError('metrics are off')\n")
    env = {"PYTHONPATH": str(fakes), "PROMETHEUS_MULTIPROC_DIR": str(fakes)}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    launcher = launch(1, free_port(), [*extra, "--metrics-port", "0"], env)
    try:
        launcher.wait_ready(timeout=30)
        assert listening_ports(launcher.pid) == set()
        for pid in started_pids(launcher).values():
            assert "PROMETHEUS_MULTIPROC_DIR" not in environ(pid)
        assert "metrics" not in launcher.output()
    finally:
        shut_down(launcher)
    launcher.assert_no_traceback()


@pytest.mark.process
def test_json_output_is_one_object_per_line_even_for_what_children_print(fakes: Path) -> None:
    """The stand-ins print plain lines: the launcher wraps them, as it writes its own."""
    env = {"PYTHONPATH": str(fakes)}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    launcher = launch(1, free_port(), [*extra, "--metrics-port", "0", "--log-format", "json"], env)
    try:
        launcher.wait_ready(timeout=30)
        launcher.wait_for_line('"event": "ready"')
    finally:
        shut_down(launcher)
    lines = [json.loads(line) for line in launcher.output().splitlines()]
    printed = [line for line in lines if line["event"] == "output"]
    assert {(line["role"], line["id"]) for line in printed} == {
        ("coordinator", "coordinator"),
        ("worker", "w1-1"),
    }
    assert all(line["message"].startswith(("argv", "bye")) for line in printed)
    started = [line for line in lines if line["event"] == "process_started"]
    assert {line["process"] for line in started} == {"coordinator", "w1-1"}
    assert all(line["role"] == "launcher" and line["pid"] > 0 for line in started)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
@pytest.mark.process
def test_a_taken_metrics_port_leaves_the_cluster_running_without_metrics(fakes: Path) -> None:
    env = {"PYTHONPATH": str(fakes)}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        launcher = launch(1, free_port(), [*extra, "--metrics-port", str(port)], env)
        try:
            launcher.wait_ready(timeout=30)
            assert f"no metrics: cannot serve 127.0.0.1:{port}" in launcher.output()
            for pid in started_pids(launcher).values():
                assert "PROMETHEUS_MULTIPROC_DIR" not in environ(pid)
        finally:
            shut_down(launcher)
    launcher.assert_no_traceback()


def _squat_ipv6_loopback(port: int) -> str:
    """As another user: listen on [::1]:port (kept until the child exits)."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(("::1", port))
    sock.listen()
    _held.append(sock)
    return "listening"


_held: list[socket.socket] = []


@pytest.mark.skipif(not listen.ipv6_loopback(), reason="this machine has no IPv6 loopback")
@pytest.mark.skipif(not AS_ROOT, reason="acting as another user needs root (as in CI)")
@pytest.mark.process
def test_metrics_are_not_left_to_whoever_holds_the_ipv6_loopback(fakes: Path) -> None:
    """localhost:PORT/metrics is [::1] first: the launcher holds it beside 127.0.0.1, or
    serves no metrics at all and says which address was taken."""
    env = {"PYTHONPATH": str(fakes)}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    port = free_port()
    with another_user(lambda: _squat_ipv6_loopback(port)) as squatting:
        assert squatting == "listening", squatting
        launcher = launch(1, free_port(), [*extra, "--metrics-port", str(port)], env)
        try:
            launcher.wait_ready(timeout=30)
            assert f"no metrics: cannot serve [::1]:{port}" in launcher.output()
        finally:
            shut_down(launcher)
    launcher = launch(1, free_port(), [*extra, "--metrics-port", str(port)], env)
    try:
        launcher.wait_ready(timeout=30)

        async def scrape() -> None:
            for host in ("127.0.0.1", "::1"):
                status, _, _ = await http(port, path="/metrics", host=host)
                assert status == 200, host

        asyncio.run(scrape())
    finally:
        shut_down(launcher)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads Linux's /proc")
@pytest.mark.process
def test_the_metrics_endpoint_lives_and_goes_with_the_launcher(fakes: Path) -> None:
    env = {"PYTHONPATH": str(fakes)}
    extra = ["--coordinator-module", "fake_coordinator", "--workers-module", "fake_workers"]
    port = free_port()
    launcher = launch(1, free_port(), [*extra, "--metrics-port", str(port)], env)
    try:
        launcher.wait_ready(timeout=30)
        assert f"metrics at http://127.0.0.1:{port}/metrics" in launcher.output()
        assert listening_ports(launcher.pid) == {port}
        directory = Path(environ(started_pids(launcher)["w1-1"])["PROMETHEUS_MULTIPROC_DIR"])
        assert directory.is_dir()
        status, _, _ = asyncio.run(http(port, path="/metrics"))
        assert status == 200
    finally:
        shut_down(launcher)
    assert launcher.proc.returncode == 0
    assert not directory.exists()
