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
from collections import Counter
from collections.abc import Callable
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
    # What clients can make those libraries repeat, a few lines a second at most.
    limited = Limited(logging.getLogger("logs"))
    for name in FLOODED_LIBRARIES:
        library = logging.getLogger(name)
        for old in [f for f in library.filters if isinstance(f, FloodFilter)]:
            library.removeFilter(old)
        library.addFilter(FloodFilter(limited))


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


class Limited:
    """A log line a peer or client can make a process write over and over (an
    undecodable frame, an unexpected message, a refused sender), bounded: at most
    ``burst`` such lines per ``every`` seconds for each event name; the rest are
    counted, and the count is logged with the next line that gets through, or by
    :func:`flush_suppressed` (each process calls it on its tick), as
    ``N more <event> lines suppressed in the last S s``. So a flood costs a few lines a
    second whatever its rate, and nothing is lost from the tally.

    ``clock`` is for tests; every instance is also kept for :func:`flush_suppressed`."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        every: float = 1.0,
        burst: int = 5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.every = every
        self.burst = burst
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}  # event -> (start, lines let out)
        self.suppressed: Counter[str] = Counter()
        _limiters.append(self)

    def log(self, level: int, name: str, msg: str, *args: Any, **fields: Any) -> bool:
        """Log ``msg % args`` at ``level`` as event ``name`` with ``fields``, unless this
        event is over its budget (then it is counted); returns whether it was logged."""
        if not self.logger.isEnabledFor(level) or not self.admit(name):
            return False
        self.logger.log(level, msg, *args, extra=event(name, **fields))
        return True

    def admit(self, name: str) -> bool:
        """Whether one more line of event ``name`` fits its budget now (if not, it is
        counted): for lines written by someone else (:class:`FloodFilter`)."""
        now = self._clock()
        start, lines = self._windows.get(name, (float("-inf"), 0))
        if now - start >= self.every:
            self._summarise(name, now - start if start > float("-inf") else 0.0)
            start, lines = now, 0
        if lines >= self.burst:
            self.suppressed[name] += 1
            self._windows[name] = (start, lines)
            return False
        self._windows[name] = (start, lines + 1)
        return True

    def warning(self, name: str, msg: str, *args: Any, **fields: Any) -> bool:
        return self.log(logging.WARNING, name, msg, *args, **fields)

    def info(self, name: str, msg: str, *args: Any, **fields: Any) -> bool:
        return self.log(logging.INFO, name, msg, *args, **fields)

    def flush(self) -> None:
        """Log the counts of events whose window is over (a flood that stopped)."""
        now = self._clock()
        for name in list(self.suppressed):
            start, _ = self._windows.get(name, (now, 0))
            if now - start >= self.every:
                self._summarise(name, now - start)
                del self._windows[name]

    def _summarise(self, name: str, seconds: float) -> None:
        count = self.suppressed.pop(name, 0)
        if count:
            self.logger.warning(
                "%d more %s lines suppressed in the last %.1fs",
                count,
                name,
                seconds,
                extra=event("log_suppressed", suppressed=count, of=name, seconds=seconds),
            )


_limiters: list[Limited] = []


class FloodFilter(logging.Filter):
    """The same bound on a library's logger, whose calls this code does not make: each
    message template (its unformatted text) is an event of ``limited``, whose logger
    writes the counts. On ``asyncio`` (``socket.send() raised exception.`` for every
    write to a connection a client dropped) and ``websockets``."""

    def __init__(self, limited: Limited) -> None:
        super().__init__()
        self.limited = limited

    def filter(self, record: logging.LogRecord) -> bool:
        return self.limited.admit(f"{record.name}: {record.msg}")


FLOODED_LIBRARIES: Final = ("asyncio", "websockets")


def flush_suppressed() -> None:
    """Log what every :class:`Limited` of this process held back and is due."""
    for limiter in _limiters:
        limiter.flush()
