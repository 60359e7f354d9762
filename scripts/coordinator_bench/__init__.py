"""The coordinator benchmark behind ``scripts/coordinator_costs.py``, one module per job.

* :mod:`.common`: the workload's names and keys, shared by the parts below.
* :mod:`.pure`: the pure core, in this process, no sockets.
* :mod:`.harness`: ``python -m coordinator`` on private endpoints, its CPU and memory.
* :mod:`.driver`: fake workers (:mod:`scripts.fake_worker`) that load it and count
  its replies.
* :mod:`.plans`: the runs made against the process, and what each one measures.
* :mod:`.report`: the derived figures and the Markdown tables (also BENCHMARKS.md's).

The command line is ``scripts/coordinator_costs.py`` (run by path, as ``make bench``
does).
"""
