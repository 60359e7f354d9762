"""The wire contract of protocol version 2, for Python: pure codecs, no I/O.

Theory of operation. Version 2 is negotiated per connection (WebSocket subprotocol
``presence.v2``); version 1 (:mod:`shared.protocol`) is untouched and this package
reuses its pieces where the versions agree (direct messages, ``get_lobby``, the key and
signature checks, :class:`~shared.protocol.ServerProtocolError`).

* :mod:`.identity`: the server identity (the canonical text of the URL a client dials)
  and the v2 signed payload, which binds an ``auth`` to one server.
* :mod:`.records`: presence records (status + data), validated once where they enter
  and then held in their wire form, so the server frames them without re-encoding.
* :mod:`.client`: client frames. :func:`parse_client_frame_v2` is total: a typed
  message, or a :class:`Violation` whose kind is the code the server answers with.
  Encoders for clients write what they are given, unchecked.
* :mod:`.server`: server frames. JSON encoders for the text frames; binary encoders
  for ``snapshot`` and ``update`` in two layers (an entry encoded once, frames joined
  from encoded entries); :func:`decode_server_frame_v2`, a client's decoder, which
  raises :class:`~shared.protocol.ServerProtocolError` and nothing else.

Two languages implement this contract: workers/static/protocol_v2.js is the other, and
both are held to tests/vectors/auth_v2.json and tests/vectors/frames_v2.json.
"""

from shared.protocol import ServerProtocolError, get_lobby, send
from shared.v2.client import (
    MAX_WATCH_KEYS,
    SEQ_LIMIT,
    AuthV2,
    ClientMessageV2,
    Follow,
    FollowFrame,
    Resume,
    Scope,
    SetRecord,
    Unwatch,
    Violation,
    ViolationV2,
    Watch,
    auth_v2,
    check_epoch,
    check_seq,
    follow,
    parse_client_frame_v2,
    set_record,
    unwatch,
    watch,
)
from shared.v2.identity import (
    AUTH_CONTEXT_V2,
    AuthFailureV2,
    server_identity,
    sign_challenge_v2,
    signed_payload_v2,
    verify_auth_v2,
)
from shared.v2.records import (
    DEFAULT_RECORD,
    MAX_DATA_BYTES,
    MAX_STATUS_BYTES,
    STATUS_CODES,
    Record,
    RecordChange,
    check_status,
    compact_data,
    parse_record,
    parse_record_change,
)
from shared.v2.server import (
    AuthFailedV2,
    AuthOkV2,
    Count,
    Entry,
    ErrorCodeV2,
    ErrorV2,
    ServerMessageV2,
    Snapshot,
    Update,
    auth_failed_v2,
    auth_ok_v2,
    challenge_v2,
    count,
    decode_server_frame_v2,
    encode_entry,
    encode_snapshot,
    encode_update,
    error_v2,
    snapshot_of,
    update_of,
)

__all__ = [
    "AUTH_CONTEXT_V2",
    "DEFAULT_RECORD",
    "MAX_DATA_BYTES",
    "MAX_STATUS_BYTES",
    "MAX_WATCH_KEYS",
    "SEQ_LIMIT",
    "STATUS_CODES",
    "AuthFailedV2",
    "AuthFailureV2",
    "AuthOkV2",
    "AuthV2",
    "ClientMessageV2",
    "Count",
    "Entry",
    "ErrorCodeV2",
    "ErrorV2",
    "Follow",
    "FollowFrame",
    "Record",
    "RecordChange",
    "Resume",
    "Scope",
    "ServerMessageV2",
    "ServerProtocolError",
    "SetRecord",
    "Snapshot",
    "Unwatch",
    "Update",
    "Violation",
    "ViolationV2",
    "Watch",
    "auth_failed_v2",
    "auth_ok_v2",
    "auth_v2",
    "challenge_v2",
    "check_epoch",
    "check_seq",
    "check_status",
    "compact_data",
    "count",
    "decode_server_frame_v2",
    "encode_entry",
    "encode_snapshot",
    "encode_update",
    "error_v2",
    "follow",
    "get_lobby",
    "parse_client_frame_v2",
    "parse_record",
    "parse_record_change",
    "send",
    "server_identity",
    "set_record",
    "sign_challenge_v2",
    "signed_payload_v2",
    "snapshot_of",
    "unwatch",
    "update_of",
    "verify_auth_v2",
    "watch",
]
