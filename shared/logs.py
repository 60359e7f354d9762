"""Logging for every process: one options group and one way to set it up.

Two formats (``--log-format``):

* ``text`` (the default): plain lines for people, ``TIME LEVEL LOGGER: message``.
* ``json``: one JSON object per line for machines (python-json-logger's formatter):
  ``time`` (ISO 8601, UTC), ``level``, ``role`` (``coordinator`` or ``worker``), ``id``
  (the coordinator's epoch, the worker's id), ``event`` (a stable name), ``message``
  (the text line's message), ``logger``, and the event's fields.

A log call names its event and fields with ``extra=logs.event("worker_registered",
worker=w, sessions=n)``: the text line is unchanged (it shows the message only), the
JSON line carries them as keys. A line without an event (another library's) has the
event ``log``. Field names must not be those of :class:`logging.LogRecord`
(``name``, ``msg``, ``module``, ``process``...): logging refuses them.

Secrets (secret keys, signatures) and message bodies are never logged, at any level, in
either format.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, TextIO

from shared.options import option, validate

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
FORMATS = ("text", "json")
JSON_KEYS: Final = ("time", "level", "role", "id", "event", "message", "logger")
"""The keys every JSON line has, in this order; the event's fields follow."""
NO_EVENT: Final = "log"


@dataclass(frozen=True, slots=True, kw_only=True)
class Logging:
    log_level: str = option(
        "INFO", "DEBUG, INFO, WARNING or ERROR", parse=str.upper, choices=LEVELS
    )
    log_format: str = option(
        "text",
        "text (plain lines) or json (one JSON object per line: time, level, role, id, "
        "event and its fields)",
        parse=str.lower,
        choices=FORMATS,
        check=lambda value: None if value in FORMATS else "must be text or json",
    )

    def __post_init__(self) -> None:
        validate(self)


def event(name: str, **fields: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the event's name and its fields."""
    return {"event": name, **fields}


class _Context(logging.Filter):
    """Adds the process's role and id, the event (``log`` when the call named none) and
    the time to every record, for the JSON formatter."""

    def __init__(self) -> None:
        super().__init__()
        self.role = ""
        self.ident = ""

    def filter(self, record: logging.LogRecord) -> bool:
        record.time = timestamp(record.created)
        record.role = self.role
        record.id = self.ident
        if not hasattr(record, "event"):
            record.event = NO_EVENT
        return True


_context = _Context()


def configure(settings: Logging, *, role: str, ident: str = "") -> None:
    """Log to stderr in the chosen format, as ``role`` (``coordinator``, ``worker``)
    with ``ident`` (see :func:`identify`)."""
    _context.role = role
    identify(ident)
    if settings.log_format == "json":
        logging.captureWarnings(True)  # a warning is a JSON line too
    logging.basicConfig(level=settings.log_level, handlers=[handler(settings.log_format)])
    # websockets logs client mistakes (bad handshakes) with tracebacks at DEBUG, and
    # every refused request at INFO: keep its own logger to warnings.
    logging.getLogger("websockets").setLevel(logging.WARNING)


def handler(log_format: str, stream: TextIO | None = None) -> logging.Handler:
    """A handler writing ``log_format`` lines to ``stream`` (stderr)."""
    out = logging.StreamHandler(sys.stderr if stream is None else stream)
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        out.addFilter(_context)
        out.setFormatter(
            JsonFormatter(
                ["time", "levelname", "role", "id", "event", "message", "name"],
                rename_fields={"levelname": "level", "name": "logger"},
            )
        )
    else:
        out.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    return out


def timestamp(seconds: float) -> str:
    """The ``time`` of a JSON line: ISO 8601, UTC, milliseconds."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")


def json_line(
    level: str, role: str, ident: str, event: str, message: str, logger: str, **fields: Any
) -> str:
    """One JSON line written without :mod:`logging`, with the keys (:data:`JSON_KEYS`,
    in order) and the time of the lines the processes log: for the launcher, which
    writes its own lines among theirs."""
    values = (timestamp(time.time()), level, role, ident, event, message, logger)
    return json.dumps({**dict(zip(JSON_KEYS, values, strict=True)), **fields})


def identify(ident: str) -> None:
    """The process's id in JSON lines from now on: the coordinator's epoch (it may move),
    the worker's id."""
    _context.ident = ident
