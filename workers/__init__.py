"""The worker: terminates client WebSockets and keeps a read-only replica of the lobby.

* :mod:`workers.connection` - one client connection's protocol state machine (pure).
* :mod:`workers.replica` - the lobby replica built from Snapshot + Update (pure).
* :mod:`workers.routes` - pending direct-message routes (pure).
* :mod:`workers.settings` - :class:`~workers.settings.WorkerSettings`, every knob.
* :mod:`workers.server` - the asyncio shell wiring them to websockets and ZeroMQ.
* ``python -m workers`` - the command line.
"""
