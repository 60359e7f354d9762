"""The open-file limit a server process raises at start (shared/fdlimit.py)."""

from __future__ import annotations

import logging
import resource

import pytest

from shared import fdlimit


class FakeLimits:
    """``getrlimit``/``setrlimit`` for RLIMIT_NOFILE, with a kernel's refusals."""

    def __init__(self, soft: int, hard: int, *, refuse: bool = False) -> None:
        self.soft, self.hard, self.refuse = soft, hard, refuse
        self.calls: list[tuple[int, int]] = []

    def get(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.soft, self.hard

    def put(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.calls.append(limits)
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        if limits[0] > self.hard or limits[1] > self.hard:
            raise ValueError("not allowed to raise maximum limit")
        self.soft, self.hard = limits


def test_soft_limit_is_raised_to_the_hard_limit() -> None:
    fake = FakeLimits(1024, 20000)
    limit = fdlimit.raise_to_hard(fake.get, fake.put)
    assert limit == fdlimit.FdLimit(before=1024, soft=20000, hard=20000)
    assert (fake.soft, fake.hard) == (20000, 20000)


def test_a_soft_limit_already_at_the_hard_limit_is_left_alone() -> None:
    fake = FakeLimits(20000, 20000)
    assert fdlimit.raise_to_hard(fake.get, fake.put) == fdlimit.FdLimit(20000, 20000, 20000)
    assert fake.calls == []


def test_an_unlimited_hard_limit_leaves_the_soft_one_alone() -> None:
    fake = FakeLimits(1024, resource.RLIM_INFINITY)
    limit = fdlimit.raise_to_hard(fake.get, fake.put)
    assert (limit.soft, limit.error) == (1024, None)
    assert fake.calls == []


def test_a_refusal_is_reported_not_raised() -> None:
    fake = FakeLimits(1024, 20000, refuse=True)
    limit = fdlimit.raise_to_hard(fake.get, fake.put)
    assert (limit.before, limit.soft, limit.hard) == (1024, 1024, 20000)
    assert limit.error is not None and "not allowed" in limit.error


def test_this_process_ends_at_its_hard_limit(caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        limit = fdlimit.raise_and_log(logging.getLogger("test.fdlimit"))
    assert limit.before == soft
    assert limit.soft == (soft if hard == resource.RLIM_INFINITY else hard)
    assert [r.getMessage() for r in caplog.records] == [
        f"open-file limit {limit.soft} (hard {limit.hard})"
    ]
    assert caplog.records[0].__dict__["event"] == "fd_limit"


@pytest.mark.parametrize(
    ("soft", "wanted", "allowed"),
    [
        (20_000, 50_000, 20_000 - fdlimit.SPARE),  # the files run out first
        (1_048_576, 50_000, 50_000),  # the option decides
        (fdlimit.SPARE + 10, 50_000, 10),
        (100, 50_000, 1),  # never none
        (resource.RLIM_INFINITY, 50_000, 50_000),
    ],
)
def test_connections_are_kept_within_the_open_files(soft: int, wanted: int, allowed: int) -> None:
    assert fdlimit.connections_allowed(soft, wanted) == allowed


def test_a_worker_lowers_max_connections_to_its_files_and_says_which_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from shared import options
    from workers.__main__ import within_files
    from workers.settings import WorkerSettings

    settings, _ = options.parse_args(
        WorkerSettings, ["--max-connections", "30000"], prog="w", description=""
    )
    log = logging.getLogger("test.fdlimit")
    with caplog.at_level(logging.INFO, logger="test.fdlimit"):
        lowered = within_files(settings, 20_000, log)
        kept = within_files(settings, 1_000_000, log)
    assert lowered.admission.max_connections == 20_000 - fdlimit.SPARE
    assert lowered.admission.max_pending_auth == settings.admission.max_pending_auth
    assert kept is settings
    (record,) = caplog.records
    assert record.levelno == logging.WARNING
    assert "open-file limit (20000" in record.getMessage()
    assert "ulimit -n" in record.getMessage()
