"""The benchmark set of authentications (a part of ``make bench``; see
``scripts/bench.py``): what one ``auth`` costs a worker, and how many one core admits.

One worker on CPU 0, the generator on CPU 1 (``python -m scripts.loadtest auth-rate``,
scripts/loadtest/authrate.py): 2,000 version 2 clients following watchlists of 20 keys
(the scale shape) authenticate at once, then 200 following the whole lobby. The
worker's CPU over each connect phase per auth (the generator's never counts) gives µs
per auth and auths per second per worker core (1e6 over it). Twice: at
``--concurrency 20``, which the worker admits without refusing (the cost of auths
alone), and at 200, a storm in which the admission window answers some upgrades with
503 (the wall-clock rate, and what the refusals add). About 50 s of runs on a quiet machine.

What bounds it: a worker is one event-loop thread, so it admits at most 1e6 / (µs per
auth) a second, and a storm of U users takes a worker U times the µs per auth (more
cores: more workers on the port). Where the µs go (py-spy of a worker in a join of
5,000 watchlist clients): writing the join's update to the ~20 clients that watch the
new key (a write each, ~20%), the auth check (~15%, Ed25519 two thirds of it), the
coordinator's record of the session and its ack (~15%), the HTTP upgrade and handshake
(~10%); in CPU terms (perf): the Python interpreter two thirds, the kernel's socket
work a sixth, libsodium 8%. No one item dominates: it is CPython running the auth.
"""

from __future__ import annotations

from typing import Any

from scripts.benchkit import ONE_WORKER, PINNED, Row, Run, fmt, metric

V2 = ("--protocol", "2")
AUTH = ("auth-rate", "2000", "--watch", "20", "--lobby", "200")
PACED, STORM = "auth-rate 2000 pinned", "auth-rate 2000 storm pinned"

_KEYS = [
    "worker_cpu_us_per_auth",
    "auths_per_s_per_core",
    "auth_per_s",
    "coordinator_cpu_us_per_auth",
    "retried_1013",
]
SECTIONS: dict[str, tuple[str, list[str]]] = {
    "auth-rate": (
        "authentications (1 worker; 2,000 clients x 20-key watchlists, then 200 "
        "whole-lobby clients)",
        [f"{load}_{key}" for load in ("watch", "lobby") for key in _KEYS],
    ),
}


def runs() -> list[Run]:
    return [
        Run(PACED, (*ONE_WORKER, *V2, "--concurrency", "20", *PINNED), AUTH, "auth-rate"),
        Run(STORM, (*ONE_WORKER, *V2, "--concurrency", "200", *PINNED), AUTH, "auth-rate"),
    ]


def _row(res: dict[str, dict[str, Any]], name: str, label: str, load: str) -> Row:
    def m(key: str) -> Any:
        return metric(res, name, f"{load}_{key}")

    per_core, per_auth = m("auths_per_s_per_core"), m("worker_cpu_us_per_auth")
    shown = (
        f"{fmt(per_core, '/s')} per core ({fmt(per_auth, ' µs')} of worker CPU an auth); "
        f"wall clock {fmt(m('auth_per_s'), '/s')}, {fmt(m('retried_1013'))} retried after "
        f"1013/503, checks {'passed' if res.get(name, {}).get('ok') else 'FAILED'}"
    )
    return label, shown, None if per_core is None else bool(res[name].get("ok"))


def targets(res: dict[str, dict[str, Any]]) -> list[Row]:
    return [
        _row(
            res,
            PACED,
            "auths per second per worker core, 20-key watchlists, admitted without refusal, "
            "pinned: measured, views right",
            "watch",
        ),
        _row(
            res,
            PACED,
            "auths per second per worker core, a whole lobby of 200, pinned: measured",
            "lobby",
        ),
        _row(
            res,
            STORM,
            "auths per second per worker core, 20-key watchlists, a storm of 200 in flight "
            "(some refused with 503), pinned: measured, every client in",
            "watch",
        ),
    ]
