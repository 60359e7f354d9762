from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Two workers and a coordinator with the default (batching) settings."""
    c = Cluster(tmp_path, workers=2).start()
    yield c
    c.stop()
