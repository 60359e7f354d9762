"""The webhook sender's HTTP side, in this process (no child process): each way an
attempt can end, https, and the whole sender against the example receiver."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from coordinator.webhook_sender import Attempt, WebhookSender, post
from coordinator.webhooks import SIGNATURE_HEADER, Target, WebhookOptions, signature
from scripts.webhook_receiver import Receiver
from shared import backbone as bb
from tests.support import free_port, tls_files, until

SECRET = b"0123456789abcdef0123456789abcdef"
E1 = f"{10**18:020d}-00000001"
BODY = (
    b'{"epoch":"' + E1.encode() + b'","first":1,"last":1,"previous":0,"lost":null,"events":'
    b'[{"epoch":"' + E1.encode() + b'","seq":1,"at":1.0,"joined":[{"publicKey":"' + b"a" * 64
    + b'","status":"online","data":{}}],"updated":[],"left":[]}]}'
)  # fmt: skip


@contextlib.contextmanager
def receiver(
    secret: bytes = SECRET, context: ssl.SSLContext | None = None, fail_first: int = 0
) -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), secret, fail_first=fail_first)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def target(port: int, tls: bool = False) -> Target:
    return Target(tls, "127.0.0.1", port, "/hook", f"127.0.0.1:{port}")


def signed(secret: bytes = SECRET) -> list[tuple[str, str]]:
    return [(SIGNATURE_HEADER, signature(secret, int(time.time()), BODY))]


def send(port: int, secret: bytes = SECRET, **kwargs: object) -> Attempt:
    context = kwargs.pop("context", None)
    assert context is None or isinstance(context, ssl.SSLContext)
    tls = bool(kwargs.pop("tls", False))
    timeout = float(kwargs.pop("timeout", 5.0))  # type: ignore[arg-type]
    return asyncio.run(post(target(port, tls), context, signed(secret), BODY, timeout))


def test_a_signed_delivery_is_applied_by_the_example_receiver() -> None:
    with receiver() as server:
        attempt = send(server.server_port)
        assert attempt == Attempt("delivered", 200, "OK")
        assert server.follower.seq == 1 and list(server.follower.users) == ["a" * 64]


def test_a_wrong_secret_is_refused_by_the_receiver() -> None:
    with receiver() as server:
        attempt = send(server.server_port, secret=b"not the receiver's secret!")
        assert (attempt.outcome, attempt.status) == ("status", 401)
        assert server.follower.seq == 0


async def _serve_once(answer: bytes | None, port_box: list[int], done: asyncio.Event) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if answer is not None:
            writer.write(answer)
            await writer.drain()
            writer.close()
        await done.wait()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port_box.append(server.sockets[0].getsockname()[1])
    async with server:
        await done.wait()


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (None, "timeout"),
        (b"", "broken"),
        (b"SSH-2.0-OpenSSH\r\n", "broken"),
        (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n", "delivered"),
        (b"HTTP/1.1 302 Found\r\nLocation: /elsewhere\r\n\r\n", "status"),
    ],
)
def test_every_way_an_attempt_ends_is_an_outcome_never_an_exception(
    answer: bytes | None, outcome: str
) -> None:
    async def scenario() -> Attempt:
        done, port = asyncio.Event(), list[int]()
        server = asyncio.create_task(_serve_once(answer, port, done))
        await until(lambda: bool(port), "the server to listen", 5)
        try:
            return await post(target(port[0]), None, signed(), BODY, timeout=0.3)
        finally:
            done.set()
            await server

    assert asyncio.run(scenario()).outcome == outcome


def test_nobody_listening_is_unreachable() -> None:
    assert send(free_port()).outcome == "unreachable"


def test_https_checks_the_receivers_certificate(tmp_path: Path) -> None:
    chain, key, trusting = tls_files(tmp_path)
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(chain, key)
    with receiver(context=server_side) as server:
        assert send(server.server_port, tls=True, context=trusting).outcome == "delivered"
        untrusting = ssl.create_default_context()  # the system's CAs: not the test's
        assert send(server.server_port, tls=True, context=untrusting).outcome == "unreachable"
    assert server.follower.seq == 1


def update(seq: int, key: str) -> bb.Update:
    return bb.Update(E1, seq, seq, [key], [], 1.0)


def test_the_sender_delivers_in_order_through_failures_and_offers_never_wait() -> None:
    before = {name: sample(name, labels) for name, labels in COUNTED}
    with receiver(fail_first=2) as server:
        options = WebhookOptions(
            webhook_url=f"http://127.0.0.1:{server.server_port}/hook",
            webhook_secret_file="/unused",
            webhook_backoff=0.01,
            webhook_max_backoff=0.05,
            webhook_batch_events=4,
        )
        sender = WebhookSender(options, SECRET)
        sender.start()
        try:
            began = time.perf_counter()
            for seq in range(1, 41):
                sender.offer(update(seq, f"{seq:064x}"))
            offered = time.perf_counter() - began

            def all_delivered() -> bool:  # applied, and the sender heard the answers
                told = sample(*COUNTED[1]) - before[COUNTED[1][0]]
                return server.follower.seq == 40 and told == 40

            asyncio.run(until(all_delivered, "all 40 delivered", 10))
        finally:
            sender.stop()
    assert len(server.follower.users) == 40 and server.failures_left == 0  # 2 retried
    assert sender.outbox.delivered == 40 and sender.outbox.dropped == 0
    assert offered < 0.5, f"40 offers took {offered:.3f} s"
    counted = {name: sample(name, labels) - before[name] for name, labels in COUNTED}
    assert counted["presence_webhook_deliveries_total"] == 2  # the two 500s
    assert counted["presence_webhook_events_total"] == 40
    assert sample("presence_webhook_outbox_events", {}) == 0
    assert sample("presence_webhook_lag_seconds", {}) == 0


COUNTED = [
    ("presence_webhook_deliveries_total", {"outcome": "status"}),
    ("presence_webhook_events_total", {"result": "delivered"}),
]


def sample(name: str, labels: dict[str, str]) -> float:
    """A metric's value in this process's registry (the tests run without multiprocess
    mode, so the sender's figures land there)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
