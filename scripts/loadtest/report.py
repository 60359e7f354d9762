"""The human table at the end of a run, and the same result as JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TextIO


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return "-" if value is None else str(value)


def table(result: dict[str, Any], out: TextIO) -> None:
    """Print ``result`` (a :meth:`Result.to_dict` plus ``target``) as an aligned table."""
    params = " ".join(f"{k}={_fmt(v)}" for k, v in result["params"].items())
    out.write(f"\n{result['scenario']} against {result.get('target', '?')}  ({params})\n")
    metrics = result["metrics"]
    width = max((len(k) for k in metrics), default=10)
    out.write(f"  {'metric':<{width}}  value\n  {'-' * width}  {'-' * 12}\n")
    for key, value in metrics.items():
        out.write(f"  {key:<{width}}  {_fmt(value)}\n")
    placed = result.get("cpus")
    if placed:
        sides = ", ".join(
            f"{name} {placed[key]['observed']} ({'pinned' if placed[key]['pinned'] else 'any'})"
            for key, name in (("server", "server"), ("generator", "generator"))
        )
        out.write(f"  cpus: {placed['placement']}: {sides}\n")
    if "ws_client" in result:
        out.write(
            f"  generator: {result['ws_client']}, updates applied on arrival and timed by "
            f"a {result['verify_sample']:g} sample of the watchers\n"
        )
    causes = result.get("connect", {}).get("causes")
    if causes:
        listed = ", ".join(f"{cause} {count:,}" for cause, count in sorted(causes.items()))
        out.write(f"  connections failed or lost, by cause: {listed}\n")
    for note in result.get("notes", []):
        out.write(f"  note: {note}\n")
    if result["failures"]:
        out.write("  RESULT: FAILED\n")
        for failure in result["failures"]:
            out.write(f"  FAIL: {failure}\n")
    else:
        out.write("  RESULT: ok (every correctness check passed)\n")
    out.flush()


def write_json(result: dict[str, Any], path: str | Path) -> None:
    Path(path).write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
