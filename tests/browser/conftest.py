"""Browser tests: where Chromium cannot start they are skipped, except under CI
(``PRESENCE_REQUIRE_BROWSER=1``, set by ``.ci/run``), where they fail."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest

from scripts.chromium import ChromiumUnavailable
from scripts.chromium import chromium as launch


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    try:
        async with launch() as browser:
            yield browser
    except ChromiumUnavailable as exc:
        if os.environ.get("PRESENCE_REQUIRE_BROWSER"):
            pytest.fail(f"{exc} (browser tests must run here: PRESENCE_REQUIRE_BROWSER)")
        pytest.skip(str(exc))
