"""The lobby page in protocol version 2 (real Chromium, one real cluster, which offers
version 2 by default): a display name and a status set in one page reach another, shown
as text next to the key prefix; and the README's picture."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.client_v2 import LobbyClientV2
from tests.browser.test_lobby_page import (
    browser_context,
    key_of,
    open_page,
    page_url,
    until_shown,
)
from tests.support import ROOT, Cluster, run, until

pytestmark = pytest.mark.process

NAME = '<img src=x onerror="window.pwned=1"> \u202eAda'
"""Markup and a right-to-left override: shown as these characters, never as HTML."""


@pytest.fixture(scope="module")
def cluster_v2(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    path: Path = tmp_path_factory.mktemp("v2")
    cluster = Cluster(path, 1)
    # Its one public URL is 127.0.0.1's: a page loaded from localhost dials a URL the
    # workers do not know (as behind a proxy nobody named), see the last test.
    cluster.worker_args = (f"--public-url=ws://127.0.0.1:{cluster.port}/ws",)
    with cluster as c:
        yield c


def test_a_name_and_a_status_reach_another_page_as_text(cluster_v2: Cluster) -> None:
    async def scenario() -> None:
        async with browser_context() as context:
            one = await open_page(context, page_url(cluster_v2), key="named")
            two = await open_page(context, page_url(cluster_v2))
            a = await key_of(one)
            assert await one.get_attribute("html", "data-protocol") == "2"
            assert not await one.is_disabled("#profile-name")
            # A custom status over 32 bytes is refused in the form: nothing is sent.
            await one.select_option("#profile-status", "custom")
            await one.fill("#profile-custom", "é" * 17)
            await one.press("#profile-custom", "Enter")  # submits, as the Set button does
            assert "32 bytes" in (await one.text_content("#profile-error") or "")
            # A name with markup in it, and a status.
            await one.fill("#profile-name", NAME)
            await one.select_option("#profile-status", "busy")
            await one.press("#profile-name", "Enter")
            assert await one.is_hidden("#profile-error")
            entry = f'#users li[data-key="{a}"]'

            async def shows(status: str) -> bool:
                return await two.text_content(f"{entry} .presence") == status

            await until(lambda: shows("busy"), "the status on the other page", 10)
            assert await two.text_content(f"{entry} bdi.name") == NAME
            assert await two.text_content(f"{entry} .key") == f"{a[:8]}…"
            assert await two.query_selector("#users img") is None
            assert await two.evaluate("window.pwned") is None
            stored = await one.evaluate(f"localStorage.getItem('presence-lobby:profile:{a}')")
            assert "busy" in stored  # sent again in the auth of each connection
            # A change of status arrives as an update.
            await one.select_option("#profile-status", "custom")
            await one.fill("#profile-custom", "in a meeting")
            await one.press("#profile-custom", "Enter")
            await until(lambda: shows("in a meeting"), "the new status", 10)
            # Reloaded, the page sends the stored profile in its auth: the new session
            # has it from the start, and the form shows it.
            await one.reload()
            await one.wait_for_function("window.lobby && window.lobby.ready")
            await one.evaluate("window.lobby.ready")
            assert await one.input_value("#profile-name") == NAME
            assert await one.text_content(f"{entry} .presence") == "in a meeting"
            assert await one.text_content(f"{entry} .name") == NAME
            # Changes over the server's rate are refused, and the form says so.
            for _ in range(8):
                await one.press("#profile-custom", "Enter")
            await one.wait_for_selector("#profile-error:has-text('rate_limited')")

    run(scenario())


def test_a_screenshot_of_the_lobby(cluster_v2: Cluster, tmp_path: Path) -> None:
    """The picture in the README: the page with a few named users online, a conversation
    and an unread message. Taken on every run; written to docs/lobby.png when
    UPDATE_SCREENSHOT=1."""
    people = [("Ada", "online"), ("Grace", "away"), ("Alan", "busy"), ("Edsger", "reviewing")]

    async def scenario() -> None:
        async with browser_context(viewport={"width": 1000, "height": 720}) as context:
            others = [
                await LobbyClientV2.connect(
                    cluster_v2.url, record={"status": status, "data": {"name": name}}
                )
                for name, status in people
            ]
            page = await open_page(context, page_url(cluster_v2))
            me = await key_of(page)
            await until_shown(page, {me, *(o.public_key for o in others)}, "five users")
            await page.fill("#profile-name", "Barbara")
            await page.press("#profile-name", "Enter")
            await others[0].send(me, "Hello from a Python client", msg_id="hello")
            await page.wait_for_selector('#thread li[data-id="hello"]')
            await page.fill("#send-body", "Hello Ada!")
            await page.press("#send-body", "Enter")
            await page.wait_for_selector('#thread li.out[data-status="delivered"]')
            await others[1].send(me, "Lunch?", msg_id="lunch")
            await page.wait_for_selector(
                f'#users li[data-key="{others[1].public_key}"][data-unread]'
            )
            await page.wait_for_selector(f'#users li[data-key="{me}"] bdi:has-text("Barbara")')
            path = tmp_path / "lobby.png"
            await page.screenshot(path=str(path))
            assert path.stat().st_size > 10_000
            if os.environ.get("UPDATE_SCREENSHOT") == "1":
                (ROOT / "docs" / "lobby.png").write_bytes(path.read_bytes())
            for other in others:
                await other.close()

    run(scenario())


def test_a_page_from_an_address_the_server_does_not_know_falls_back_to_version_1(
    cluster_v2: Cluster,
) -> None:
    """The server refuses a version 2 auth signed for a URL missing from its
    --public-url (wrong_server). The page's key is bound to its origin, so no relay can
    use it: the page goes on in version 1, and says why."""

    async def scenario() -> None:
        async with browser_context() as context:
            url = f"http://localhost:{cluster_v2.port}/"
            page = await open_page(context, url, key="elsewhere")
            assert await page.get_attribute("html", "data-protocol") == "1"
            assert "--public-url" in (await page.text_content("#profile-note") or "")
            assert await page.is_disabled("#profile-name")

    run(scenario())
