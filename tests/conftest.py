from __future__ import annotations

import signal
import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from tests.support import Cluster, ManagedProcess

SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn", "os.system"}
)
"""Audit events (PEP 578) by which Python code starts another process."""

_running: list[pytest.Item] = []
"""The test being run (its setup, call and teardown), if any."""


def _refuse_unmarked_spawns(event: str, args: tuple[object, ...]) -> None:
    """Fail a test that starts a process without the ``process`` marker, at the spawn.

    The marker is what keeps ``make test-fast`` (``-m "not process"``) fast; this makes
    forgetting it an error instead of a slow "fast" run. It sees every spawn by Python
    code (subprocess, asyncio, multiprocessing, os.*), including fixtures' and threads'.
    """
    if event in SPAWN_EVENTS and _running and _running[-1].get_closest_marker("process") is None:
        pytest.fail(
            f"{_running[-1].nodeid} starts a process ({event}) but is not marked "
            "@pytest.mark.process",
            pytrace=False,
        )


sys.addaudithook(_refuse_unmarked_spawns)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Generator[None, object, object]:
    _running.append(item)
    try:
        return (yield)
    finally:
        _running.pop()


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A run stopped with SIGTERM (a CI time limit, ``timeout``) unwinds like Ctrl-C, so
    every fixture and ``finally`` stops the processes it started."""
    signal.signal(signal.SIGTERM, _interrupt)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Whatever a test left running, nothing outlives the run."""
    left = ManagedProcess.kill_all()
    if left:
        print(f"\nkilled {len(left)} test processes left running: {', '.join(left)}")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two workers and a coordinator with the default (batching) settings."""
    with Cluster(tmp_path, workers=2) as c:
        yield c
