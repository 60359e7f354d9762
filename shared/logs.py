"""Logging for every process: one options group and one way to set it up."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

from shared.options import option, validate

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass(frozen=True, slots=True, kw_only=True)
class Logging:
    log_level: str = option(
        "INFO", "DEBUG, INFO, WARNING or ERROR", parse=str.upper, choices=LEVELS
    )

    def __post_init__(self) -> None:
        validate(self)


def configure(settings: Logging) -> None:
    """Plain text lines on stderr. Secrets (secret keys, signatures) and message bodies
    are never logged, at any level."""
    logging.basicConfig(
        level=settings.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs client mistakes (bad handshakes) with tracebacks at DEBUG, and
    # every refused request at INFO: keep its own logger to warnings.
    logging.getLogger("websockets").setLevel(logging.WARNING)
