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
