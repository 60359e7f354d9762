"""Who watches whom in the ``scale`` scenario: a seeded, skewed contact graph (pure).

User ``i`` watches ``k`` distinct others, drawn with weights that follow Zipf's law
over a seeded ranking of the users (the user of rank ``r`` is drawn with weight
``1 / (r + 1) ** exponent``): a few popular users are watched by many, most by a few,
as in a real social graph. A ``count_fraction`` of the users, chosen by the same seed,
follow only the number online and watch nobody (they are still watched). The same
arguments give the same graph in every process and run.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass

DEFAULT_EXPONENT = 1.0
DEFAULT_COUNT_FRACTION = 0.1


@dataclass(frozen=True)
class Contacts:
    """The graph: ``watch[i]`` the users ``i`` watches (empty for a count follower),
    ``counters`` the users following only the count."""

    watch: list[list[int]]
    counters: frozenset[int]

    def in_degrees(self) -> list[int]:
        """How many users watch each user."""
        degrees = [0] * len(self.watch)
        for keys in self.watch:
            for j in keys:
                degrees[j] += 1
        return degrees


def contacts(
    n: int,
    k: int,
    seed: int = 0,
    count_fraction: float = DEFAULT_COUNT_FRACTION,
    exponent: float = DEFAULT_EXPONENT,
) -> Contacts:
    """The contact graph of ``n`` users watching ``k`` others each (see the module
    docstring); ``k`` at most ``n - 1``."""
    if not 0 <= k < max(n, 1):
        raise ValueError(f"contacts: k must be from 0 to n - 1 ({n - 1}), not {k}")
    if not 0.0 <= count_fraction <= 1.0:
        raise ValueError(f"contacts: count_fraction must be from 0 to 1, not {count_fraction}")
    rng = random.Random(seed)
    ranking = list(range(n))
    rng.shuffle(ranking)  # ranking[r]: the user of rank r
    cumulative = list(itertools.accumulate(1.0 / (r + 1) ** exponent for r in range(n)))
    total = cumulative[-1] if cumulative else 0.0
    counters = frozenset(rng.sample(range(n), round(n * count_fraction)))
    watch: list[list[int]] = []
    for i in range(n):
        if i in counters or k == 0:
            watch.append([])
            continue
        chosen: dict[int, None] = {}  # insertion-ordered: the draw's order
        while len(chosen) < k:
            r = bisect.bisect_left(cumulative, rng.random() * total)
            j = ranking[min(r, n - 1)]
            if j != i:
                chosen[j] = None
            if len(chosen) < k and len(chosen) >= n // 2:
                # Nearly everyone drawn (tiny graphs): take the rest uniformly.
                rest = [u for u in range(n) if u != i and u not in chosen]
                for j in rng.sample(rest, k - len(chosen)):
                    chosen[j] = None
        watch.append(list(chosen))
    return Contacts(watch, counters)
