"""The seeded fault loop of the chaos tests (`watch`'s and `register`'s): pick a fault by
weight, inject it, then pause and check the process under test, until the time is up."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping


def inject_faults(rng: random.Random, faults: Mapping[str, Callable[[], object]],
                  weights: Mapping[str, int], seconds: float, actions: list[str],
                  after_each: Callable[[], None]) -> None:
    """Inject faults for `seconds`; each name picked is appended to `actions` (what a failure
    report shows), and `after_each` runs after every fault (it pauses, and asserts that the
    process under test lives)."""
    names = list(faults)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        name = rng.choices(names, [weights[n] for n in names])[0]
        actions.append(name)
        faults[name]()
        after_each()
