"""What an operator sees when a cluster cannot start: the launcher stops at once, with a
non-zero exit and a line of its own that says why (a taken port, a host that does not
resolve, a cluster already on the port); and what it says while it stops."""

from __future__ import annotations

import contextlib
import io
import json
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from scripts.cluster import parse_args
from scripts.launcher.config import Config
from scripts.launcher.supervise import Cluster, last_words
from shared import endpoints
from tests.support import ManagedProcess, free_port

# --------------------------------------------------------------------------- pure logic


def test_last_words_are_the_message_of_a_text_or_json_line() -> None:
    line = "2026-12-07 16:13:05,426 ERROR workers: worker w1-1 cannot listen on h:1: busy"
    assert last_words(line) == "worker w1-1 cannot listen on h:1: busy"
    assert last_words(json.dumps({"level": "ERROR", "message": "cannot listen"})) == (
        "cannot listen"
    )
    assert last_words("python -m workers: error: argument --x: bad") == (
        "python -m workers: error: argument --x: bad"
    )
    assert last_words("{not json") == "{not json"


def test_no_readiness_is_announced_once_stopping() -> None:
    """A worker that comes up after SIGTERM was received must not make the launcher say
    "ready again" among its stopping lines."""
    out = io.StringIO()
    cluster = Cluster(Config(workers=1, host="127.0.0.1", port=1, metrics_port=0), out=out)
    cluster._on_ready(cluster.coordinator)
    cluster._on_ready(cluster.workers[0])
    assert out.getvalue().count("processes ready") == 1
    cluster.workers[0].ready = False
    cluster._whole = False
    cluster._stop.set()
    cluster._on_ready(cluster.workers[0])
    assert "ready again" not in out.getvalue()


def test_each_role_has_its_own_default_metrics_port(tmp_path: Path) -> None:
    """A machine running --role coordinator and --role workers has metrics from both."""
    (tmp_path / "workers").mkdir()
    for name in ("coordinator.key_secret", "workers/w.key", "coordinator.key"):
        (tmp_path / name).write_text("x")
    (tmp_path / "worker.key_secret").write_text("x")
    keys = ["--keys", str(tmp_path)]
    coordinator = parse_args(["--role", "coordinator", *keys]).metrics_port
    workers = ["--role", "workers", "--coordinator", "127.0.0.1:7100", *keys]
    assert coordinator != parse_args(workers).metrics_port
    assert parse_args(workers).metrics_port == parse_args([]).metrics_port
    assert parse_args(["--role", "coordinator", *keys, "--metrics-port", "9100"]).metrics_port == (
        9100
    )


# --------------------------------------------------------------------------- real processes


@contextlib.contextmanager
def port_taken(port: int, runtime: str) -> Iterator[None]:
    """What http.server does: a plain listening socket, without SO_REUSEPORT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


@contextlib.contextmanager
def nothing(port: int, runtime: str) -> Iterator[None]:
    yield


@contextlib.contextmanager
def cluster_running(port: int, runtime: str) -> Iterator[None]:
    """Another cluster on the port, as far as the backbone can tell: its lock is held."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(endpoints.RUNTIME_ENV, runtime)
        events = endpoints.default_endpoints(port).events
    path = endpoints.ipc_path(events)
    assert path is not None
    path.parent.mkdir(mode=0o700)
    lock = endpoints.Lock.take(events, "coordinator")
    try:
        yield
    finally:
        lock.release()


@pytest.mark.process
@pytest.mark.parametrize(
    ("setup", "host", "expected"),
    [
        (
            port_taken,
            "127.0.0.1",
            "w1-1 refused its options or could not listen (exit code 2): "
            "worker w1-1 cannot listen on 127.0.0.1:{port}: ",
        ),
        (
            nothing,
            "nonexistent.invalid",
            "w1-1 refused its options or could not listen (exit "
            "code 2): worker w1-1 cannot listen on nonexistent.invalid:{port}: ",
        ),
        (
            cluster_running,
            "127.0.0.1",
            "coordinator refused its options or could not listen "
            "(exit code 2): cannot start the backbone: another coordinator is running on ipc://",
        ),
    ],
    ids=["port-taken", "host-unknown", "cluster-on-port"],
)
def test_a_cluster_that_cannot_start_stops_saying_why(
    setup: Callable[[int, str], contextlib.AbstractContextManager[None]], host: str, expected: str
) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="lobby-") as runtime, setup(port, runtime):
        args = ["--workers", "1", "--host", host, "--port", str(port), "--metrics-port", "0"]
        launcher = ManagedProcess("scripts.cluster", args, env={"PRESENCE_RUNTIME_DIR": runtime})
        try:
            assert launcher.proc.wait(20) == 2, launcher.output()
        finally:
            launcher.stop()
    lines = [line for line in launcher.output().splitlines() if line.startswith("cluster ")]
    said = next((line for line in lines if "refused its options" in line), "")
    assert expected.format(port=port) in said, launcher.output()
    assert said.endswith("restarting cannot help: stopping")
    reason = said.split(" (exit code 2): ", 1)[1].removesuffix("; restarting cannot help: stopping")
    assert lines[-1].endswith(f"stopped (exit code 2): {said.split()[2]} did not start: {reason}")
    if setup is port_taken:
        assert "address already in use" in said
    if setup is cluster_running:
        assert f"a cluster already runs on port {port}" in said
        assert "make run PORT=" in said
    assert not any(line.endswith("ready: connect to") for line in lines)
    launcher.assert_no_traceback()
