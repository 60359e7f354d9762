"""The load generator's names for failed connection attempts, and which it retries."""

from __future__ import annotations

import asyncio
import io

import pytest
from websockets.exceptions import ConnectionClosedError, InvalidMessage
from websockets.frames import Close

from scripts.loadtest import causes
from scripts.loadtest.report import table
from scripts.loadtest.scenarios import Result
from shared.client import AuthFailed, ConnectionRefusedByServer, ProtocolError
from shared.session import http_refusal


@pytest.mark.parametrize(
    ("exc", "cause"),
    [
        (AuthFailed("bad signature", 4001), "auth_failed_bad_signature"),
        (http_refusal(503), "refused_http_503"),
        (http_refusal(404), "refused_http_404"),
        (ConnectionRefusedByServer(1013, "try_again_later"), "closed_1013"),
        (ConnectionRefusedByServer(4003, "auth_timeout"), "closed_4003"),
        (ConnectionRefusedByServer(1006, ""), "reset_after_upgrade"),
        (ConnectionRefusedByServer(None, ""), "reset_after_upgrade"),
        (TimeoutError(), "handshake_timeout"),
        (ConnectionRefusedError(), "connect_refused"),
        (ConnectionResetError(), "dropped_before_upgrade"),
        (InvalidMessage("did not receive a valid HTTP response"), "dropped_before_upgrade"),
        (EOFError(), "dropped_before_upgrade"),
        (ConnectionClosedError(None, None), "reset_after_upgrade"),
        (ConnectionClosedError(Close(1011, "oops"), None), "closed_1011"),
        (ProtocolError("bad frame"), "protocol_error"),
        (ValueError("a bug"), "error_ValueError"),
    ],
)
def test_each_failure_has_a_named_cause(exc: BaseException, cause: str) -> None:
    assert causes.classify(exc) == cause


def test_try_again_later_is_retried_and_refusals_are_not() -> None:
    for cause in ("closed_1013", "refused_http_503"):
        assert causes.retry(cause, 0)
    for cause in ("auth_failed_bad_signature", "closed_4003", "refused_http_404", "error_X"):
        assert not causes.retry(cause, 1)


def test_transport_failures_are_retried_a_bounded_number_of_times() -> None:
    tries = [causes.retry("dropped_before_upgrade", n) for n in range(1, 10)]
    assert tries == [n < causes.TRANSPORT_ATTEMPTS for n in range(1, 10)]


def test_a_returning_client_retries_as_the_client_library_does_without_a_count() -> None:
    """A client coming back after losing its server goes on through dropped connections
    (a full listen queue in a storm) as a real client does, and still stops where the
    library does (credentials refused, a final close)."""
    dropped = ConnectionResetError("dropped")
    cause = causes.classify(dropped)
    many = causes.TRANSPORT_ATTEMPTS + 10
    assert not causes.retry(cause, many, dropped)
    assert causes.retry(cause, many, dropped, returning=True)
    eof = InvalidMessage("did not receive a valid HTTP response")
    assert causes.retry(causes.classify(eof), many, eof, returning=True)
    timed_out = ConnectionRefusedByServer(4003, "auth_timeout")
    assert not causes.retry("closed_4003", 1, timed_out)
    assert causes.retry("closed_4003", 1, timed_out, returning=True)
    for final in (AuthFailed("bad signature", 4001), ProtocolError("bad frame"), http_refusal(404)):
        assert not causes.retry(causes.classify(final), 1, final, returning=True)


def test_the_table_and_json_list_every_cause() -> None:
    counts = {f"closed_{4000 + i}": i + 1 for i in range(7)}  # more than five
    result = Result("mass-join", {"clients": 3}, causes=counts)
    assert result.to_dict()["connect"]["causes"] == counts
    out = io.StringIO()
    table(result.to_dict(), out)
    assert all(f"{cause} {n}" in out.getvalue() for cause, n in counts.items())


def test_a_generator_reports_every_cause_not_only_the_commonest() -> None:
    from scripts.loadtest.tallies import ConnectStats

    stats = ConnectStats()
    for i in range(7):
        stats.reasons[f"closed_{4000 + i}"] += i + 1
    assert stats.result()["reasons"] == dict(stats.reasons)


def test_a_connection_lost_mid_run_has_a_cause_of_its_own() -> None:
    assert causes.mid_run(None) == causes.mid_run(1006) == "reset_mid_run"
    assert causes.mid_run(1013) == "closed_mid_run_1013"


def test_the_run_reports_connect_causes_and_mid_run_closes_together() -> None:
    from collections import Counter

    from scripts.loadtest.scenarios import Context

    ctx = Context(pool=None, server=None)  # type: ignore[arg-type]
    ctx.causes = Counter({"dropped_before_upgrade": 2})
    ctx.closed_mid_run = {"reset_mid_run": 1}
    assert ctx.all_causes() == {"dropped_before_upgrade": 2, "reset_mid_run": 1}


def test_a_failed_picows_handshake_leaves_no_unread_exception_in_the_log() -> None:
    """picows keeps the failure of a handshake in a future of its own besides raising it:
    the generator counts the raised one and the loop must not log the other."""
    from scripts.loadtest import fastws

    seen: list[dict[str, object]] = []
    loop = asyncio.new_event_loop()
    try:
        loop.set_exception_handler(lambda _loop, context: seen.append(context))
        fastws.leftovers_dropped(loop)
        unread = "Future exception was never retrieved"
        loop.call_exception_handler({"message": unread, "exception": TimeoutError("late")})
        loop.call_exception_handler({"message": unread, "exception": ConnectionResetError()})
        assert seen == []
        other = {"message": unread, "exception": KeyError("a bug of ours")}
        loop.call_exception_handler(other)
        elsewhere = {"message": "Exception in callback", "exception": TimeoutError()}
        loop.call_exception_handler(elsewhere)
        assert seen == [other, elsewhere]
    finally:
        loop.close()
