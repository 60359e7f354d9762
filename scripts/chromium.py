"""Debian's Chromium, headless, driven by Playwright (its own browser download is never
used): the launch settings shared by the browser tests and ``scripts/page_timings.py``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any, Final

CHROMIUM: Final = os.environ.get("PRESENCE_CHROMIUM", "/usr/bin/chromium")
ARGS: Final = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
    # The machine's network is closed: no background connections to Google.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


class ChromiumUnavailable(Exception):
    """Playwright is not installed, or Chromium is missing or cannot start."""


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """A headless Chromium (Playwright's async API), closed on leaving."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        raise ChromiumUnavailable(f"playwright is not installed: {exc}") from None
    async with async_playwright() as pw:
        try:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        except Exception as exc:
            raise ChromiumUnavailable(f"Chromium at {CHROMIUM} cannot start: {exc}") from None
        try:
            yield browser
        finally:
            await browser.close()
