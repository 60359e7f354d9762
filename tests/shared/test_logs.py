"""The two log formats: the same call makes an unchanged text line and a JSON object."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared import logs


@pytest.fixture
def logger() -> Iterator[logging.Logger]:
    log = logging.getLogger("test-logs")
    log.setLevel(logging.DEBUG)
    log.propagate = False
    yield log
    log.handlers.clear()


def written(log: logging.Logger, log_format: str, emit: object) -> str:
    stream = io.StringIO()
    log.handlers[:] = [logs.handler(log_format, stream)]
    assert callable(emit)
    emit()
    return stream.getvalue()


def test_an_event_is_keys_in_json_and_the_same_text_line_as_before(
    logger: logging.Logger,
) -> None:
    logs.identify("w7")
    logs._context.role = "worker"

    def emit() -> None:
        logger.info(
            "worker %s registered with %d sessions",
            "w1",
            3,
            extra=logs.event("worker_registered", worker="w1", sessions=3),
        )

    text = written(logger, "text", emit)
    assert text.endswith(" INFO test-logs: worker w1 registered with 3 sessions\n")
    (line,) = written(logger, "json", emit).splitlines()
    record = json.loads(line)
    assert list(record)[: len(logs.JSON_KEYS)] == list(logs.JSON_KEYS)
    assert record["time"].endswith("+00:00") and record["level"] == "INFO"
    assert (record["role"], record["id"], record["event"]) == ("worker", "w7", "worker_registered")
    assert record["message"] == "worker w1 registered with 3 sessions"
    assert (record["logger"], record["worker"], record["sessions"]) == ("test-logs", "w1", 3)


def test_a_line_without_an_event_is_a_log_event_and_exceptions_stay_one_line(
    logger: logging.Logger,
) -> None:
    def emit() -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("it failed")

    (line,) = written(logger, "json", emit).splitlines()
    record = json.loads(line)
    assert record["event"] == logs.NO_EVENT and record["level"] == "ERROR"
    assert "ValueError: boom" in record["exc_info"]


def test_the_option_is_checked() -> None:
    assert logs.Logging(log_format="json").log_format == "json"
    with pytest.raises(ValueError):
        logs.Logging(log_format="xml")


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _limited(burst: int = 3) -> tuple[logs.Limited, list[logging.LogRecord], _Clock]:
    logger = logging.getLogger(f"test.limited.{id(object())}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger.addHandler(Keep())
    clock = _Clock()
    return logs.Limited(logger, every=1.0, burst=burst, clock=clock), records, clock


def test_a_flood_gives_a_few_lines_a_second_and_the_count_of_the_rest() -> None:
    limited, records, clock = _limited(burst=3)
    logged = [limited.warning("junk", "junk %d", i, n=i) for i in range(20_000)]
    assert logged.count(True) == 3 and len(records) == 3
    assert [r.getMessage() for r in records] == ["junk 0", "junk 1", "junk 2"]
    assert records[0].event == "junk" and records[0].n == 0  # type: ignore[attr-defined]
    clock.now += 1.0
    limited.warning("junk", "junk again")
    summary, again = records[3:]
    assert summary.getMessage() == "19997 more junk lines suppressed in the last 1.0s"
    assert summary.suppressed == 19_997 and summary.of == "junk"  # type: ignore[attr-defined]
    assert again.getMessage() == "junk again"


def test_each_event_has_its_own_budget() -> None:
    limited, records, _ = _limited(burst=1)
    for _ in range(10):
        limited.warning("a", "a")
        limited.warning("b", "b")
    assert [r.getMessage() for r in records] == ["a", "b"]
    assert limited.suppressed == {"a": 9, "b": 9}


def test_a_flood_that_stops_is_summed_by_flush_once_its_window_is_over() -> None:
    limited, records, clock = _limited(burst=1)
    for _ in range(5):
        limited.warning("junk", "junk")
    logs.flush_suppressed()  # the window is not over: nothing yet
    assert len(records) == 1
    clock.now += 1.5
    logs.flush_suppressed()
    assert records[-1].getMessage() == "4 more junk lines suppressed in the last 1.5s"
    logs.flush_suppressed()
    assert len(records) == 2  # summed once
    limited.warning("junk", "junk")  # a new window: let through at once
    assert len(records) == 3


def test_a_disabled_level_is_neither_logged_nor_counted() -> None:
    limited, records, _ = _limited()
    for _ in range(10):
        assert not limited.log(logging.DEBUG, "quiet", "quiet")
    assert records == [] and not limited.suppressed


def test_a_librarys_repeated_line_is_bounded_and_counted_by_our_logger() -> None:
    limited, records, clock = _limited(burst=2)
    library = logging.getLogger("test.library.flood")
    library.propagate = False
    passed: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            passed.append(record.getMessage())

    library.addHandler(Keep())
    library.addFilter(logs.FloodFilter(limited))
    for _ in range(1000):
        library.warning("socket.send() raised exception.")
    library.warning("something else")
    assert passed == ["socket.send() raised exception."] * 2 + ["something else"]
    clock.now += 1.0
    limited.flush()
    assert records[-1].getMessage() == (
        "998 more test.library.flood: socket.send() raised exception. lines suppressed "
        "in the last 1.0s"
    )
