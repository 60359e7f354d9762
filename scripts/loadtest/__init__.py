"""Load tester for the presence server: ``python -m scripts.loadtest --help``.

Simulated clients speak docs/PROTOCOL.md through :mod:`shared.client`, spread over several
generator processes (:mod:`scripts.loadtest.agent`, uvloop), while the parent
(:mod:`scripts.loadtest.scenarios`) runs the phases, checks correctness and reports.
"""
