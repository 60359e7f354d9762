"""The lobby page and lobby.js in a real browser (headless Chromium) against real
processes: a cluster of coordinator and workers that offer version 1 alone (the page falls
back to it), Python clients beside the pages, and, for what no real server does
(skipping an update number), a scripted server."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from scripts.fake_lobby import FakeLobby, random_keys
from shared.client import LobbyClient
from tests.browser.conftest import chromium
from tests.support import Cluster, ManagedProcess, run, tls_files, until

pytestmark = pytest.mark.process

FAST_COORDINATOR = ("--heartbeat-interval", "0.1", "--worker-timeout", "0.6")
FAST_WORKER = ("--heartbeat-interval", "0.1", "--coordinator-timeout", "0.6", "--v1-only")
"""These pages meet a server without version 2 (--v1-only): they fall back to version 1,
which is what most of this module checks; tests/browser/test_lobby_page_v2.py has the
default server, which offers version 2."""
QUIET = 1.5
"""Seconds a page is watched for something that must not happen (three times the
client's first reconnect delay)."""


def page_url(cluster: Cluster, *, tls: bool = False) -> str:
    return f"{'https' if tls else 'http'}://127.0.0.1:{cluster.port}/"


async def open_page(
    context: Any, url: str, key: str = "memory", console: list[str] | None = None
) -> Any:
    """A page of the lobby, once it is online with the lobby drawn; its console's errors
    (a resource that failed to load, say) go to ``console``."""
    page = await context.new_page()
    page.on("pageerror", lambda exc: pytest.fail(f"page error: {exc}"))
    if console is not None:
        page.on("console", lambda m: m.type == "error" and console.append(m.text))
    await page.goto(f"{url}?key={key}")
    await page.wait_for_function("window.lobby && window.lobby.ready")
    await page.evaluate("window.lobby.ready")
    return page


async def shown(page: Any) -> set[str]:
    """The keys the page lists."""
    keys = await page.eval_on_selector_all("#users li", "items => items.map(i => i.dataset.key)")
    return set(keys)


async def key_of(page: Any) -> str:
    return str(await page.evaluate("window.lobby.client.publicKey"))


async def status_of(page: Any) -> str:
    return str(await page.get_attribute("#status", "data-status"))


async def until_shown(page: Any, keys: set[str], what: str, timeout: float = 15) -> None:
    async def holds() -> bool:
        return await shown(page) == keys and int(await page.text_content("#count")) == len(keys)

    await until(holds, what, timeout)


@asynccontextmanager
async def browser_context(**kw: Any) -> AsyncIterator[Any]:
    async with chromium() as browser:
        context = await browser.new_context(**kw)
        try:
            yield context
        finally:
            await context.close()


def test_two_pages_see_each_other_join_and_leave(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with browser_context() as context:
            console: list[str] = []
            one = await open_page(context, page_url(cluster), console=console)
            two = await open_page(context, page_url(cluster))
            a, b = await key_of(one), await key_of(two)
            assert a != b
            await until_shown(one, {a, b}, "the second page on the first")
            await until_shown(two, {a, b}, "the first page on the second")
            assert await one.get_attribute(f'#users li[data-key="{a}"]', "class") == "me"
            assert await one.text_content("#me") == a
            # This server has no version 2: the page fell back to 1, and says so.
            assert await one.get_attribute("html", "data-protocol") == "1"
            assert await one.is_disabled("#profile-name")
            assert "version 1" in (await one.text_content("#profile-note") or "")
            # Two looks at its own entry; one picks two, who is marked, and writes.
            await two.click(f'#users li[data-key="{b}"]')
            await one.click(f'#users li[data-key="{b}"]')
            assert await one.get_attribute(f'#users li[data-key="{b}"]', "aria-selected") == "true"
            assert await one.get_attribute(f'#users li[data-key="{a}"]', "aria-selected") == "false"
            assert b[:8] in (await one.text_content("#recipient") or "")
            await one.fill("#send-body", "hi two")
            await one.click("#send-button")
            await one.wait_for_selector('#thread li.out[data-status="delivered"]')
            assert "hi two" in (await one.text_content("#thread li.out") or "")
            # On two, the message waits, counted, on one's entry until one is picked.
            unread = f'#users li[data-key="{a}"][data-unread="1"]'
            await two.wait_for_selector(unread)
            assert await two.text_content(f"{unread} .unread") == "1"
            assert await two.query_selector("#thread li") is None  # two's own conversation
            await two.click(f'#users li[data-key="{a}"]')
            assert await two.text_content(f'#thread li.in[data-from="{a}"] .body') == "hi two"
            assert await two.get_attribute(f'#users li[data-key="{a}"]', "data-unread") is None
            await two.close()
            await until_shown(one, {a}, "the second page to leave")
            # No /favicon.ico 404. Chromium logs the handshake that offered presence.v2 to
            # this server without version 2 (the page then falls back to version 1).
            errors = [text for text in console if "Sec-WebSocket-Protocol" not in text]
            assert errors == [], "the page's console had errors"

    run(scenario())


def test_a_page_and_a_python_client_exchange_direct_messages(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with browser_context() as context, LobbyClient.connect(cluster.url) as python:
            page = await open_page(context, page_url(cluster))
            me = await key_of(page)
            await until_shown(page, {me, python.public_key}, "the Python client")
            # Python to the page: shown as text, never as HTML.
            body = "<b>hello</b> from Python"
            result = await python.send(me, body, msg_id="p1")
            assert result.delivered
            item = f'#thread li.in[data-id="p1"][data-from="{python.public_key}"]'
            await page.wait_for_selector(item)  # the first message selects its sender
            assert await page.text_content(f"{item} .body") == body
            assert await page.query_selector("#thread b") is None
            # The page to Python: pick the user, type, send; the result is shown.
            await page.click(f'#users li[data-key="{python.public_key}"]')
            assert await page.input_value("#send-to") == python.public_key
            await page.fill("#send-body", "hi from the page")
            await page.click("#send-button")
            message = await python.next_message()
            assert (message.sender, message.body) == (me, "hi from the page")
            sent = f'#thread li.out[data-id="{message.id}"][data-status="delivered"]'
            await page.wait_for_selector(sent)
            # A recipient that is not online: offline.
            await page.fill("#send-to", "ab" * 32)
            await page.fill("#send-body", "anyone?")
            await page.click("#send-button")
            await page.wait_for_selector(
                '#thread[data-with="{}"] li[data-status="offline"]'.format("ab" * 32)
            )

    run(scenario())


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two workers and a coordinator, as the suite's own, but offering version 1 alone."""
    with Cluster(tmp_path, workers=2, worker_args=("--v1-only",)) as c:
        yield c


@pytest.fixture
def fast_cluster(tmp_path: Path) -> Any:
    with Cluster(tmp_path, 2, coordinator_args=FAST_COORDINATOR, worker_args=FAST_WORKER) as c:
        yield c


def test_the_page_survives_a_coordinator_restart(fast_cluster: Cluster) -> None:
    """Killed and started again, the coordinator rebuilds the lobby from the workers: the
    page stays online, gets a fresh snapshot of the same lobby, and sees what follows."""

    async def scenario() -> None:
        async with browser_context() as context, LobbyClient.connect(fast_cluster.url) as other:
            page = await open_page(context, page_url(fast_cluster))
            me = await key_of(page)
            await until_shown(page, {me, other.public_key}, "both")
            syncs = await page.evaluate(
                """() => { window.syncs = 0;
                   window.lobby.client.addEventListener('sync', () => window.syncs++); }"""
            )
            assert syncs is None
            assert fast_cluster.coordinator is not None
            fast_cluster.coordinator.signal(signal.SIGKILL)
            fast_cluster.coordinator.proc.wait(5)
            fast_cluster.coordinator = ManagedProcess(
                "coordinator",
                [
                    *("--events-endpoint", fast_cluster.events),
                    *("--updates-endpoint", fast_cluster.updates),
                    *FAST_COORDINATOR,
                ],
            )
            await until(
                lambda: page.evaluate("window.syncs > 0"), "a fresh snapshot on the page", 15
            )
            assert await status_of(page) == "online"
            await until_shown(page, {me, other.public_key}, "the same lobby")
            async with LobbyClient.connect(fast_cluster.url) as late:
                await until_shown(page, {me, other.public_key, late.public_key}, "a join")

    run(scenario())


def test_the_page_reconnects_after_its_worker_is_killed_with_the_same_identity(
    tmp_path: Path,
) -> None:
    with Cluster(
        tmp_path, 1, coordinator_args=FAST_COORDINATOR, worker_args=FAST_WORKER
    ) as cluster:

        async def scenario() -> None:
            async with browser_context() as context:
                page = await open_page(context, page_url(cluster), key="survivor")
                me = await key_of(page)
                first = cluster.workers[0]  # the page is on the only worker there was
                await asyncio.to_thread(cluster.add_worker, "w2")
                await page.evaluate(
                    """() => { window.seen = []; window.dimmed = [];
                       window.lobby.client.addEventListener('status', e => {
                         window.seen.push(e.detail.status);
                         window.dimmed.push(document.querySelector('main').dataset.stale);
                       }); }"""
                )
                first.signal(signal.SIGKILL)
                await until(
                    lambda: page.evaluate("window.seen.includes('reconnecting')"),
                    "the page to notice",
                    10,
                )
                await until(lambda: page.evaluate("window.seen.at(-1) === 'online'"), "back", 15)
                dimmed = await page.evaluate("window.dimmed")
                assert "reconnecting" in dimmed and dimmed[-1] is None, dimmed
                assert await key_of(page) == me
                await until_shown(page, {me}, "itself, on the other worker")
                async with LobbyClient.connect(cluster.url) as other:
                    await until_shown(page, {me, other.public_key}, "a newcomer")

        run(scenario())


def test_the_same_identity_in_a_second_tab_replaces_the_first_for_good(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with browser_context() as context:
            first = await open_page(context, page_url(cluster), key="twice")
            me = await key_of(first)
            await first.evaluate(
                """() => { window.seen = [];
                   window.lobby.client.addEventListener('status',
                     e => window.seen.push(e.detail.status)); }"""
            )
            second = await open_page(context, page_url(cluster), key="twice")
            assert await key_of(second) == me  # the identity kept in IndexedDB
            await until(lambda: status_of_is(first, "replaced"), "the first tab replaced", 10)
            assert "elsewhere" in (await first.text_content("#status") or "")
            assert await first.get_attribute("main", "data-stale") == "replaced"
            assert "Another tab" in (await first.text_content("#stale-note") or "")
            assert await second.get_attribute("main", "data-stale") is None
            async with LobbyClient.connect(cluster.url) as other:
                await until_shown(second, {me, other.public_key}, "the newcomer")
                await asyncio.sleep(QUIET)  # watching for a reconnect that must not come
                assert await first.evaluate("window.seen") == ["replaced"]
                assert await status_of(second) == "online"
                await until_shown(second, {me, other.public_key}, "still both")

    run(scenario())


async def status_of_is(page: Any, status: str) -> bool:
    return await status_of(page) == status


def test_a_gap_in_update_numbers_leads_to_a_resync(tmp_path: Path) -> None:
    """No real server skips an update number, so a scripted one does: the page refuses
    the update after the gap, asks for the lobby, and shows the snapshot it gets."""

    async def scenario() -> None:
        fake = await FakeLobby(users=set(random_keys(3))).start()
        try:
            async with browser_context() as context:
                page = await open_page(context, f"http://127.0.0.1:{fake.port}/")
                me = await key_of(page)
                assert await shown(page) == fake.users
                await page.evaluate(  # every value main's data-stale takes
                    """() => { window.dims = []; const main = document.querySelector('main');
                       new MutationObserver(() => window.dims.push(main.dataset.stale))
                         .observe(main, { attributes: true }); }"""
                )
                joiner = random_keys(1)
                fake.update(joined=joiner)
                await until_shown(page, fake.users, "an update in order")
                gone = sorted(fake.users - {me})[0]
                fake.update(left=[gone], skip=2)  # 2 numbers never sent
                await until(lambda: {"type": "get_lobby"} in fake.requests, "the page to ask", 10)
                await until_shown(page, fake.users, "the lobby after the resync")
                assert gone not in await shown(page)
                dims = await page.evaluate("window.dims")
                assert "resyncing" in dims and dims[-1] is None, dims  # dimmed until the snapshot
        finally:
            await fake.stop()

    run(scenario())


def test_the_page_over_tls(tmp_path: Path) -> None:
    """Browsers give WebCrypto only to secure contexts: served over https, the page works
    anywhere (here with a certificate from the test's own CA)."""
    chain, key, client_ssl = tls_files(tmp_path)
    with Cluster(tmp_path, 1, worker_args=("--tls-cert", str(chain), "--tls-key", str(key))) as c:

        async def scenario() -> None:
            async with browser_context(ignore_https_errors=True) as context:
                page = await open_page(context, page_url(c, tls=True))
                me = await key_of(page)
                assert page.url.startswith("https://")
                # By default the server offers version 2, and the page signs for the
                # wss:// URL it dialed, one of the server's default identities.
                assert await page.get_attribute("html", "data-protocol") == "2"
                url = f"wss://127.0.0.1:{c.port}/ws"
                async with LobbyClient.connect(url, ssl=client_ssl) as python:
                    await until_shown(page, {me, python.public_key}, "a wss client")
                    result = await python.send(me, "over TLS")
                    assert result.delivered

        run(scenario())
