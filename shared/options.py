"""Settings as data: every option of every process is declared once, with its default.

Theory of operation
-------------------
A process's settings are frozen, keyword-only dataclasses. Each field is declared with
:func:`option`, which records the help text, how to read the value from text, and which
values are valid; the default is the dataclass default and is written nowhere else. A
field declared with :func:`group` holds another settings dataclass: a group of options
(``settings.limits.auth_timeout``), which the core that uses it takes whole, so no
value is copied field by field from one class into another.

The command line and the environment are derived from the fields:

* field ``auth_timeout`` is the flag ``--auth-timeout`` and the environment variable
  ``PRESENCE_AUTH_TIMEOUT``; the variable, when set, replaces the default and the flag
  replaces both;
* :func:`build_parser` adds one argparse group per settings group, in declaration order,
  and shows each default (or ``off`` for ``None``) and its variable in ``--help``;
* :func:`from_args` rebuilds the settings from the parsed arguments.

Every settings class calls :func:`validate` from ``__post_init__``, so a bad value is
refused wherever the settings are made (command line, environment, tests, scripts) with a
:class:`SettingsError` that names the option: ``--hwm must be at least 1, not 0``. A
process turns that into a usage error (exit code 2) before it opens any socket.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import Field
from typing import Any, Final, TypeVar

T = TypeVar("T")

ENV_PREFIX: Final = "PRESENCE_"

Check = Callable[[Any], str | None]
"""Returns what is wrong with a value (``"must be positive"``), or ``None``."""


class SettingsError(ValueError):
    """A setting has a value that would make its bound or timer meaningless."""


# ------------------------------------------------------------ checks


def positive(value: float) -> str | None:
    return None if value > 0 and math.isfinite(value) else "must be positive"


def non_negative(value: float) -> str | None:
    return None if value >= 0 and math.isfinite(value) else "must not be negative"


def at_least(minimum: float) -> Check:
    def check(value: float) -> str | None:
        return (
            None if value >= minimum and math.isfinite(value) else f"must be at least {minimum:g}"
        )

    return check


def port_number(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be a port number, 0-65535"


def optional(check: Check) -> Check:
    """``check``, or nothing for ``None`` (an option that can be off)."""

    def check_optional(value: Any) -> str | None:
        return None if value is None else check(value)

    return check_optional


# ------------------------------------------------------------ declaring


def option(
    default: T,
    help: str,
    *,
    check: Check | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
) -> T:
    """A setting with ``default``. ``parse`` reads it from text (default: the type of
    ``default``); ``check`` refuses bad values; ``shown`` is the default as ``--help``
    writes it (for defaults computed at start, such as a random id)."""
    meta = {"help": help, "check": check, "parse": parse, "choices": choices, "shown": shown}
    return dataclasses.field(default=default, metadata=meta)


def group(factory: Callable[[], T], title: str) -> T:
    """A group of options: a field holding another settings dataclass."""
    return dataclasses.field(default_factory=factory, metadata={"group": title})


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def validate(settings: Any) -> None:
    """Run every option's check on ``settings`` (one level: groups validate themselves)."""
    for f in dataclasses.fields(settings):
        check = f.metadata.get("check")
        if check is not None:
            value = getattr(settings, f.name)
            problem = check(value)
            if problem is not None:
                raise SettingsError(f"{flag(f.name)} {problem}, not {value!r}")


def require(condition: bool, message: str) -> None:
    """A rule between options (``--max-batch-window must be at least --batch-window``)."""
    if not condition:
        raise SettingsError(message)


def _options(cls: type[Any]) -> Iterator[tuple[str | None, Field[Any]]]:
    """Every option of ``cls``, depth first, with the title of the group it is in."""
    for f in dataclasses.fields(cls):
        if "group" in f.metadata:
            assert f.default_factory is not dataclasses.MISSING
            inner = type(f.default_factory())
            for title, inner_field in _options(inner):
                yield title or f.metadata["group"], inner_field
        else:
            yield None, f


# ------------------------------------------------------------ the command line


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


def _parser_of(f: Field[Any]) -> Callable[[str], Any]:
    parse = f.metadata.get("parse")
    if parse is not None:
        return parse  # type: ignore[no-any-return]
    default = f.default
    if isinstance(default, bool):
        return parse_bool
    if isinstance(default, int):
        return int
    if isinstance(default, float):
        return float
    return str


def build_parser(cls: type[Any], *, prog: str, description: str) -> argparse.ArgumentParser:
    """The command line of the settings class ``cls``; defaults come from the environment
    (``PRESENCE_<NAME>``) when set there, else from ``cls``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    groups: dict[str, Any] = {}
    for title, f in _options(cls):
        where: Any = parser
        if title is not None:
            if title not in groups:
                groups[title] = parser.add_argument_group(title)
            where = groups[title]
        parse = _parser_of(f)
        env = env_name(f.name)
        default = f.default
        raw = os.environ.get(env)
        if raw:
            try:
                default = parse(raw)
            except ValueError:
                parser.error(f"invalid value for {env}: {raw!r}")
        shown = f.metadata.get("shown")
        if shown is None:
            shown = "off" if f.default is None else "%(default)s"
        text = f"{f.metadata['help']} (env {env}; default {shown})"
        if isinstance(f.default, bool):
            where.add_argument(flag(f.name), action="store_true", default=default, help=text)
        elif isinstance(f.default, tuple):  # a list: repeatable, each a comma list
            where.add_argument(flag(f.name), type=parse, default=default, help=text, action=_More)
        else:
            choices = f.metadata.get("choices")
            where.add_argument(
                flag(f.name), type=parse, default=default, choices=choices, help=text
            )
    return parser


class _More(argparse.Action):
    """A list option given more than once: the first replaces the default, the next
    ones add to it (``--public-url A --public-url B,C`` is A, B and C)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: str | None = None,
    ) -> None:
        given = getattr(namespace, self.dest)
        before = () if given is self.default else tuple(given)
        setattr(namespace, self.dest, before + tuple(values))


def from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` (and its groups) from parsed arguments; raises :class:`SettingsError`."""
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if "group" in f.metadata:
            assert f.default_factory is not dataclasses.MISSING
            values[f.name] = from_args(type(f.default_factory()), args)
        else:
            values[f.name] = getattr(args, f.name)
    return cls(**values)


def parse_args(
    cls: type[T], argv: list[str] | None, *, prog: str, description: str
) -> tuple[T, argparse.Namespace]:
    """Parse ``argv`` into ``cls``; a bad value exits with a usage error (code 2)."""
    parser = build_parser(cls, prog=prog, description=description)
    args = parser.parse_args(argv)
    try:
        return from_args(cls, args), args
    except SettingsError as exc:
        parser.error(str(exc))
