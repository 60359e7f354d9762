"""shared.notify: the sd_notify protocol, sent to a datagram socket the test holds."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared import notify
from tests.support import AS_ROOT, NOBODY, another_user, wait_until


@pytest.fixture
def listener(monkeypatch: pytest.MonkeyPatch) -> Iterator[notify.Listener]:
    sock = notify.Listener()
    monkeypatch.setenv("NOTIFY_SOCKET", sock.address)
    yield sock
    sock.close()


def test_ready_sends_one_datagram_with_the_status(listener: notify.Listener) -> None:
    notify.ready("worker w1 ready\nat ws://x")  # a status is one line
    assert listener.receive(5) == [{"READY": "1", "STATUS": "worker w1 ready at ws://x"}]
    notify.stopping()
    assert listener.receive(5) == [{"STOPPING": "1"}]
    assert listener.count("READY") == 1 and listener.count("STOPPING") == 1


def test_the_exact_bytes_on_a_path_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        notify.ready("up")
        assert sock.recv(4096) == b"READY=1\nSTATUS=up"
        notify.ready()
        assert sock.recv(4096) == b"READY=1"


def test_unset_variable_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    listener = notify.Listener()
    try:
        notify.ready("nobody listens")
        notify.stopping()
        assert listener.receive(0) == []
    finally:
        listener.close()


@pytest.mark.parametrize(
    "target", ["@presence-notify-nobody-binds-this", "/nonexistent/notify", "vsock:2:1"]
)
def test_an_unreachable_socket_does_not_raise(
    target: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", target)
    with caplog.at_level(logging.WARNING, logger="notify"):
        notify.ready("anyone?")
        notify.stopping()
    assert len(caplog.records) == 2 and target in caplog.text


def test_parse_skips_malformed_lines() -> None:
    assert notify.parse(b"READY=1\ngarbage\n=x\nSTATUS=a=b\n") == {"READY": "1", "STATUS": "a=b"}


def test_receive_takes_everything_queued(listener: notify.Listener) -> None:
    for n in range(3):
        notify.ready(str(n))
    got = listener.receive(5)
    assert [g["STATUS"] for g in got] == ["0", "1", "2"]
    assert listener.receive(0) == []
    assert listener.count() == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PASSCRED is Linux's")
def test_once_it_expects_a_pid_a_listener_takes_that_process_alone() -> None:
    listener = notify.Listener()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            target = "\0" + listener.address[1:]
            sock.sendto(b"READY=1", target)
            assert listener.receive(5) == [{"READY": "1"}]  # no pid expected yet: the user's
            listener.expect(os.getpid() + 1)
            sock.sendto(b"READY=1", target)
            wait_until(lambda: bool(listener.receive(0.01) or listener.ignored), "the datagram")
            assert listener.ignored == [(os.getpid(), os.getuid())]
            listener.expect(os.getpid())
            sock.sendto(b"READY=1", target)
            assert listener.receive(5) == [{"READY": "1"}]
    finally:
        listener.close()


@pytest.mark.skipif(not AS_ROOT, reason="acting as another user needs root (as in CI)")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_PASSCRED is Linux's")
@pytest.mark.process
def test_a_listener_takes_nothing_from_another_user() -> None:
    listener = notify.Listener()

    def say_ready() -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", "\0" + listener.address[1:])
        return str(os.getpid())

    try:
        with another_user(say_ready) as pid:
            wait_until(lambda: bool(listener.receive(0.01) or listener.ignored), "the datagram")
        assert listener.ignored == [(int(pid), NOBODY)]
        assert listener.count() == 0
    finally:
        listener.close()
