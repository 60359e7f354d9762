"""The worker: terminates client WebSockets and keeps a read-only replica of the lobby.

* :mod:`workers.core` - everything a worker decides, joining the parts below (pure).
* :mod:`workers.clients` - the client table, its indexes kept in step (pure).
* :mod:`workers.connection` - one client connection's protocol state machine (pure),
  with :mod:`workers.outputs` (what the pure parts return) and :mod:`workers.limits`.
* :mod:`workers.replica` - the lobby replica built from Snapshot + Update (pure).
* :mod:`workers.routing` - direct messages: local delivery, routes, results (pure);
  :mod:`workers.routes` - pending routes and the coordinator's clock (pure).
* :mod:`workers.admission` - the door's admission and the message rate (pure).
* :mod:`workers.settings` - :class:`~workers.settings.WorkerSettings`, every knob.
* :mod:`workers.server` - the asyncio shell: awaits, and carries out the core's outputs;
  :mod:`workers.backbone` - its ZeroMQ side; :mod:`workers.door` - its HTTP answers;
  :mod:`workers.wsinternals` - everything that reaches into websockets' internals.
* ``python -m workers`` - the command line.
"""
