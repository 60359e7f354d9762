"""The backend API's decisions (workers.api), with a replica view played by the test."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared import events, records
from shared.options import SettingsError, parse_args
from shared.records import Record
from workers.api import (
    LOBBY_PATH,
    Answer,
    ApiOptions,
    ApiTokenError,
    BackendApi,
    KickAsked,
    OpenStream,
    body_length,
    load_token,
    parse_head,
)
from workers.replica import SyncState
from workers.settings import WorkerSettings

TOKEN = b"0123456789abcdef0123456789abcdef"
AUTH = "Bearer " + TOKEN.decode()
A, B, C = "a" * 64, "b" * 64, "c" * 64


@dataclass
class View:
    """A replica view: what the API reads. ``mseq`` is ``seq`` unless the test sets
    ``record_updates`` (updates that changed records alone)."""

    users: AbstractSet[str] = field(default_factory=set)
    seq: int = 0
    epoch: str | None = "e1"
    sync: SyncState = SyncState.LIVE
    snapshot_bytes: int = 0
    records: dict[str, Record] = field(default_factory=dict)
    record_updates: int = 0

    @property
    def mseq(self) -> int:
        return self.seq - self.record_updates

    def record_of(self, key: str) -> Record:
        return self.records.get(key, records.DEFAULT)


ONLINE = {"status": "online", "data": {}}


def body(answer: Answer) -> Any:
    """The answer's JSON; a lobby's ``lastEventId`` is checked here (the view's epoch
    and seq) and left out, so the tests compare what they are about."""
    assert not isinstance(answer, OpenStream | KickAsked), answer
    assert answer.body.endswith(b"\n")
    decoded = json.loads(answer.body)
    if isinstance(decoded, dict) and "users" in decoded:
        assert events.parse_event_id(decoded.pop("lastEventId"))
    return decoded


def ask(
    api: BackendApi,
    path: str,
    view: View,
    *,
    authorization: str | None = AUTH,
    method: str = "GET",
    reachable: bool = True,
    body: bytes = b"",
    last_event_id: str | None = None,
) -> Any:
    return api.answer(
        method,
        path,
        authorization,
        view,
        reachable=reachable,
        body=body,
        last_event_id=last_event_id,
    )


# --------------------------------------------------------------------------- answers


def test_user_online_and_offline_with_the_seq_of_the_view() -> None:
    api, view = BackendApi(TOKEN), View({A, B}, seq=7)
    on = ask(api, f"/v1/users/{A}", view)
    assert on.status == HTTPStatus.OK
    assert body(on) == {"publicKey": A, "online": True, "seq": 7, **ONLINE}
    assert body(ask(api, f"/v1/users/{C}", view)) == {"publicKey": C, "online": False, "seq": 7}


def test_a_key_in_capitals_is_answered_in_its_canonical_spelling() -> None:
    api, view = BackendApi(TOKEN), View({A}, seq=1)
    assert body(ask(api, f"/v1/users/{A.upper()}", view))["publicKey"] == A
    assert body(ask(api, f"/v1/users/{A.upper()}", view))["online"] is True


def test_lobby_lists_every_user_sorted_with_its_seq() -> None:
    api, view = BackendApi(TOKEN), View({C, A, B}, seq=3)
    got = body(ask(api, LOBBY_PATH, view))
    assert got == {"seq": 3, "users": [{"publicKey": k, **ONLINE} for k in (A, B, C)]}


def test_answers_show_records_and_protocol_1s_seq() -> None:
    """A record change takes a seq of its own and no protocol 1 seq: the answers show
    the new record with the seq they showed before (a lobby_update's numbering)."""
    api, view = BackendApi(TOKEN), View({A, B}, seq=4)
    assert body(ask(api, LOBBY_PATH, view))["users"][0] == {"publicKey": A, **ONLINE}
    view.records[A] = ("away", '{"note":"back at 5 \u00e9","n":[1,2]}')
    view.seq, view.record_updates = 5, 1
    user = {"publicKey": A, "status": "away", "data": {"note": "back at 5 é", "n": [1, 2]}}
    assert body(ask(api, f"/v1/users/{A}", view)) == {**user, "online": True, "seq": 4}
    assert body(ask(api, LOBBY_PATH, view)) == {
        "seq": 4,
        "users": [user, {"publicKey": B, **ONLINE}],
    }


def test_the_cached_lobby_follows_every_change_of_seq_or_epoch() -> None:
    api, view = BackendApi(TOKEN), View({A}, seq=1)
    assert body(ask(api, LOBBY_PATH, view))["users"] == [{"publicKey": A, **ONLINE}]
    view.users, view.seq = {A, B}, 2
    assert body(ask(api, LOBBY_PATH, view)) == {
        "seq": 2,
        "users": [{"publicKey": A, **ONLINE}, {"publicKey": B, **ONLINE}],
    }
    view.users, view.seq, view.epoch = set(), 2, "e2"  # same seq, new coordinator life
    assert body(ask(api, LOBBY_PATH, view)) == {"seq": 2, "users": []}


@given(
    st.lists(st.tuples(st.frozensets(st.sampled_from([A, B, C])), st.sampled_from(["e1", "e2"])))
)
def test_every_answer_is_the_view_exactly_as_of_its_seq(
    states: list[tuple[frozenset[str], str]],
) -> None:
    """(epoch, seq) names one state of the lobby; the answers follow every new one."""
    api, view = BackendApi(TOKEN), View()
    for seq, (users, epoch) in enumerate(states):
        view.users, view.seq, view.epoch = users, seq, epoch
        lobby = body(ask(api, LOBBY_PATH, view))
        assert lobby == {"seq": seq, "users": [{"publicKey": k, **ONLINE} for k in sorted(users)]}
        for key in (A, B, C):
            assert body(ask(api, f"/v1/users/{key}", view))["online"] == (key in users)


@pytest.mark.parametrize("sync", [SyncState.SYNCING, SyncState.AWAITING_WELCOME])
def test_no_answer_but_503_while_the_replica_is_not_live(sync: SyncState) -> None:
    api, view = BackendApi(TOKEN), View({A}, seq=4, sync=sync)
    for path in (LOBBY_PATH, f"/v1/users/{A}"):
        answer = ask(api, path, view)
        assert answer.status == HTTPStatus.SERVICE_UNAVAILABLE
        assert body(answer) == {"error": "unavailable"}
        assert ("Retry-After", "1") in answer.headers


def test_no_answer_but_503_while_the_coordinator_is_unreachable() -> None:
    api, view = BackendApi(TOKEN), View({A}, seq=4)
    assert ask(api, LOBBY_PATH, view, reachable=False).status == HTTPStatus.SERVICE_UNAVAILABLE


@pytest.mark.parametrize(
    "path",
    ["/v1/users/", "/v1/users/" + "a" * 63, "/v1/users/" + "g" * 64, "/v1/users/" + "a" * 65],
)
def test_a_malformed_key_is_400(path: str) -> None:
    answer = ask(BackendApi(TOKEN), path, View({A}))
    assert answer.status == HTTPStatus.BAD_REQUEST
    assert body(answer) == {"error": "invalid_public_key"}


@pytest.mark.parametrize(
    "path", ["/", "/v1", "/v1/", "/v1/lobby/", "/v2/lobby", f"/v1/users/{A}/x", "/healthz"]
)
def test_other_paths_are_404(path: str) -> None:
    answer = ask(BackendApi(TOKEN), path, View())
    assert answer.status == HTTPStatus.NOT_FOUND
    assert body(answer) == {"error": "not_found"}


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD", "OPTIONS"])
def test_only_get_is_allowed(method: str) -> None:
    answer = ask(BackendApi(TOKEN), LOBBY_PATH, View(), method=method)
    assert answer.status == HTTPStatus.METHOD_NOT_ALLOWED
    assert ("Allow", "GET") in answer.headers


# --------------------------------------------------------------------------- the token

WRONG = [
    None,
    "",
    "Bearer",
    "Bearer ",
    "bearer " + TOKEN.decode(),
    "Basic " + TOKEN.decode(),
    "Bearer " + TOKEN.decode()[:-1],
    "Bearer " + TOKEN.decode() + "0",
    "Bearer  " + TOKEN.decode(),
    TOKEN.decode(),
    "Bearer " + TOKEN.decode().upper(),
    "Bearer é" + TOKEN.decode(),
]


@pytest.mark.parametrize("authorization", WRONG)
def test_a_wrong_or_missing_token_is_401_before_anything_else(authorization: str | None) -> None:
    api = BackendApi(TOKEN)
    # Even for paths that do not exist, methods not allowed, views not live: a stranger
    # learns nothing.
    for path, method, view in [
        (LOBBY_PATH, "GET", View({A})),
        ("/nothing/here", "GET", View()),
        (LOBBY_PATH, "DELETE", View()),
        (LOBBY_PATH, "GET", View(sync=SyncState.SYNCING)),
    ]:
        answer = ask(api, path, view, authorization=authorization, method=method)
        assert answer.status == HTTPStatus.UNAUTHORIZED
        assert body(answer) == {"error": "unauthorized"}
        assert ("WWW-Authenticate", 'Bearer realm="presence"') in answer.headers


@given(st.text(max_size=80))
def test_no_other_header_value_gets_in(authorization: str) -> None:
    api = BackendApi(TOKEN)
    answer = ask(api, LOBBY_PATH, View({A}), authorization=authorization)
    assert (answer.status == HTTPStatus.OK) == (authorization == AUTH)


def _token_file(tmp_path: Path, content: bytes, mode: int = 0o600) -> str:
    path = tmp_path / "token"
    path.write_bytes(content)
    path.chmod(mode)
    return str(path)


def test_the_token_is_read_from_its_file_without_surrounding_whitespace(tmp_path: Path) -> None:
    assert load_token(_token_file(tmp_path, b"  " + TOKEN + b"\n")) == TOKEN


@pytest.mark.parametrize(
    ("content", "mode", "complaint"),
    [
        (TOKEN, 0o644, "open to other users (mode 0644); chmod 600"),
        (TOKEN, 0o640, "open to other users"),
        (b"", 0o600, "is empty"),
        (b" \n", 0o600, "is empty"),
        (b"short-token", 0o600, "holds 11 characters; at least 16"),
        (TOKEN + b"\n" + TOKEN, 0o600, "one line of visible ASCII"),
        (TOKEN + " é".encode(), 0o600, "one line of visible ASCII"),
        (b"x" * 5000, 0o600, "longer than 4096 bytes"),
    ],
)
def test_a_token_file_that_is_unsafe_or_weak_is_refused_naming_it(
    tmp_path: Path, content: bytes, mode: int, complaint: str
) -> None:
    path = _token_file(tmp_path, content, mode)
    with pytest.raises(ApiTokenError) as error:
        load_token(path)
    assert f"--api-token-file {path}" in str(error.value)
    assert complaint in str(error.value)


def test_a_missing_token_file_or_a_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ApiTokenError, match="No such file"):
        load_token(str(tmp_path / "absent"))
    os.chmod(tmp_path, 0o700)
    with pytest.raises(ApiTokenError, match="not a regular file"):
        load_token(str(tmp_path))


# --------------------------------------------------------------------------- options


def test_the_api_is_off_by_default() -> None:
    assert not ApiOptions().enabled
    assert not WorkerSettings().api.enabled


def test_the_api_never_starts_without_a_token_file() -> None:
    with pytest.raises(SettingsError, match="--api-port needs --api-token-file"):
        ApiOptions(api_port=9000)
    assert ApiOptions(api_port=9000, api_token_file="t").enabled


def test_the_command_line_refuses_an_api_port_without_a_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(WorkerSettings, ["--api-port", "9000"], prog="w", description="")
    assert exited.value.code == 2
    assert "--api-token-file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(
            WorkerSettings,
            ["--api-port", "70000", "--api-token-file", "t"],
            prog="w",
            description="",
        )
    assert "--api-port" in capsys.readouterr().err


def test_every_status_the_api_answers_has_its_metric_label() -> None:
    from shared.metrics import API_STATUSES
    from workers import api

    answers = [v for v in vars(api).values() if isinstance(v, Answer)]
    statuses = {str(int(a.status)) for a in answers} | {str(int(HTTPStatus.OK))}
    assert statuses == set(API_STATUSES)


# --------------------------------------------------------------------------- lookup, kick, events


def lookup(api: BackendApi, view: View, payload: object) -> Any:
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return ask(api, "/v1/users:lookup", view, method="POST", body=raw)


def test_a_lookup_answers_each_distinct_key_in_order_as_of_one_seq() -> None:
    view = View({A, B}, seq=9, records={A: ("away", '{"n":1}')}, record_updates=2)
    answer = lookup(BackendApi(TOKEN), view, {"publicKeys": [C, A.upper(), A, B]})
    assert answer.status == HTTPStatus.OK
    got = json.loads(answer.body)
    assert got == {
        "seq": 7,
        "lastEventId": "e1:9",
        "users": [
            {"publicKey": C, "online": False},
            {"publicKey": A, "online": True, "status": "away", "data": {"n": 1}},
            {"publicKey": B, "online": True, **ONLINE},
        ],
    }
    empty = json.loads(lookup(BackendApi(TOKEN), view, {"publicKeys": []}).body)
    assert empty["users"] == []


@pytest.mark.parametrize(
    ("payload", "error", "detail"),
    [
        (b"not json", "invalid_json", "not JSON"),
        (b"\xff\xfe", "invalid_json", "not JSON"),
        (b"[" * 50_000, "invalid_json", "not JSON"),
        ([A], "invalid_body", "publicKeys"),
        ({"keys": [A]}, "invalid_body", "publicKeys"),
        ({"publicKeys": A}, "invalid_body", "publicKeys"),
        ({"publicKeys": [A], "more": 1}, "invalid_body", "publicKeys"),
        ({"publicKeys": [A] * 1001}, "too_many_keys", "at most 1000"),
        ({"publicKeys": [A, "xyz"]}, "invalid_public_key", r"publicKeys\[1\]"),
        ({"publicKeys": [A, 5]}, "invalid_public_key", r"publicKeys\[1\]"),
    ],
)
def test_a_bad_lookup_is_400_naming_the_problem(payload: object, error: str, detail: str) -> None:
    answer = lookup(BackendApi(TOKEN), View({A}), payload)
    assert answer.status == HTTPStatus.BAD_REQUEST
    got = json.loads(answer.body)
    assert got["error"] == error and re.search(detail, got["detail"]), got


def test_a_lookup_is_post_only_and_needs_a_live_view() -> None:
    api = BackendApi(TOKEN)
    answer = ask(api, "/v1/users:lookup", View())
    assert answer.status == HTTPStatus.METHOD_NOT_ALLOWED and ("Allow", "POST") in answer.headers
    body = json.dumps({"publicKeys": [A]}).encode()
    answer = ask(api, "/v1/users:lookup", View(), method="POST", body=body, reachable=False)
    assert answer.status == HTTPStatus.SERVICE_UNAVAILABLE


def test_a_kick_is_asked_of_the_coordinator_with_its_reason() -> None:
    api, view = BackendApi(TOKEN), View({A})
    path = f"/v1/users/{A.upper()}:kick"
    assert ask(api, path, view, method="POST") == KickAsked(A, "")
    raw = json.dumps({"reason": "spam é"}).encode()
    assert ask(api, path, view, method="POST", body=raw) == KickAsked(A, "spam é")
    assert ask(api, path, view, method="GET").status == HTTPStatus.METHOD_NOT_ALLOWED
    assert ask(api, "/v1/users/xyz:kick", view, method="POST").status == HTTPStatus.BAD_REQUEST
    assert ask(api, path, View(sync=SyncState.SYNCING), method="POST").status == 503
    assert json.loads(api.kicked(A, "kicked").body) == {"publicKey": A, "kicked": True}
    assert json.loads(api.kicked(A, "offline").body) == {"publicKey": A, "kicked": False}
    assert api.kicked(A, "unavailable").status == HTTPStatus.SERVICE_UNAVAILABLE


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"why": "x"}',
        b'{"reason": 5}',
        b'{"reason": "a\\nb"}',
        b'{"reason": "' + b"x" * 201 + b'"}',
        b"{",
    ],
)
def test_a_bad_kick_body_is_400(raw: bytes) -> None:
    answer = ask(BackendApi(TOKEN), f"/v1/users/{A}:kick", View({A}), method="POST", body=raw)
    assert answer.status == HTTPStatus.BAD_REQUEST and json.loads(answer.body)["detail"]


def test_the_event_stream_opens_from_the_last_event_id_or_says_what_is_wrong() -> None:
    api, view = BackendApi(TOKEN), View({A})
    assert ask(api, "/v1/events", view) == OpenStream(None)
    assert ask(api, "/v1/events", view, last_event_id="") == OpenStream(None)
    assert ask(api, "/v1/events", view, last_event_id="e1:12") == OpenStream(("e1", 12))
    bad = ask(api, "/v1/events", view, last_event_id="e1:-3")
    assert bad.status == HTTPStatus.BAD_REQUEST
    assert json.loads(bad.body)["error"] == "invalid_last_event_id"
    assert ask(api, "/v1/events", view, method="POST").status == HTTPStatus.METHOD_NOT_ALLOWED
    assert ask(api, "/v1/events", view, reachable=False).status == 503
    assert ask(api, "/v1/events", view, authorization=None).status == HTTPStatus.UNAUTHORIZED


def test_a_get_with_a_body_is_400() -> None:
    answer = ask(BackendApi(TOKEN), LOBBY_PATH, View(), body=b"{}")
    assert (answer.status, json.loads(answer.body)["error"]) == (400, "unexpected_body")


# --------------------------------------------------------------------------- reading requests


def test_a_request_head_is_read_with_its_headers_in_order() -> None:
    head = parse_head(
        b"GET /v1/events?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n"
        b"last-event-id:  e:1 \r\nX: 1\r\nx: 2"
    )
    assert head is not None
    assert (head.method, head.path) == ("GET", "/v1/events")
    assert head.one("authorization") == "Bearer t" and head.one("last-event-id") == "e:1"
    assert head.all("x") == ["1", "2"] and head.one("x") is None


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v1/lobby HTTP/2.0",
        b"GET /v1/lobby",
        b"GET  /v1/lobby HTTP/1.1",
        b"GET v1/lobby HTTP/1.1",
        b"G(T /v1/lobby HTTP/1.1",
        b"GET /v1/lobby HTTP/1.1\r\nno colon",
        b"GET /v1/lobby HTTP/1.1\r\n folded: x",
        b"GET /v1/lobby HTTP/1.1\r\nName : x",
        b"\x00\xff",
    ],
)
def test_anything_but_http_1_is_not_answered(raw: bytes) -> None:
    assert parse_head(raw) is None


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"", 0),
        (b"\r\nContent-Length: 12", 12),
        (b"\r\nContent-Length: 131072", 131072),
        (b"\r\nContent-Length: 131073", "body_too_large"),
        (b"\r\nContent-Length: 99999999999999999999", "body_too_large"),
        (b"\r\nContent-Length: -1", "invalid_content_length"),
        (b"\r\nContent-Length: \xd9\xa1", "invalid_content_length"),
        (b"\r\nContent-Length: 1\r\nContent-Length: 1", "invalid_content_length"),
        (b"\r\nTransfer-Encoding: chunked", "unsupported_transfer_encoding"),
    ],
)
def test_a_body_is_read_only_with_one_content_length_within_the_bound(
    headers: bytes, expected: int | str
) -> None:
    head = parse_head(b"POST /v1/users:lookup HTTP/1.1" + headers)
    assert head is not None
    length = body_length(head)
    if isinstance(expected, int):
        assert length == expected
    else:
        assert isinstance(length, Answer) and json.loads(length.body)["error"] == expected
