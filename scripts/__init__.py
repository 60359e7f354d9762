"""Tools run from the repository root with the project's own Python, as files
(``.venv/bin/python scripts/cluster.py``) or modules (``.venv/bin/python -m
scripts.loadtest``).

Every script imports this package before any dependency, and importing it checks that
this Python has the project's dependencies (``make install`` puts them in ``.venv``): a
script started with another Python stops with a line that says which one to use, not
with a ``ModuleNotFoundError`` traceback."""

import re
import sys
from importlib import metadata

PROJECT = "presence-lobby"
"""The distribution ``make install`` installs (pyproject.toml's ``name``)."""


def missing_dependencies() -> list[str]:
    """The project's unconditional requirements this Python lacks (the project itself
    when it was never installed: its metadata names them)."""
    try:
        required = metadata.requires(PROJECT) or []
    except metadata.PackageNotFoundError:
        return [PROJECT]
    lacking = []
    for requirement in required:
        if ";" in requirement:
            continue  # an extra, or for some platforms only
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        try:
            metadata.distribution(name.group(0) if name else requirement)
        except metadata.PackageNotFoundError:
            lacking.append(name.group(0) if name else requirement)
    return lacking


if lacking := missing_dependencies():
    sys.exit(
        f"{sys.argv[0] or 'python'}: this Python ({sys.executable}) lacks "
        f"{', '.join(lacking)}: run it with .venv/bin/python (make install first)"
    )
