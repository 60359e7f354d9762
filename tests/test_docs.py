"""The documents quote the defaults the code has: each default is declared once (the
settings dataclasses, :mod:`shared.defaults`), and a document that quotes it is checked
here, so a changed default fails a test naming the document, the line and both values.

What counts as quoting a default, in README.md and docs/*.md:

* in prose, an option in backticks followed by a parenthesis that starts with a value:
  ``--auth-timeout`` (10 s), ``--hwm`` (100,000), ``--api-port`` (off); or a value
  followed by the option in a parenthesis: **4 KiB** (``--pre-auth-frame-bytes``);
* in a table with a ``default`` column, every option named in the row's first cells.
  A table whose first header cell names a process (``worker option``, ``coordinator
  option``, ``launcher option``) is checked against that process alone, and
  docs/operating.md must list every option of the worker, the coordinator and the
  launcher (``scripts/cluster.py --help``) in such tables.

Values are read with their units (ms, s, min, KiB, MiB, GiB, %, /s, thousands commas);
``off`` and ``none`` stand for an option that is off, ``on`` for a switch that is on.
Options whose default is computed at start (a random worker id, endpoints derived from
the port) are listed but their value is not compared.

Also checked: the defaults the contract itself states (docs/PROTOCOL.md, its port and
its "Limits and timers") against :mod:`shared.defaults` and :mod:`shared.protocol`; the
Makefile's ``PORT ?=`` and ``HOST ?=``; and every link between the documents. The
shipped configuration files (docs/deploy/) are read for quoted defaults too.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coordinator.settings import CoordinatorSettings
from scripts import cluster
from scripts.loadtest import __main__ as loadtest
from shared import defaults, options, protocol
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DEPLOYED = sorted(p for p in (ROOT / "docs" / "deploy").rglob("*") if p.is_file())
"""The shipped configuration files: their comments quote defaults too."""
OPERATING = ROOT / "docs" / "operating.md"
COMPUTED = object()
"""A default computed when the process starts: named in the docs, not compared."""

UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "min": 60.0,
    "KiB": 1024.0,
    "MiB": 1024.0**2,
    "GiB": 1024.0**3,
    "%": 0.01,
    "/s": 1.0,
}
OFF = ("off", "none")
ON = ("on", "yes")
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"
VALUE = re.compile(rf"(?<![\w.-])({NUMBER})\s*(ms|s|min|KiB|MiB|GiB|%|/s)?(?![\w.])")


# --------------------------------------------------------------------------- the settings


def _settings_defaults(cls: type[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for _title, f in options._options(cls):
        value, shown = f.default, f.metadata.get("shown")
        if shown is not None and shown.lower() not in OFF and value in (None, ""):
            value = COMPUTED  # a random id, endpoints derived from the port
        found[options.flag(f.name)] = value
    return found


def _launcher_defaults() -> dict[str, Any]:
    """The launcher's options (it parses with argparse): its parser, caught in use."""
    parsers: list[argparse.ArgumentParser] = []
    parse = argparse.ArgumentParser.parse_args

    def catch(self: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> Any:
        parsers.append(self)
        return parse(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", catch)
        cluster.parse_args([])
    found = _parser_defaults(parsers[0])
    found["--workers"] = COMPUTED  # the number of CPUs of this machine
    found["--metrics-port"] = cluster.DEFAULT_METRICS_PORT  # with --role all or workers
    del found["--help"]
    return found


def _parser_defaults(parser: argparse.ArgumentParser) -> dict[str, Any]:
    """The options of an argparse command line (its own, not its subcommands')."""
    return {
        action.option_strings[-1]: action.default
        for action in parser._actions
        if action.option_strings and action.option_strings[-1].startswith("--")
    }


PROCESSES: dict[str, dict[str, Any]] = {
    "worker": _settings_defaults(WorkerSettings),
    "coordinator": _settings_defaults(CoordinatorSettings),
    "launcher": _launcher_defaults(),
    "load generator": _parser_defaults(loadtest.build_parser()),
}


# --------------------------------------------------------------------------- reading values


def _number(text: str) -> float | None:
    """The value at the start of ``text`` in base units, or None if it starts otherwise."""
    match = VALUE.match(text)
    if match is None:
        return None
    return float(match.group(1).replace(",", "")) * UNITS.get(match.group(2) or "", 1.0)


def _clean(text: str) -> str:
    text = text.strip().replace("**", "").replace("`", "")
    text = re.sub(r"^(?:the\s+)?default:?\s+", "", text, flags=re.IGNORECASE)
    return text.strip()


def disagreement(quoted: str, default: Any) -> str | None:
    """Why the quoted text is not ``default`` (None when it is, or when it is no value)."""
    text = _clean(quoted)
    if default is COMPUTED or not text:
        return None
    word = text.split()[0].rstrip(".,;:")
    if word.lower() in OFF:
        off = default in (None, False, (), "none", "off")
        return None if off else f"quoted as {word}, but it is on by default ({default!r})"
    if word.lower() in ON:
        return None if default is True else f"quoted as {word}, but it is off by default"
    if isinstance(default, str):
        return None if word == default else f"quoted as {word!r}, but its default is {default!r}"
    value = _number(text)
    if value is None:
        return None  # not a value: prose that happens to follow the option
    if default is None or isinstance(default, bool | tuple):
        return f"quoted as {text!r}, but it is off by default"
    if math.isclose(value, float(default), rel_tol=1e-9):
        return None
    return f"quoted as {text!r}, but its default is {default!r}"


# --------------------------------------------------------------------------- finding quotes


@dataclasses.dataclass(frozen=True)
class Quote:
    where: str
    flag: str
    text: str
    process: str | None  # None: any process that has the option


PROSE_AFTER = re.compile(r"`(--[a-z][a-z0-9-]*)`\s+\(([^)]*)\)")
PROSE_BEFORE = re.compile(
    rf"(\*\*[^*\n]+\*\*|{NUMBER}\s*(?:ms|s|min|KiB|MiB|GiB|%|/s)?)\s+\(`(--[a-z][a-z0-9-]*)`[,)]"
)
FLAG = re.compile(r"`(--[a-z][a-z0-9-]*)`")


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def quotes(path: Path) -> Iterator[Quote]:
    lines = path.read_text(encoding="utf-8").splitlines()
    name = path.relative_to(ROOT).as_posix()
    in_code = False
    header: list[str] | None = None
    for number, line in enumerate(lines, 1):
        where = f"{name}:{number}"
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            continue
        if line.startswith("|"):
            cells = _cells(line)
            if header is None:
                header = [cell.lower() for cell in cells]
                continue
            if set("".join(cells)) <= set("-: "):
                continue  # the rule under the header
            yield from _table_row(where, header, cells)
            continue
        header = None
        for match in PROSE_AFTER.finditer(line):
            yield Quote(where, match.group(1), match.group(2).split(";")[0], None)
        for match in PROSE_BEFORE.finditer(line):
            yield Quote(where, match.group(2), match.group(1), None)


def _table_row(where: str, header: list[str], cells: list[str]) -> Iterator[Quote]:
    if "default" not in header or len(cells) != len(header):
        for cell in cells:  # any other table: its cells are prose
            for match in PROSE_AFTER.finditer(cell):
                yield Quote(where, match.group(1), match.group(2).split(";")[0], None)
            for match in PROSE_BEFORE.finditer(cell):
                yield Quote(where, match.group(2), match.group(1), None)
        return
    column = header.index("default")
    process = header[0].removesuffix(" option").strip()
    flags = [flag for cell in cells[:column] for flag in FLAG.findall(cell)]
    values = cells[column].split(", ")  # `--host`, `--port` | 127.0.0.1, 8765
    if len(values) != len(flags):
        values = [cells[column]] * len(flags)
    for flag, value in zip(flags, values, strict=True):
        yield Quote(where, flag, value, process if process in PROCESSES else None)


# --------------------------------------------------------------------------- the tests


def _defaults_of(quote: Quote) -> dict[str, Any]:
    names = [quote.process] if quote.process else list(PROCESSES)
    return {name: PROCESSES[name][quote.flag] for name in names if quote.flag in PROCESSES[name]}


def test_every_default_quoted_in_the_documents_is_the_settings_default() -> None:
    problems = []
    for path in [*DOCUMENTS, *DEPLOYED]:
        for quote in quotes(path):
            found = _defaults_of(quote)
            if not found:
                if quote.process is not None or disagreement(quote.text, 0) is not None:
                    what = quote.process or "any process"
                    problems.append(f"{quote.where}: {quote.flag} is no option of {what}")
                continue
            wrong = {name: disagreement(quote.text, value) for name, value in found.items()}
            if all(wrong.values()):  # the default of no process that has this option
                why = "; ".join(f"{name}: {text}" for name, text in wrong.items())
                problems.append(f"{quote.where}: {quote.flag} {why}")
    assert not problems, "documents disagree with the settings:\n" + "\n".join(problems)


@pytest.mark.parametrize("process", ["worker", "coordinator", "launcher"])
def test_the_operating_guide_lists_every_option(process: str) -> None:
    listed = {q.flag for q in quotes(OPERATING) if q.process == process}
    missing = sorted(set(PROCESSES[process]) - listed)
    assert not missing, f"docs/operating.md has no {process} option table row for {missing}"


CONTRACT_ROWS = {
    "auth deadline": [defaults.AUTH_TIMEOUT],
    "`id`": [1, protocol.MAX_ID_CHARS],
    "`body`": [protocol.MAX_BODY_BYTES],
    "frame size": [protocol.DEFAULT_MAX_FRAME_BYTES],
    "keepalive": [defaults.PING_INTERVAL, defaults.PING_TIMEOUT],
    "stall before 4005": [defaults.STALL_TIMEOUT],
    "cut-off grace": [defaults.CUTOFF_GRACE],
}
"""Rows of the contract's "Limits and timers" table, and the values in them, in order."""


def test_the_contract_states_the_defaults_the_code_has() -> None:
    text = (ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    port = re.search(r"The default port is (\d+)\.", text)
    assert port is not None and int(port.group(1)) == defaults.PORT, "docs/PROTOCOL.md port"
    table = text[text.index("## Limits and timers") :]
    rows = {_cells(line)[0]: _cells(line)[1] for line in table.splitlines() if line.startswith("|")}
    problems = []
    for label, expected in CONTRACT_ROWS.items():
        row = next((cell for name, cell in rows.items() if name.startswith(label)), None)
        if row is None:
            problems.append(f"no row {label!r} in the contract's Limits and timers")
            continue
        quoted = [_number(match.group(0)) for match in VALUE.finditer(row)]
        if quoted != [float(value) for value in expected]:
            problems.append(f"{label}: the contract says {row!r}, the code has {expected}")
    assert not problems, "docs/PROTOCOL.md disagrees with the code:\n" + "\n".join(problems)


def test_the_makefile_runs_on_the_default_host_and_port() -> None:
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assignments = dict(re.findall(r"^(\w+) \?= (.*)$", makefile, flags=re.MULTILINE))
    assert assignments["PORT"] == str(defaults.PORT), "Makefile PORT ?= is not defaults.PORT"
    assert assignments["HOST"] == defaults.HOST, "Makefile HOST ?= is not defaults.HOST"
    metrics = re.search(r"\$\(filter coordinator,\$\(ROLE\)\),(\d+),(\d+)\)", makefile)
    assert metrics is not None, "make help no longer names the metrics ports"
    assert int(metrics.group(1)) == cluster.COORDINATOR_METRICS_PORT
    assert int(metrics.group(2)) == cluster.DEFAULT_METRICS_PORT


def test_the_reader_finds_both_forms_and_both_kinds_of_drift() -> None:
    """The checks above can fail: a drifted number, unit or switch is caught."""
    assert disagreement("10 s", 10.0) is None
    assert disagreement("**128 KiB**", 128 * 1024) is None
    assert disagreement("50,000", 50_000) is None
    assert disagreement("5 ms; 0 = no batching", 0.005) is None
    assert disagreement("default 5 %", 0.05) is None
    assert disagreement("off", None) is None
    assert disagreement("12 s", 10.0) is not None
    assert disagreement("18 KiB", 13 * 1024) is not None
    assert disagreement("4 MiB", 4 * 1024) is not None  # the unit is read
    assert disagreement("off", 20.0) is not None
    assert disagreement("on", False) is not None
    assert disagreement("8766", None) is not None
    assert disagreement("30 s", None) is not None
    assert disagreement("json", "text") is not None
    assert [(m.group(1), m.group(2)) for m in PROSE_AFTER.finditer("`--hwm` (100,000) x")] == [
        ("--hwm", "100,000")
    ]
    before = PROSE_BEFORE.search("up to **32 frames** (`--max-pipelined`, at least 16)")
    assert before is not None and before.groups() == ("**32 frames**", "--max-pipelined")


def _anchors(path: Path) -> set[str]:
    """The anchors of a Markdown file's headings, as GitHub makes them."""
    seen: dict[str, int] = {}
    in_code = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            in_code = not in_code
        heading = None if in_code else re.match(r"#{1,6}\s+(.*)", line)
        if heading is not None:
            slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
            count = seen.get(slug, 0)
            seen[slug] = count + 1
    return {slug if n == 0 else f"{slug}-{n}" for slug, total in seen.items() for n in range(total)}


def test_every_link_between_the_documents_resolves() -> None:
    broken = []
    for path in DOCUMENTS:
        for link in re.findall(r"\]\(([^)\s]+)\)", path.read_text(encoding="utf-8")):
            if link.startswith(("http://", "https://", "mailto:")):
                continue
            target, _, anchor = link.partition("#")
            file = (path.parent / target) if target else path
            if not file.exists():
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{path.relative_to(ROOT)}: {link} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


# --------------------------------------------------------------------------- make variables

MAKEFILE = ROOT / "Makefile"
ENVIRONMENT = {"NOTIFY_SOCKET", "READY", "STOPPING", "STATUS", "UPDATE_SCREENSHOT"}
"""Names in the documents' code that are environment variables or notification fields,
not make variables (and any ``PRESENCE_*``, ``XDG_*``, ``PROMETHEUS_*``)."""
ASSIGNED = re.compile(r"(?<![\w$-])([A-Z][A-Z0-9_]*[A-Z0-9])=")


def _make_variables() -> dict[str, str]:
    """The Makefile's ``NAME ?= value`` variables (what a user may set)."""
    text = MAKEFILE.read_text(encoding="utf-8")
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*) \?=[ \t]*(.*)$", text, flags=re.MULTILINE))


def _code(path: Path) -> Iterator[tuple[str, str]]:
    """(where, text) of every code span and code-block line of a document."""
    in_code = False
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        where = f"{path.relative_to(ROOT).as_posix()}:{number}"
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif in_code:
            yield where, line
        else:
            for span in re.findall(r"`([^`]+)`", line):
                yield where, span


def test_every_make_variable_the_documents_set_is_the_makefiles() -> None:
    known = _make_variables()
    unknown = [
        f"{where}: {name}= is no variable of the Makefile"
        for path in DOCUMENTS
        for where, text in _code(path)
        for name in ASSIGNED.findall(text)
        if name not in known
        and name not in ENVIRONMENT
        and not name.startswith(("PRESENCE_", "XDG_", "PROMETHEUS_"))
    ]
    assert not unknown, "\n".join(unknown)


def _make_rows() -> Iterator[tuple[str, str, str, str]]:
    """(where, variable, quoted default, the row's launcher option or "") of the
    operating guide's ``make variable`` table."""
    header: list[str] | None = None
    for number, line in enumerate(OPERATING.read_text(encoding="utf-8").splitlines(), 1):
        if not line.startswith("|"):
            header = None
            continue
        cells = _cells(line)
        if header is None:
            header = [cell.lower() for cell in cells]
        elif header[0] == "make variable" and not set("".join(cells)) <= set("-: "):
            names = re.findall(r"`([A-Z][A-Z0-9_]*)`", cells[0])
            values = cells[1].split(", ")
            flags = FLAG.findall(cells[2])
            for i, name in enumerate(names):
                value = values[i] if len(values) == len(names) else cells[1]
                flag = flags[i] if len(flags) == len(names) else ""
                yield f"docs/operating.md:{number}", name, value, flag


def test_the_operating_guide_lists_every_make_variable_with_its_default() -> None:
    known = _make_variables()
    rows = list(_make_rows())
    problems = [f"no make variable table row for {name}" for name in sorted(
        set(known) - {name for _, name, _, _ in rows}
    )]  # fmt: skip
    for where, name, quoted, flag in rows:
        if name not in known:
            problems.append(f"{where}: {name} is no variable of the Makefile")
            continue
        value = re.sub(r"\$\((\w+)\)", r"\1", known[name])
        if "$(" in value:
            continue  # computed by make (the number of CPUs)
        word = _clean(quoted).split(" ")[0]
        if value:
            if word != value:
                problems.append(f"{where}: {name} quoted as {word!r}, the Makefile has {value!r}")
        elif word.lower() not in OFF:  # empty: the launcher's own default
            why = disagreement(quoted, PROCESSES["launcher"][flag]) if flag else "no option"
            if why:
                problems.append(f"{where}: {name} (empty in the Makefile, so {flag}): {why}")
    assert not problems, "docs/operating.md disagrees with the Makefile:\n" + "\n".join(problems)


def test_commands_in_the_documents_use_the_projects_python() -> None:
    """``python scripts/X.py`` with whatever ``python`` is first on the PATH lacks the
    dependencies: the documents say ``.venv/bin/python``."""
    bare = re.compile(r"(?<![/\w.-])python3? (?:-m |scripts/)")
    found = [
        f"{where}: {text.strip()}"
        for path in DOCUMENTS
        for where, text in _code(path)
        if bare.search(text)
    ]
    assert not found, "commands that need .venv/bin/python:\n" + "\n".join(found)


def test_the_contract_states_the_version_2_timers_the_code_has() -> None:
    """The count's interval and how far back a resume reaches, as version 2 quotes them."""
    text = " ".join((ROOT / "docs" / "PROTOCOL.md").read_text(encoding="utf-8").split())
    assert defaults.COUNT_INTERVAL == 1.0, "docs/PROTOCOL.md says a count at most once per second"
    assert "whenever the number changed, at most once per second" in text
    ring = re.search(r"\*This server\*: (\S+ s), bounded in bytes", text)
    assert ring is not None, "docs/PROTOCOL.md no longer says how far back a resume reaches"
    assert disagreement(ring.group(1), defaults.RESUME_RING_AGE) is None
