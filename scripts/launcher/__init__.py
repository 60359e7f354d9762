"""The launcher behind ``scripts/cluster.py`` (``make run``), one module per job.

* :mod:`.config`: what runs where: the options' meaning, each child's command line, the
  restart policy (pure).
* :mod:`.supervise`: the children: starting, readiness (sd_notify), restarts, output,
  stopping.
* :mod:`.metrics`: the one ``/metrics`` endpoint of every process on this machine.

``scripts/cluster.py`` is the command line. Nothing here imports more than the standard
library and :mod:`shared`'s standard-library modules (:mod:`shared.notify`,
:mod:`shared.logs`, :data:`shared.defaults.PORT`), and ``prometheus_client``
only when metrics are on: the launcher starts fast, says what is wrong with its options
before anything else happens, and runs without any of the server's dependencies loaded.
"""
